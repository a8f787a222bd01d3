"""``GET /v1/status`` and a workload's ``stopping`` on a real ``corral serve`` that
runs real processes (``--executor local``), on each database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.executors.local import kill_all
from tests.server import LiveServer, wait_until

STUBBORN = 'trap "" TERM; echo ready; while :; do sleep 0.05; done'
"""A workload that ignores SIGTERM: only the SIGKILL after the grace period ends it."""


@pytest.fixture
def server(tmp_path: Path, serve_db: list[str]) -> Iterator[LiveServer]:
    args = ("--cpus", "2", "--memory-mb", "1000", "--gpus", "1", "--kill-grace", "3")
    live = LiveServer(tmp_path / "data", "--executor", "local", *args, *serve_db).start()
    yield live
    live.kill()
    kill_all(tmp_path / "data" / "run")  # whatever a failed test left running


def submit(http: httpx.Client, command: str, **body: Any) -> dict[str, Any]:
    response = http.post("/v1/workloads", json={"command": ["sh", "-c", command], **body})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def get(http: httpx.Client, wid: str) -> dict[str, Any]:
    response = http.get(f"/v1/workloads/{wid}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def listed(http: httpx.Client, wid: str) -> dict[str, Any]:
    items = http.get("/v1/workloads", params={"id_prefix": wid}).json()["items"]
    assert len(items) == 1
    return items[0]  # type: ignore[no-any-return]


def ready(server: LiveServer, wid: str) -> bool:
    """The workload printed ``ready``: its shell runs (and its trap is set)."""
    http = server.http()
    with http:
        return "ready" in http.get(f"/v1/workloads/{wid}/logs").text


def user_key(http: httpx.Client, user: str) -> str:
    response = http.post("/v1/tokens", json={"user": user})
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def test_status_shows_capacity_use_counts_and_the_queue(server: LiveServer) -> None:
    with server.http() as admin, server.http(token=user_key(server.http(), "alice")) as alice:
        idle = alice.get("/v1/status").json()
        assert idle["executor"] == "local"
        assert idle["capacity"] == {"cpus": 2.0, "memory_mb": 1000, "gpus": 1}
        assert idle["used"] == {"cpus": 0.0, "memory_mb": 0, "gpus": 0}
        assert idle["free"] == idle["capacity"]
        assert idle["queue"] == [] and idle["queue_length"] == 0

        big = submit(admin, STUBBORN, resources={"cpus": 1.5, "memory_mb": 300, "gpus": 1})
        wait_until(lambda: get(admin, big["id"])["status"] == "running")
        low = submit(alice, "true", name="low", resources={"cpus": 1})
        high = submit(admin, "true", name="high", priority=5, resources={"gpus": 1})
        later = submit(alice, "true", name="later", resources={"cpus": 1})

        def queued(status: dict[str, Any]) -> list[Any] | None:
            queue = status["queue"]
            return queue if len(queue) == 3 and all(e["reason"] for e in queue) else None

        everyone = admin.get("/v1/status").json()
        assert everyone["used"] == {"cpus": 1.5, "memory_mb": 300, "gpus": 1}
        assert everyone["free"] == {"cpus": 0.5, "memory_mb": 700, "gpus": 0}
        assert everyone["counts"] == {
            "pending": 3, "running": 1, "completed": 0, "failed": 0, "killed": 0
        }  # fmt: skip
        queue = wait_until(lambda: queued(admin.get("/v1/status").json()))
        assert [e["id"] for e in queue] == [high["id"], low["id"], later["id"]]  # priority first
        assert queue[0] == {
            "id": high["id"],
            "name": "high",
            "owner": big["owner"],
            "resources": {"cpus": 1.0, "memory_mb": 0, "gpus": 1},
            "priority": 5,
            "reason": "waiting for 1 GPU, 0 free",
        }
        assert queue[1]["reason"] == queue[2]["reason"] == "waiting for 1 CPU, 0.5 free"
        assert admin.get("/v1/status").json()["queue_length"] == 3

        mine = alice.get("/v1/status").json()  # a user sees their own workloads only
        assert [e["id"] for e in mine["queue"]] == [low["id"], later["id"]]
        assert mine["queue_length"] == 2
        assert mine["counts"] == {
            "pending": 2, "running": 0, "completed": 0, "failed": 0, "killed": 0
        }  # fmt: skip
        assert mine["used"] == everyone["used"]  # the machine's, whoever uses it

        admin.delete(f"/v1/workloads/{big['id']}")
        wait_until(lambda: admin.get("/v1/status").json()["queue_length"] == 0)


def test_stopping_while_a_killed_workload_ignores_sigterm(server: LiveServer) -> None:
    with server.http() as http:
        one = submit(http, STUBBORN, resources={"cpus": 0})
        two = submit(http, STUBBORN, resources={"cpus": 0})
        for w in (one, two):
            wait_until(lambda w=w: ready(server, w["id"]))
            assert get(http, w["id"])["stopping"] is False  # running, not being stopped
        killed = http.delete(f"/v1/workloads/{one['id']}").json()
        assert (killed["status"], killed["stopping"]) == ("killed", True)
        result = http.post("/v1/workloads/kill", json={"ids": [two["id"]]}).json()
        assert [(w["id"], w["stopping"]) for w in result["killed"]] == [(two["id"], True)]
        for w in (one, two):  # within the 3 s grace period: SIGTERM is ignored
            assert get(http, w["id"])["stopping"] is True
            assert listed(http, w["id"])["stopping"] is True
        for w in (one, two):  # SIGKILL after the grace period
            wait_until(lambda w=w: get(http, w["id"])["stopping"] is False, timeout=10)
            assert listed(http, w["id"])["stopping"] is False
            assert get(http, w["id"])["status"] == "killed"


def test_stopping_while_a_timed_out_workload_is_stopped(server: LiveServer) -> None:
    with server.http() as http:
        w = submit(http, STUBBORN, resources={"cpus": 0}, timeout_seconds=1)
        wait_until(lambda: get(http, w["id"])["stopping"], timeout=10)
        assert get(http, w["id"])["status"] == "running"  # until the process is gone
        done = wait_until(lambda: (x := get(http, w["id"]))["status"] == "failed" and x, 10)
        assert done["stopping"] is False and done["reason"] == "timed out after 1 s"


def test_a_users_status_names_no_workload_of_another_user(server: LiveServer) -> None:
    """The admin's workload holds one CPU; bob's, needing both, heads the line; alice's
    waits behind it. Alice's status (and her workload) must not tell her bob's id."""
    admin = server.http()
    submit(admin, "sleep 30")
    wait_until(lambda: admin.get("/v1/status").json()["free"]["cpus"] == 1.0)
    bob = server.http(token=user_key(admin, "bob"))
    theirs = submit(bob, "true", resources={"cpus": 2})
    alice = server.http(token=user_key(admin, "alice"))
    mine = submit(alice, "true")
    wait_until(lambda: get(alice, mine["id"])["reason"] not in (None, "queued"))
    status = alice.get("/v1/status").text
    assert mine["id"] in status
    assert theirs["id"] not in status
    assert theirs["id"] not in get(alice, mine["id"])["reason"]
