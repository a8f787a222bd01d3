"""Request-only endpoints served ahead of FastAPI's routing (``api/direct.py``): the
same answers as through FastAPI, for what they serve and for what they leave to it."""

from __future__ import annotations

import re
from pathlib import Path

from corral.api import create_app
from corral.api.direct import DirectRoute
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
    for app in (direct, routed):
        client = SyncASGIClient(app, token=admin_key, run=store.run)
        try:
            answers.append(_answers(client))
            status = client.get("/v1/status")
            assert status.status_code == 200 and status.json()["executor"] == "none"
            assert client.get("/v1/tokens").status_code == 200
        finally:
            client.close()
    assert answers[0] == answers[1]
    assert direct.openapi() == routed.openapi()
    assert [status for status, _, _ in answers[0]][:2] == [201, 201]
