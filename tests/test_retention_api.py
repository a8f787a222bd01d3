"""``POST /v1/workloads/clean`` through the real app, on each database: an admin's
clean deletes every user's finished workloads past the age, a user's only their own;
a deleted workload answers 404, its events leave ``GET /v1/events`` and its log this
server's logs directory; bad bodies are 422s naming what is wrong."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore
from tests.conftest import add_key, app_client
from tests.test_api import assert_problem

ENDS = {"completed": 0, "failed": 3}


@pytest.fixture
def users(store: BlockingStore, tmp_path: Path) -> Iterator[dict[str, SyncASGIClient]]:
    clients = {u: app_client(store, tmp_path, token=add_key(store, u)) for u in ("alice", "bob")}
    yield clients
    for client in clients.values():
        client.close()


def submit(client: SyncASGIClient, **body: Any) -> str:
    response = client.post("/v1/workloads", json={"command": ["true"], **body})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def end(admin: SyncASGIClient, wid: str, status: str) -> None:
    """Move ``wid`` to ``status`` as a runner outside corral would (admin's PUT)."""
    if status != "killed":
        response = admin.put(f"/v1/workloads/{wid}/status", json={"status": "running"})
        assert response.status_code == 200, response.text
    body: dict[str, Any] = {"status": status}
    if status in ENDS:
        body["exit_code"] = ENDS[status]
    response = admin.put(f"/v1/workloads/{wid}/status", json=body)
    assert response.status_code == 200, response.text


def clean(client: SyncASGIClient, older_than: float) -> int:
    response = client.post("/v1/workloads/clean", json={"older_than_seconds": older_than})
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"deleted"}
    return int(response.json()["deleted"])


def event_ids(client: SyncASGIClient) -> set[str]:
    """The workloads with events in ``GET /v1/events``, every page read."""
    seen: set[str] = set()
    after = 0
    while True:
        response = client.get("/v1/events", params={"after": after, "limit": 500})
        assert response.status_code == 200, response.text
        body = response.json()
        seen |= {e["workload_id"] for e in body["items"]}
        if body["last_id"] == after:
            return seen
        after = body["last_id"]


def feed_shows(client: SyncASGIClient, wanted: set[str]) -> set[str]:
    """``event_ids`` once every one of ``wanted`` is in it: the feed holds back the
    events after a gap (here: the deleted ones') until they are 5 s old."""
    deadline = time.monotonic() + 15
    while True:
        seen = event_ids(client)
        if wanted <= seen or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def write_logs(tmp_path: Path, ids: list[str]) -> Path:
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    for wid in ids:
        (logs / f"{wid}.log").write_text("out\n")
    return logs


def test_an_admin_cleans_every_users_finished_workloads_with_events_and_logs(
    api: SyncASGIClient, users: dict[str, SyncASGIClient], tmp_path: Path
) -> None:
    alice, bob = users["alice"], users["bob"]
    gone = {
        submit(alice, name="done"): "completed",
        submit(alice): "failed",
        submit(bob): "killed",
        submit(api): "completed",
    }
    for wid, status in gone.items():
        end(api, wid, status)
    running = submit(bob)
    assert api.put(f"/v1/workloads/{running}/status", json={"status": "running"}).is_success
    pending = submit(alice)
    kept = [running, pending]
    logs = write_logs(tmp_path, [*gone, *kept])
    assert clean(api, 0) == len(gone)
    for wid in gone:
        assert_problem(api.get(f"/v1/workloads/{wid}"), 404)
        assert_problem(api.get(f"/v1/workloads/{wid}/events"), 404)
        assert_problem(api.get(f"/v1/workloads/{wid}/logs"), 404)
    assert api.get(f"/v1/workloads/{running}").json()["status"] == "running"
    assert alice.get(f"/v1/workloads/{pending}").json()["status"] == "pending"
    assert {p.name for p in logs.iterdir()} == {f"{w}.log" for w in kept}
    seen = feed_shows(api, set(kept))
    assert set(kept) <= seen and not seen & set(gone)
    assert not feed_shows(alice, {pending}) & set(gone)
    listed = {
        w["id"] for w in api.get("/v1/workloads", params={"all_users": "true"}).json()["items"]
    }
    assert listed == set(kept)
    assert clean(api, 0) == 0  # a re-run: nothing more


def test_a_user_cleans_only_their_own(
    api: SyncASGIClient, users: dict[str, SyncASGIClient], tmp_path: Path
) -> None:
    alice, bob = users["alice"], users["bob"]
    mine = [submit(alice), submit(alice)]
    theirs = [submit(bob), submit(api)]
    for wid in [*mine, *theirs]:
        end(api, wid, "completed")
    submit(bob)  # the newest event: its workload is kept (ids never go back)
    logs = write_logs(tmp_path, [*mine, *theirs])
    assert clean(alice, 0) == 2
    assert clean(alice, 0) == 0
    for wid in theirs:
        assert api.get(f"/v1/workloads/{wid}").status_code == 200
    assert {p.name for p in logs.iterdir()} == {f"{w}.log" for w in theirs}
    assert clean(bob, 0) == 1
    assert clean(api, 0) == 1


def test_only_the_finished_past_the_age_go(
    api: SyncASGIClient, users: dict[str, SyncASGIClient]
) -> None:
    old = submit(users["alice"])
    end(api, old, "completed")
    time.sleep(1.2)
    young = submit(users["alice"])
    end(api, young, "completed")
    submit(users["bob"])
    started = time.time()
    assert clean(api, 1.0) == 1
    assert api.get(f"/v1/workloads/{old}").status_code == 404
    finished = api.get(f"/v1/workloads/{young}")
    if time.time() - started < 0.5:  # (a machine that stalled a second may see it age)
        assert finished.status_code == 200


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({}, "older_than_seconds"),
        ({"older_than_seconds": -1}, "older_than_seconds"),
        ({"older_than_seconds": "3d"}, "older_than_seconds"),
        ({"older_than_seconds": True}, "older_than_seconds"),
        ({"older_than_seconds": None}, "older_than_seconds"),
        ({"older_than_seconds": 10**12}, "older_than_seconds"),
        ({"older_than_seconds": 1, "all_users": True}, "all_users"),
        ([1], ""),
    ],
    ids=["missing", "negative", "text", "bool", "null", "huge", "unknown-field", "not-object"],
)
def test_a_bad_body_is_a_422_naming_it(api: SyncASGIClient, body: object, where: str) -> None:
    done = submit(api)
    end(api, done, "completed")
    submit(api)
    problem = assert_problem(api.post("/v1/workloads/clean", json=body), 422)
    assert where in str(problem)
    assert api.get(f"/v1/workloads/{done}").status_code == 200


def test_infinity_and_a_body_not_json_are_refused(api: SyncASGIClient) -> None:
    headers = {"Content-Type": "application/json"}
    for text in (b'{"older_than_seconds": 1e400}', b'{"older_than_seconds": NaN}', b"{"):
        assert_problem(api.post("/v1/workloads/clean", content=text, headers=headers), 422)
    plain = api.post(
        "/v1/workloads/clean",
        content=b'{"older_than_seconds": 0}',
        headers={"Content-Type": "text/plain"},
    )
    assert_problem(plain, 415)


def test_without_a_key_nothing_is_deleted(
    api: SyncASGIClient, store: BlockingStore, tmp_path: Path
) -> None:
    done = submit(api)
    end(api, done, "completed")
    submit(api)
    anonymous = app_client(store, tmp_path)
    try:
        assert_problem(anonymous.post("/v1/workloads/clean", json={"older_than_seconds": 0}), 401)
    finally:
        anonymous.close()
    assert api.get(f"/v1/workloads/{done}").status_code == 200


def test_openapi_documents_clean(api: SyncASGIClient) -> None:
    doc = api.get("/openapi.json").json()
    operation = doc["paths"]["/v1/workloads/clean"]["post"]
    assert operation["operationId"] == "clean_workloads"
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/CleanRequest")
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/CleanResult")
    assert {"413", "422", "503", "507", "401"} <= set(operation["responses"])
    schema = doc["components"]["schemas"]["CleanRequest"]
    assert schema["required"] == ["older_than_seconds"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["older_than_seconds"]["minimum"] == 0
