"""Request-only endpoints served ahead of FastAPI's routing (``api/direct.py``): the
same answers as through FastAPI, for what they serve and for what they leave to it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from starlette.responses import PlainTextResponse, Response

from corral.api import create_app, problems
from corral.api.direct import DirectRoute, direct_routes, is_direct
from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore

JSON = {"Content-Type": "application/json"}
BODY = {"command": ["true"], "name": "n", "labels": {"a": "b"}, "resources": {"cpus": 0}}
REQUESTS: list[tuple[str, str, dict[str, object]]] = [
    ("POST", "/v1/workloads", {"json": BODY}),
    ("POST", "/v1/workloads?x=1", {"json": BODY}),
    ("POST", "/v1/workloads", {"content": b"{bad", "headers": JSON}),
    ("POST", "/v1/workloads", {"json": {"command": []}}),
    ("POST", "/v1/workloads", {"content": b"{}", "headers": {"Content-Type": "text/plain"}}),
    ("POST", "/v1/workloads", {"json": BODY, "headers": {"Idempotency-Key": "k" * 300}}),
    ("POST", "/v1/workloads", {"json": {"command": ["x"], "resources": {"cpus": 1e9}}}),
    ("POST", "/v1/workloads", {"json": BODY, "headers": {"Authorization": "Bearer nope"}}),
    ("POST", "/v1/workloads/", {"json": BODY}),
    ("PUT", "/v1/workloads", {"json": BODY}),
    ("DELETE", "/v1/workloads", {}),
    ("HEAD", "/v1/status", {}),
    ("POST", "/v1/status", {"json": {}}),
    ("POST", "/v1/workloads/kill", {"json": {}}),
    ("POST", "/v1/workloads/kill", {"json": {"ids": ["nope"]}}),
    ("GET", "/v1/workloads/kill", {}),
    ("POST", "/v1/workloads/batch", {"json": {"items": [BODY]}}),
    ("PUT", "/v1/workloads/batch", {"json": {}}),
    ("POST", "/v1/tokens", {"json": {"user": "bob"}}),
    # Path parameters: served directly when the rest of the path matches.
    ("GET", "/v1/workloads/01m8q9s845dax42vd176mq198p", {}),
    ("GET", "/v1/workloads/nope", {}),
    ("GET", "/v1/workloads/a%00b", {}),
    ("GET", "/v1/workloads/a%2Fb", {}),
    ("GET", "/v1/workloads/01m8q9s845dax42vd176mq198p/", {}),
    ("DELETE", "/v1/workloads/01m8q9s845dax42vd176mq198p", {}),
    ("DELETE", "/v1/workloads/a%00b", {}),
    ("DELETE", "/v1/workloads/x", {"headers": {"Authorization": "Bearer nope"}}),
    ("PATCH", "/v1/workloads/x", {}),
    ("PUT", "/v1/workloads/x/status", {"json": {"status": "running"}}),
    ("PUT", "/v1/workloads/a%00b/status", {"json": {"status": "running"}}),
    ("PUT", "/v1/workloads/x/status", {"content": b"{bad", "headers": JSON}),
    ("GET", "/v1/workloads/x/events", {}),
    ("GET", "/v1/workloads/a%00b/events", {}),
    ("POST", "/v1/workloads/x/events", {}),
    ("GET", "/v1/workloads/%E2%82%AC", {}),
    ("GET", "/v1/workloads/" + "x" * 5000, {}),
    ("GET", "/v1/workloads/x%20y", {}),
    ("GET", "/v1/workloads/batch", {}),
    ("DELETE", "/v1/workloads/kill", {}),
    ("DELETE", "/v1/workloads/clean", {}),
    ("HEAD", "/v1/workloads/x", {}),
    ("OPTIONS", "/v1/workloads/x", {}),
    ("PUT", "/v1/workloads/x", {"json": {}}),
    ("POST", "/v1/workloads/x", {"json": {}}),
    ("GET", "/v1/workloads/x/status", {}),
    ("DELETE", "/v1/workloads/x/events", {}),
    ("GET", "/v1/workloads/x/events/", {}),
    ("GET", "/v1/workloads//events", {}),
    ("GET", "/v1/workloads/x?y=1", {}),
    ("DELETE", "/v1/tokens/nope", {}),
    ("DELETE", "/v1/tokens/a%00b", {}),
    ("GET", "/v1/tokens/x", {}),
    (
        "PUT",
        "/v1/workloads/x/status",
        {"json": {"status": "running"}, "headers": {"Origin": "http://evil"}},
    ),
    ("GET", "/v1/workloads/x/logs", {}),
]
"""(Not the answers that count what the database holds: two apps share it here.)"""
_ID = re.compile(r"\b01[0-9a-hjkmnp-tv-z]{24}\b")
_TIME = re.compile(r'"(created_at|updated_at)":"[^"]*"')
_KEY = re.compile(r'"key":"[^"]*"')


def _answers(client: SyncASGIClient) -> list[tuple[int, dict[str, str], str]]:
    out = []
    for method, url, kwargs in REQUESTS:
        response = client.request(method, url, **kwargs)  # type: ignore[arg-type]
        headers = {k: _ID.sub("ID", v) for k, v in response.headers.items()}
        body = _KEY.sub("KEY", _TIME.sub("TIME", _ID.sub("ID", response.text)))
        out.append((response.status_code, headers, body))
    return out


def test_request_only_endpoints_are_served_directly(tmp_path: Path, store: BlockingStore) -> None:
    app = create_app(store.inner, data_dir=tmp_path)
    direct = {
        (route.path, method)
        for route in app.router.routes
        if isinstance(route, DirectRoute)
        for method in route.methods
    }
    assert ("/v1/workloads", "POST") in direct
    assert ("/v1/status", "GET") in direct
    # Path parameters alone are served directly; query parameters, or an answer
    # FastAPI serializes: FastAPI's routes serve them.
    assert ("/v1/workloads/{workload_id}", "GET") in direct
    assert ("/v1/workloads/{workload_id}", "DELETE") in direct
    assert ("/v1/workloads", "GET") not in direct  # query parameters
    assert ("/v1/workloads/{workload_id}/logs", "GET") not in direct
    assert ("/healthz", "GET") not in direct
    assert ("/v1/transitions", "GET") not in direct
    assert len(direct) == 13  # (none left to FastAPI by a route declared before it)
    assert app.router.routes[0] is next(r for r in app.router.routes if isinstance(r, DirectRoute))


def test_direct_routes_answer_as_fastapi_does(
    tmp_path: Path, store: BlockingStore, admin_key: str
) -> None:
    """Every answer, header and error through the direct routes equals the answer of
    the same app without them, which FastAPI routes; so do the 404s and 405s they
    leave to it, and the OpenAPI document."""
    direct = create_app(store.inner, data_dir=tmp_path)
    routed = create_app(store.inner, data_dir=tmp_path)
    routed.router.routes[:] = [r for r in routed.router.routes if not isinstance(r, DirectRoute)]
    assert len(routed.router.routes) < len(direct.router.routes)
    answers = []
    routes: list[set[str]] = []
    for app in (direct, routed):
        client = SyncASGIClient(app, token=admin_key, run=store.run)
        try:
            answers.append(_answers(client))
            status = client.get("/v1/status")
            assert status.status_code == 200 and status.json()["executor"] == "none"
            assert client.get("/v1/tokens").status_code == 200
            # /metrics: the same route templates (never a raw path) for the same requests
            metrics = client.get("/metrics").text
            routes.append(set(re.findall(r'route="([^"]*)"', metrics)))
        finally:
            client.close()
    assert answers[0] == answers[1]
    assert routes[0] == routes[1] and "/v1/workloads/{workload_id}" in routes[0]
    assert not any("%" in r or r.startswith("/v1/workloads/x") for r in routes[0])
    assert direct.openapi() == routed.openapi()
    assert [status for status, _, _ in answers[0]][:2] == [201, 201]


def _pair(router: APIRouter) -> list[FastAPI]:
    """Two apps of ``router``, one with its direct routes in front (as ``create_app``
    puts them), one without."""
    apps = []
    for direct in (True, False):
        app = FastAPI()
        problems.install(app)
        app.include_router(router)
        if direct:
            app.router.routes[:0] = direct_routes(router.routes)
        apps.append(app)
    return apps


def _same_answers(router: APIRouter, *requests: tuple[str, str]) -> None:
    answers = []
    for app in _pair(router):
        client = SyncASGIClient(app, raise_app_exceptions=False)
        try:
            answers.append(
                [
                    (r.status_code, r.headers.get("content-type"), r.text)
                    for r in (client.request(m, u) for m, u in requests)
                ]
            )
        finally:
            client.close()
    assert answers[0] == answers[1]


def test_a_request_parameter_of_another_name() -> None:
    """The endpoint's request parameter need not be called ``request``."""
    router = APIRouter()

    @router.get("/things/{thing_id}")
    async def get_thing(thing_id: str, req: Request) -> Response:
        return PlainTextResponse(f"{thing_id} {req.method}")

    assert is_direct(router.routes[0])
    _same_answers(router, ("GET", "/things/a"))


def test_an_aliased_path_parameter() -> None:
    """A path field whose alias is not its name: FastAPI looks the alias up (422 when
    the path has no such parameter); it is not a 500 here."""
    router = APIRouter()

    @router.get("/things/{thing_id}")
    async def get_thing(
        thing_id: Annotated[str, PathParam(alias="id")], request: Request
    ) -> Response:
        return PlainTextResponse(thing_id)

    @router.get("/others/{other_id}")
    async def get_other(
        other_id: Annotated[str, PathParam(validation_alias="oid")], request: Request
    ) -> Response:
        return PlainTextResponse(other_id)

    _same_answers(router, ("GET", "/things/a"), ("GET", "/others/b"))


def test_a_route_declared_first_keeps_its_paths() -> None:
    """A literal route declared before a parameterized one answers its path, as
    FastAPI's order says, though only the parameterized one is served directly (and
    so put in front)."""
    router = APIRouter()

    @router.get("/things/stats")
    async def stats(request: Request, since: str | None = None) -> Response:
        return PlainTextResponse("stats")

    @router.get("/things/{thing_id}")
    async def get_thing(thing_id: str, request: Request) -> Response:
        return PlainTextResponse(f"thing {thing_id}")

    assert not is_direct(router.routes[0]) and is_direct(router.routes[1])
    _same_answers(router, ("GET", "/things/stats"), ("GET", "/things/a"))
    # The same when the route declared first is another router's, or the app's own.
    assert direct_routes(router.routes[1:], behind=router.routes[:1]) == []
