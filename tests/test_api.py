"""The HTTP contract of spec §3, through the real app (httpx ASGITransport)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore
from tests.conftest import app_client

JSON_TYPE = {"Content-Type": "application/json"}

PROBLEM = "application/problem+json"


def create(api: SyncASGIClient, **body: object) -> dict[str, object]:
    response = api.post("/v1/workloads", json={"command": ["true"], **body})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def put_status(api: SyncASGIClient, wid: object, status: str, **extra: object) -> int:
    return api.put(f"/v1/workloads/{wid}/status", json={"status": status, **extra}).status_code


def assert_problem(response: object, status: int) -> dict[str, object]:
    import httpx

    assert isinstance(response, httpx.Response)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:corral:problem:")
    assert body["title"] and body["detail"]
    return body  # type: ignore[no-any-return]


def test_create_returns_201_location_and_workload(api: SyncASGIClient) -> None:
    response = api.post("/v1/workloads", json={"command": ["echo", "hi"], "labels": {"a": "b"}})
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/v1/workloads/{body['id']}"
    assert body["status"] == "pending" and body["command"] == ["echo", "hi"]
    assert body["resources"] == {"cpus": 1.0, "memory_mb": 0, "gpus": 0}
    assert api.get(response.headers["location"]).json() == body


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_body_must_be_declared_json(
    api: SyncASGIClient, store: BlockingStore, content_type: str | None
) -> None:
    """What a web page can send without a CORS preflight is refused, and stores nothing."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = api.post("/v1/workloads", content=b'{"command": ["true"]}', headers=headers)
    assert "application/json" in str(assert_problem(response, 415)["detail"])
    put = api.put("/v1/workloads/x/status", content=b'{"status": "running"}', headers=headers)
    assert_problem(put, 415)
    token = api.post("/v1/tokens", content=b'{"user": "mallory"}', headers=headers)
    assert_problem(token, 415)
    assert [t.user for t in store.list_api_keys()] == ["admin"]
    assert api.get("/v1/workloads").json()["items"] == []
    charset = {"Content-Type": "application/json; charset=utf-8"}
    ok = api.post("/v1/workloads", content=b'{"command": ["true"]}', headers=charset)
    assert ok.status_code == 201


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{", "json"),
        (b"[]", "body"),
        (b'{"command": []}', "command"),
        (b'{"command": ["x"], "resources": {"gpus": -1}}', "resources.gpus"),
        (b'{"command": ["x"], "cwd": "rel"}', "cwd"),
    ],
)
def test_create_invalid_body_is_422_saying_what(
    api: SyncASGIClient, body: bytes, needle: str
) -> None:
    problem = assert_problem(api.post("/v1/workloads", content=body, headers=JSON_TYPE), 422)
    assert needle in str(problem["detail"]).lower()
    assert problem["errors"]


def test_body_over_limit_is_413(api: SyncASGIClient) -> None:
    big = {"command": ["echo", "x" * (1 << 20)]}
    assert_problem(api.post("/v1/workloads", json=big), 413)


def test_chunked_body_over_limit_is_413(api: SyncASGIClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"command": ["echo", "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"]}'

    assert_problem(api.post("/v1/workloads", content=chunks(), headers=JSON_TYPE), 413)


def test_idempotency_key_replays_and_refuses_other_body(api: SyncASGIClient) -> None:
    headers = {"Idempotency-Key": "abc-1"}
    first = api.post("/v1/workloads", json={"command": ["true"]}, headers=headers)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = api.post("/v1/workloads", json={"command": ["true"]}, headers=headers)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    other = api.post("/v1/workloads", json={"command": ["false"]}, headers=headers)
    problem = assert_problem(other, 422)
    assert "abc-1" in str(problem["detail"])
    assert len(api.get("/v1/workloads").json()["items"]) == 1


@pytest.mark.parametrize("path", ["", "running"])
def test_delete_pending_or_running_kills(api: SyncASGIClient, path: str) -> None:
    w = create(api)
    if path:
        assert put_status(api, w["id"], "running") == 200
    response = api.delete(f"/v1/workloads/{w['id']}")
    assert response.status_code == 200
    assert response.json()["status"] == "killed"
    assert response.json()["reason"] == "killed by request"


@pytest.mark.parametrize("terminal", ["completed", "failed", "killed"])
def test_delete_terminal_is_409_naming_status(api: SyncASGIClient, terminal: str) -> None:
    w = create(api)
    if terminal == "killed":
        assert api.delete(f"/v1/workloads/{w['id']}").status_code == 200
    else:
        assert put_status(api, w["id"], "running") == 200
        assert put_status(api, w["id"], terminal) == 200
    problem = assert_problem(api.delete(f"/v1/workloads/{w['id']}"), 409)
    assert problem["current_status"] == terminal
    assert problem["requested_status"] == "killed"
    assert problem["allowed"] == []
    assert terminal in str(problem["detail"])


def test_put_status_409_lists_allowed(api: SyncASGIClient) -> None:
    w = create(api)
    response = api.put(f"/v1/workloads/{w['id']}/status", json={"status": "completed"})
    problem = assert_problem(response, 409)
    assert problem["current_status"] == "pending"
    assert problem["allowed"] == ["killed", "running"]


def test_put_status_unknown_status_is_422(api: SyncASGIClient) -> None:
    w = create(api)
    assert_problem(api.put(f"/v1/workloads/{w['id']}/status", json={"status": "paused"}), 422)


@pytest.mark.parametrize(
    ("before", "body", "says"),
    [
        ([], {"status": "running", "exit_code": 5}, "running workload has no exit_code"),
        (["running"], {"status": "completed", "exit_code": 1}, "exit code 1 is failed"),
        (["running"], {"status": "failed", "exit_code": 0}, "exit code 0 is completed"),
    ],
)
def test_put_status_exit_code_must_fit_status(
    api: SyncASGIClient, before: list[str], body: dict[str, object], says: str
) -> None:
    w = create(api)
    for status in before:
        assert put_status(api, w["id"], status) == 200
    problem = assert_problem(api.put(f"/v1/workloads/{w['id']}/status", json=body), 422)
    assert says in str(problem["detail"])
    assert api.get(f"/v1/workloads/{w['id']}").json()["status"] == (before or ["pending"])[-1]


def test_put_status_records_exit_code_and_reason(api: SyncASGIClient) -> None:
    w = create(api)
    assert put_status(api, w["id"], "running") == 200
    response = api.put(
        f"/v1/workloads/{w['id']}/status",
        json={"status": "failed", "exit_code": 3, "reason": "exit code 3 (oom)"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["exit_code"] == 3 and body["reason"] == "exit code 3 (oom)"
    events = api.get(f"/v1/workloads/{w['id']}/events").json()["items"]
    assert [e["type"] for e in events] == ["created", "transition", "transition"]
    assert events[-1]["from_status"] == "running" and events[-1]["to_status"] == "failed"
    assert set(events[0]) == {"seq", "type", "from_status", "to_status", "at", "reason", "actor"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/workloads/{id}", None),
        ("DELETE", "/v1/workloads/{id}", None),
        ("PUT", "/v1/workloads/{id}/status", {"status": "running"}),
        ("GET", "/v1/workloads/{id}/events", None),
        ("GET", "/v1/workloads/{id}/logs", None),
        ("GET", "/v1/workloads/{id}/logs?follow=true", None),
    ],
)
def test_unknown_id_is_404_everywhere(
    api: SyncASGIClient, method: str, path: str, body: object
) -> None:
    response = api.request(method, path.format(id="01nosuchworkload0000000000"), json=body)
    problem = assert_problem(response, 404)
    assert "01nosuchworkload0000000000" in str(problem["detail"])


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/workloads", "GET, POST"),  # a direct route (POST) and FastAPI's
        ("POST", "/v1/workloads/{id}", "DELETE, GET"),
        ("DELETE", "/v1/workloads/{id}/events", "GET"),
        ("DELETE", "/v1/tokens", "GET, POST"),
        ("PUT", "/v1/workloads/batch", "POST"),  # not {id}'s, though its pattern matches
    ],
)
def test_a_method_not_allowed_is_405_with_the_allowed_ones(
    api: SyncASGIClient, method: str, path: str, allowed: str
) -> None:
    response = api.request(method, path.format(id="01nosuchworkload0000000000"))
    assert_problem(response, 405)
    assert response.headers["Allow"] == allowed


NUL = "a\x00b"


NUL_KEY = {"json": {"command": ["true"]}, "headers": {"Idempotency-Key": NUL}}


@pytest.mark.parametrize(
    ("method", "path", "options", "where"),
    [
        ("POST", "/v1/workloads", {"json": {"command": ["true"], "name": NUL}}, "name"),
        ("POST", "/v1/workloads/batch", {"json": {"items": [{"command": ["true"], "name": NUL}]}},
         "items[0].name"),
        ("POST", "/v1/workloads", NUL_KEY, "Idempotency-Key"),
        ("PUT", "/v1/workloads/{id}/status", {"json": {"status": "running", "reason": NUL}},
         "reason"),
        ("POST", "/v1/tokens", {"json": {"user": "bob", "description": NUL}}, "description"),
        ("POST", "/v1/workloads/kill", {"json": {"ids": [NUL]}}, "ids[0]"),
        ("POST", "/v1/workloads/kill", {"json": {"name": NUL}}, "name"),
        ("GET", "/v1/workloads", {"params": {"name": NUL}}, "query.name"),
        ("GET", "/v1/workloads/a%00b", {}, "path.workload_id"),
        ("DELETE", "/v1/workloads/a%00b", {}, "path.workload_id"),
        ("PUT", "/v1/workloads/a%00b/status", {"json": {"status": "running"}}, "path.workload_id"),
        ("GET", "/v1/workloads/a%00b/events", {}, "path.workload_id"),
        ("GET", "/v1/workloads/a%00b/logs", {}, "path.workload_id"),
        ("DELETE", "/v1/tokens/a%00b", {}, "path.token_id"),
    ],
)  # fmt: skip
def test_a_nul_in_any_text_is_422_naming_it_on_every_database(
    api: SyncASGIClient, method: str, path: str, options: dict[str, Any], where: str
) -> None:
    """PostgreSQL's text cannot hold a NUL (SQLite's can): every text the API takes
    refuses one alike, as its document says, rather than one database storing it or
    finding nothing where the other refuses it."""
    wid = create(api)["id"]
    response = api.request(method, path.format(id=wid), **options)
    problem = assert_problem(response, 422)
    detail = str(problem["detail"])
    assert detail.startswith(f"{where}: ") and "must not contain a NUL character" in detail
    assert api.get(f"/v1/workloads/{wid}").json()["status"] == "pending"
    assert [w["id"] for w in api.get("/v1/workloads").json()["items"]] == [wid]


def test_unexpected_error_is_a_problem_500(
    store: BlockingStore, admin_key: str, tmp_path: Path
) -> None:
    """A fault no handler expects (here: the store closed under the app) still answers
    with a problem document, not a bare text page or a stack trace."""
    client = app_client(store, tmp_path, token=admin_key, raise_app_exceptions=False)
    store.run(store.inner.close())
    try:
        problem = assert_problem(client.get("/v1/workloads"), 500)
        assert "Traceback" not in str(problem) and "closed" not in str(problem["detail"])
    finally:
        client.close()


def test_unknown_route_is_problem_404(api: SyncASGIClient) -> None:
    assert_problem(api.get("/v2/nothing"), 404)


def test_list_filters_and_pages(api: SyncASGIClient) -> None:
    ids = [create(api, labels={"team": "ml" if i % 2 else "web"})["id"] for i in range(5)]
    assert put_status(api, ids[1], "running") == 200
    body = api.get("/v1/workloads", params={"label": "team=ml", "status": "pending"}).json()
    assert [w["id"] for w in body["items"]] == [ids[3]]
    body = api.get("/v1/workloads", params={"status": ["pending", "running"], "limit": 2}).json()
    assert [w["id"] for w in body["items"]] == [ids[4], ids[3]]
    rest = api.get("/v1/workloads", params={"limit": 10, "cursor": body["next_cursor"]}).json()
    assert [w["id"] for w in rest["items"]] == [ids[2], ids[1], ids[0]]
    assert rest["next_cursor"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"status": "paused"},
        {"label": "noequals"},
        {"label": "bad key=v"},
        {"limit": 0},
        {"limit": 1001},
        {"cursor": "bogus"},
        {"label": [f"k{i}=v" for i in range(65)]},
    ],
)
def test_list_bad_filter_is_422(api: SyncASGIClient, params: dict[str, object]) -> None:
    assert_problem(api.get("/v1/workloads", params=params), 422)


def test_transitions_and_healthz(api: SyncASGIClient) -> None:
    assert api.get("/v1/transitions").json() == {
        "pending": ["killed", "running"],
        "running": ["completed", "failed", "killed"],
        "completed": [],
        "failed": [],
        "killed": [],
    }
    assert api.get("/healthz").status_code == 200


def test_logs_of_a_workload_without_output_are_empty(api: SyncASGIClient) -> None:
    w = create(api)
    response = api.get(f"/v1/workloads/{w['id']}/logs")
    assert response.status_code == 200 and response.text == ""
    assert response.headers["content-type"].startswith("text/plain")


def test_openapi_lists_every_response_code(api: SyncASGIClient) -> None:
    doc = api.get("/openapi.json").json()
    # the guard's (403: a metrics key elsewhere than GET /metrics) and the body limit's
    keyed = {"400", "401", "403", "413", "429", "503"}
    write = {"503", "507"}  # a busy database (also for the key's lookup); a full disk
    expected = {
        ("/v1/workloads", "post"): keyed | write | {"201", "403", "415", "422"},
        ("/v1/workloads", "get"): keyed | {"200", "403", "422"},
        ("/v1/workloads/{workload_id}", "get"): keyed | {"200", "404"},
        ("/v1/workloads/{workload_id}", "delete"): keyed | write | {"200", "403", "404", "409"},
        ("/v1/workloads/{workload_id}/status", "put"): keyed
        | write
        | {"200", "403", "404", "409", "415", "422"},
        ("/v1/workloads/{workload_id}/events", "get"): keyed | {"200", "404"},
        ("/v1/workloads/{workload_id}/logs", "get"): keyed | {"200", "404", "422"},
        ("/v1/tokens", "post"): keyed | write | {"201", "403", "409", "415", "422"},
        ("/v1/tokens", "get"): keyed | {"200", "403"},
        ("/v1/tokens/{token_id}", "delete"): keyed | write | {"200", "403", "404"},
        ("/v1/transitions", "get"): keyed | {"200"},
        ("/healthz", "get"): {"200", "400", "413"},
        ("/v1/workloads/kill", "post"): keyed | write | {"200", "403", "415", "422"},
        ("/v1/status", "get"): keyed | {"200"},
    }
    for (path, method), codes in expected.items():
        assert set(doc["paths"][path][method]["responses"]) == codes, (path, method)
        secured = doc["paths"][path][method].get("security")
        assert secured == (None if path == "/healthz" else [{"bearer": []}]), (path, method)
    busy = doc["paths"]["/v1/workloads"]["post"]["responses"]["503"]
    assert set(busy["headers"]) == {"Retry-After"}
    assert "application/problem+json" in busy["content"]
    created = doc["paths"]["/v1/workloads"]["post"]["responses"]["201"]
    assert set(created["headers"]) == {"Location", "Idempotent-Replayed"}
    assert doc["paths"]["/v1/workloads"]["get"]["parameters"][1]["schema"]["maxItems"] == 64
    body = doc["paths"]["/v1/workloads"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/WorkloadCreate")
    assert "WorkloadCreate" in doc["components"]["schemas"]


def test_concurrent_creates_share_a_batch_and_each_gets_its_own_answer(
    api: SyncASGIClient,
) -> None:
    import asyncio

    async def burst() -> list[object]:
        client = api.client
        bodies = [{"command": ["true"], "name": f"n{i}"} for i in range(20)]
        bodies[7] = {"command": ["true"], "resources": {"gpus": -1}}  # invalid: 422
        return list(await asyncio.gather(*(client.post("/v1/workloads", json=b) for b in bodies)))

    responses = api.run(burst())
    codes = [r.status_code for r in responses]  # type: ignore[attr-defined]
    assert codes.count(201) == 19 and codes[7] == 422
    names = {r.json()["name"] for r in responses if r.status_code == 201}  # type: ignore[attr-defined]
    assert names == {f"n{i}" for i in range(20)} - {"n7"}
    assert len({r.json()["id"] for r in responses if r.status_code == 201}) == 19  # type: ignore[attr-defined]


OPERATIONS = {
    ("/v1/workloads", "post"): ("create_workload", "workloads"),
    ("/v1/workloads", "get"): ("list_workloads", "workloads"),
    ("/v1/workloads/{workload_id}", "get"): ("get_workload", "workloads"),
    ("/v1/workloads/{workload_id}", "delete"): ("kill_workload", "workloads"),
    ("/v1/workloads/{workload_id}/status", "put"): ("set_workload_status", "workloads"),
    ("/v1/workloads/{workload_id}/events", "get"): ("list_workload_events", "workloads"),
    ("/v1/events", "get"): ("list_events", "events"),
    ("/v1/workloads/{workload_id}/logs", "get"): ("get_workload_logs", "workloads"),
    ("/v1/workloads/kill", "post"): ("kill_workloads", "workloads"),
    ("/v1/workloads/clean", "post"): ("clean_workloads", "workloads"),
    ("/v1/workloads/batch", "post"): ("create_workloads", "workloads"),
    ("/v1/tokens", "post"): ("create_token", "tokens"),
    ("/v1/tokens", "get"): ("list_tokens", "tokens"),
    ("/v1/tokens/{token_id}", "delete"): ("revoke_token", "tokens"),
    ("/v1/transitions", "get"): ("get_transitions", "meta"),
    ("/v1/status", "get"): ("get_status", "meta"),
    ("/healthz", "get"): ("healthz", "meta"),
    ("/readyz", "get"): ("readyz", "meta"),
    ("/metrics", "get"): ("get_metrics", "meta"),
}


def test_every_operation_has_its_short_id_and_a_tag(api: SyncASGIClient) -> None:
    doc = api.get("/openapi.json").json()
    found = {
        (path, method): (op.get("operationId"), op.get("tags"))
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    assert found == {key: (op, [tag]) for key, (op, tag) in OPERATIONS.items()}


def test_openapi_describes_the_new_answers(api: SyncASGIClient) -> None:
    doc = api.get("/openapi.json").json()
    paths, schemas = doc["paths"], doc["components"]["schemas"]

    def answer(path: str, method: str) -> str:
        ok = paths[path][method]["responses"]["200"]["content"]["application/json"]
        return str(ok["schema"]["$ref"]).rpartition("/")[2]

    assert answer("/v1/transitions", "get") == "Transitions"
    assert schemas["Transitions"]["propertyNames"] == {"$ref": "#/components/schemas/Status"}
    assert answer("/v1/status", "get") == "ServerStatus"
    assert answer("/v1/workloads/kill", "post") == "KillResult"
    assert set(schemas["KillResult"]["required"]) == {"killed", "not_killed", "not_found"}
    kill_body = paths["/v1/workloads/kill"]["post"]["requestBody"]["content"]
    assert kill_body["application/json"]["schema"]["$ref"].endswith("/KillRequest")
    assert "stopping" in schemas["Workload"]["properties"]
    assert "total" in schemas["WorkloadList"]["properties"]
    params = {p["name"]: p for p in paths["/v1/workloads"]["get"]["parameters"]}
    assert params["id_prefix"]["schema"]["pattern"].startswith("^([0123456789abcdefghjkm")
    assert set(params) >= {"id_prefix", "name", "count"}


def test_docs_work_offline(tmp_path: Path, store: BlockingStore) -> None:
    """/docs names no asset on another host, and the ones it names are served here,
    without a key."""
    import re

    anonymous = app_client(store, tmp_path)
    try:
        page = anonymous.get("/docs")
        assert page.status_code == 200, page.text
        assert not re.search(r"https?://", page.text), page.text
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(assets) == 3
        for url in assets:
            response = anonymous.get(url)
            assert response.status_code == 200, url
            assert len(response.content) > 100
        assert "SwaggerUIBundle" in anonymous.get(assets[-1]).text
        assert "'/openapi.json'" in page.text
        assert '"validatorUrl": null' in page.text  # no badge from validator.swagger.io
        assert anonymous.get("/docs/oauth2-redirect").status_code == 200
        for other in ("/docs/assets/index.html", "/docs/assets/swagger-ui.js", "/redoc"):
            assert anonymous.get(other).status_code in (401, 404), other
    finally:
        anonymous.close()
