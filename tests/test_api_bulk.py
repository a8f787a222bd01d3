"""Finding and killing many workloads at once, in process (``--executor none``):
``GET /v1/workloads`` with ``id_prefix``, ``name`` and ``count``; ``POST
/v1/workloads/kill``; ``GET /v1/status`` without an executor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore
from tests.test_security import Users, problem, submit


@pytest.fixture
def users(store: BlockingStore, tmp_path: Path) -> Iterator[Users]:
    u = Users(store, tmp_path)
    yield u
    u.close()


def ids_listed(client: SyncASGIClient, **params: object) -> list[str]:
    response = client.get("/v1/workloads", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return [w["id"] for w in response.json()["items"]]


def set_status(users: Users, wid: object, *statuses: str) -> None:
    for status in statuses:
        response = users["root"].put(f"/v1/workloads/{wid}/status", json={"status": status})
        assert response.status_code == 200, response.text


def status_of(users: Users, wid: object) -> str:
    return str(users["root"].get(f"/v1/workloads/{wid}").json()["status"])


# --- GET /v1/workloads: id_prefix, name, count ---------------------------------------


def test_id_prefix_finds_one_or_several(users: Users) -> None:
    alice = users["alice"]
    made = [submit(alice)["id"] for _ in range(5)]
    for wid in made:
        assert ids_listed(alice, id_prefix=wid) == [wid]
    shared = made[0][:4]  # made within a second: the first 4 characters are the same
    assert ids_listed(alice, id_prefix=shared) == made[::-1]
    body = alice.get("/v1/workloads", params={"id_prefix": shared, "count": "true"}).json()
    assert body["total"] == 5
    other = "0000" if not made[0].startswith("0000") else "zzzz"
    assert ids_listed(alice, id_prefix=other) == []
    assert ids_listed(users["bob"], id_prefix=made[0]) == []  # not theirs
    assert ids_listed(users["root"], id_prefix=made[0], all_users="true") == [made[0]]


@pytest.mark.parametrize(
    ("prefix", "says"),
    [
        ("01m", "too short: give at least 4 characters"),
        ("01M8", "(ids are lower case)"),
        ("01m8u!", "has characters no id has: '!', 'u'"),
        ("0" * 27, "longer than an id"),
    ],
)
def test_a_bad_id_prefix_is_422_saying_why(users: Users, prefix: str, says: str) -> None:
    body = problem(users["alice"].get("/v1/workloads", params={"id_prefix": prefix}), 422)
    assert says in str(body["detail"])


def test_name_is_an_exact_match(users: Users) -> None:
    alice = users["alice"]
    one = submit(alice, name="train")["id"]
    two = submit(alice, name="train")["id"]
    submit(alice, name="train-2")
    submit(alice)
    submit(users["bob"], name="train")
    set_status(users, one, "running", "completed")
    assert ids_listed(alice, name="train") == [two, one]
    assert ids_listed(alice, name="train", status=["pending", "running"]) == [two]
    assert ids_listed(alice, name="trai") == []
    problem(alice.get("/v1/workloads", params={"name": "x" * 201}), 422)


def test_count_gives_the_total_whatever_the_page(users: Users) -> None:
    alice = users["alice"]
    for i in range(7):
        w = submit(alice, labels={"team": "ml" if i < 5 else "web"})
        if i == 0:
            set_status(users, w["id"], "running")
    submit(users["bob"], labels={"team": "ml"})
    page = alice.get("/v1/workloads", params={"label": "team=ml", "limit": 2, "count": "true"})
    assert page.json()["total"] == 5 and len(page.json()["items"]) == 2
    rest = alice.get(
        "/v1/workloads",
        params={"label": "team=ml", "cursor": page.json()["next_cursor"], "count": "true"},
    ).json()
    assert rest["total"] == 5 and len(rest["items"]) == 3
    running = {"status": "running", "count": "true"}
    assert alice.get("/v1/workloads", params=running).json()["total"] == 1
    admin = users["root"].get("/v1/workloads", params={"all_users": "true", "count": "true"})
    assert admin.json()["total"] == 8
    assert "total" not in alice.get("/v1/workloads").json()  # only when asked


# --- POST /v1/workloads/kill ---------------------------------------------------------


def kill(client: SyncASGIClient, body: object) -> dict[str, list[dict[str, object]]]:
    response = client.post("/v1/workloads/kill", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_kill_by_ids_sorts_each_into_its_list(users: Users) -> None:
    alice = users["alice"]
    pending, running, done = (submit(alice)["id"] for _ in range(3))
    set_status(users, running, "running")
    set_status(users, done, "running", "completed")
    bobs = submit(users["bob"])["id"]
    unknown = "0" * 26
    result = kill(alice, {"ids": [pending, unknown, done, bobs, running, pending]})
    assert [w["id"] for w in result["killed"]] == [pending, running]
    assert all(w["status"] == "killed" and w["stopping"] is False for w in result["killed"])
    assert result["not_killed"] == [
        {
            "id": done,
            "status": "completed",
            "detail": f"workload {done} is completed; it cannot become killed"
            " (allowed from completed: none, it is terminal)",
        }
    ]
    assert result["not_found"] == [unknown, bobs]  # another user's id is not found
    assert status_of(users, bobs) == "pending"
    events = alice.get(f"/v1/workloads/{running}/events").json()["items"]
    assert events[-1]["to_status"] == "killed" and events[-1]["actor"] == "alice"


def test_a_selector_kills_the_callers_active_matches_only(users: Users) -> None:
    alice, bob = users["alice"], users["bob"]
    ml = [submit(alice, labels={"team": "ml"}, name="a" if i else "b")["id"] for i in range(4)]
    set_status(users, ml[1], "running")
    set_status(users, ml[2], "running", "failed")
    web = submit(alice, labels={"team": "web"})["id"]
    bobs = submit(bob, labels={"team": "ml"})["id"]
    result = kill(alice, {"labels": {"team": "ml"}})
    # The pending ones first (newest first), then the running ones.
    assert [w["id"] for w in result["killed"]] == [ml[3], ml[0], ml[1]]
    assert result["not_killed"] == [] and result["not_found"] == []  # failed: not selected
    assert [status_of(users, w) for w in (ml[2], web, bobs)] == ["failed", "pending", "pending"]


def test_a_selector_narrows_by_status_and_name(users: Users) -> None:
    alice = users["alice"]
    a = [submit(alice, name="a")["id"] for _ in range(3)]
    b = submit(alice, name="b")["id"]
    set_status(users, a[0], "running")
    set_status(users, b, "running")
    assert [w["id"] for w in kill(alice, {"status": ["running"], "name": "a"})["killed"]] == [a[0]]
    assert [status_of(users, w) for w in (*a, b)] == ["killed", "pending", "pending", "running"]
    assert {w["id"] for w in kill(alice, {"name": "a"})["killed"]} == {a[1], a[2]}


def test_ids_and_a_selector_together_kill_both(users: Users) -> None:
    alice = users["alice"]
    named = submit(alice)["id"]
    labelled = submit(alice, labels={"x": "1"})["id"]
    left = submit(alice)["id"]
    result = kill(alice, {"ids": [named, labelled], "labels": {"x": "1"}})
    assert [w["id"] for w in result["killed"]] == [named, labelled]  # each once
    assert status_of(users, left) == "pending"


def test_all_kills_every_active_workload_of_the_caller_in_pages(users: Users) -> None:
    alice = users["alice"]
    made = [submit(alice)["id"] for _ in range(230)]  # more than one page of kills
    set_status(users, made[5], "running")
    set_status(users, made[6], "running", "completed")
    bobs = submit(users["bob"])["id"]
    result = kill(alice, {"all": True})
    assert sorted(w["id"] for w in result["killed"]) == sorted(set(made) - {made[6]})
    assert status_of(users, bobs) == "pending"
    assert kill(alice, {"all": True})["killed"] == []


def test_all_users_is_for_admins(users: Users) -> None:
    alice_s = submit(users["alice"])["id"]
    bobs = submit(users["bob"])["id"]
    roots = submit(users["root"])["id"]
    body = problem(
        users["alice"].post("/v1/workloads/kill", json={"all": True, "all_users": True}), 403
    )
    assert "admin" in str(body["detail"])
    assert status_of(users, alice_s) == "pending"
    # An admin's own kill touches only the admin's workloads, like its listing.
    assert [w["id"] for w in kill(users["root"], {"ids": [bobs], "all": True})["killed"]] == [roots]
    result = kill(users["root"], {"ids": [bobs], "all_users": True})
    assert [w["id"] for w in result["killed"]] == [bobs]
    assert [w["id"] for w in kill(users["root"], {"all": True, "all_users": True})["killed"]] == [
        alice_s
    ]
    events = users["root"].get(f"/v1/workloads/{bobs}/events").json()["items"]
    assert events[-1]["actor"] == "root"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "say which workloads: ids, a selector"),
        ({"ids": []}, "say which workloads"),
        ({"all_users": True}, "say which workloads"),
        ({"all": False, "labels": {}}, "say which workloads"),
        ({"status": ["completed"]}, "status[0]"),
        ({"ids": ["x"] * 1001}, "ids"),
        ({"labels": {"bad key": "v"}}, "labels"),
        ({"ids": "01m8"}, "ids"),
        ({"id": ["01m8"]}, "id"),
    ],
)
def test_a_kill_without_a_clear_target_is_422(users: Users, body: object, says: str) -> None:
    target = submit(users["alice"])["id"]
    detail = problem(users["alice"].post("/v1/workloads/kill", json=body), 422)["detail"]
    assert says in str(detail)
    assert status_of(users, target) == "pending"


def test_a_kill_body_must_be_json(users: Users) -> None:
    target = submit(users["alice"])["id"]
    response = users["alice"].post(
        "/v1/workloads/kill", content=b'{"all": true}', headers={"Content-Type": "text/plain"}
    )
    problem(response, 415)
    problem(users["alice"].post("/v1/workloads/kill", json={"ids": ["x" * 2_000_000]}), 413)
    assert status_of(users, target) == "pending"


# --- GET /v1/status without an executor ----------------------------------------------


def test_status_without_an_executor_counts_the_callers_workloads(users: Users) -> None:
    queued = [submit(users["alice"])["id"] for _ in range(2)]
    submit(users["bob"])  # pending too, but not alice's
    w = submit(users["alice"])["id"]
    set_status(users, w, "running")
    set_status(users, submit(users["bob"])["id"], "running", "failed")
    mine = users["alice"].get("/v1/status").json()
    nothing = {"cpus": 0.0, "memory_mb": 0, "gpus": 0}
    assert mine == {
        "executor": "none",
        "capacity": nothing,
        "used": nothing,
        "free": nothing,
        "counts": {"pending": 2, "running": 1, "completed": 0, "failed": 0, "killed": 0},
        # the pending ones, read from the database (as a standby does): an API-only
        # server beside the one that schedules shows the queue too
        "queue": [
            {
                "id": wid,
                "name": None,
                "owner": "alice",
                "resources": {"cpus": 1.0, "memory_mb": 0, "gpus": 0},
                "priority": 0,
                "reason": None,
            }
            for wid in queued
        ],
        "queue_length": 2,
        "server": None,  # an app without a scheduler: no server name, no leader
        "leader": None,
    }
    everyone = users["root"].get("/v1/status").json()["counts"]
    assert everyone == {"pending": 3, "running": 1, "completed": 0, "failed": 1, "killed": 0}
