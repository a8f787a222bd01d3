"""A deep queue on a real ``corral serve`` running real processes (``--executor
local``, 2 CPUs), on each database: after each exit, kill and submit, every pending
workload holds the reason a walk over the whole queue gives it (passes that stop
early must leave none behind), and the right ones run.

Each workload waits for a file of its own (``go-<id>``) and exits once the test
creates it, so the test decides every exit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.executors.local import kill_all
from tests.server import LiveServer, wait_until

DEEP = 300


@pytest.fixture
def server(tmp_path: Path, serve_db: list[str]) -> Iterator[LiveServer]:
    args = ("--cpus", "2", "--memory-mb", "1000", "--gpus", "0", "--kill-grace", "1")
    live = LiveServer(tmp_path / "data", "--executor", "local", *args, *serve_db).start()
    yield live
    live.kill()
    kill_all(tmp_path / "data" / "run")


def waiter(files: Path) -> list[str]:
    """A command that runs until ``files/go-<its id>`` exists."""
    return ["sh", "-c", f'until [ -e {files}/go-"$CORRAL_WORKLOAD_ID" ]; do sleep 0.02; done']


def pending(http: httpx.Client) -> list[dict[str, Any]]:
    """Every pending workload, in submission order."""
    items: list[dict[str, Any]] = []
    cursor = ""
    while True:
        params = {"status": "pending", "limit": 1000, "cursor": cursor}
        page = http.get("/v1/workloads", params=params).json()
        items += page["items"]
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return sorted(items, key=lambda w: str(w["id"]))


def running(http: httpx.Client) -> set[str]:
    page = http.get("/v1/workloads", params={"status": "running", "limit": 1000}).json()
    return {w["id"] for w in page["items"]}


def told(http: httpx.Client, expected: dict[str, str], runs: set[str]) -> None:
    """Wait until exactly ``expected`` (id: reason) are pending, and ``runs`` run."""

    def now() -> bool:
        return running(http) == runs and {w["id"]: w["reason"] for w in pending(http)} == expected

    try:
        wait_until(now, timeout=20)
    except AssertionError:
        got = {w["id"]: w["reason"] for w in pending(http)}
        wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
        raise AssertionError(
            f"{len(wrong)} reasons differ, e.g. {list(wrong.items())[:3]};"
            f" running {running(http)}, expected {runs}"
        ) from None


def test_a_deep_queue_is_told_the_truth_after_every_exit(
    server: LiveServer, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    files.mkdir()

    def go(wid: str) -> None:
        (files / f"go-{wid}").touch()

    with server.http() as http:

        def submit(**body: Any) -> str:
            r = http.post("/v1/workloads", json={"command": waiter(files), **body})
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        r1, r2 = submit(), submit()
        wait_until(lambda: running(http) == {r1, r2})
        big = submit(resources={"cpus": 2})
        items = [{"command": waiter(files)} for _ in range(DEEP)]
        r = http.post("/v1/workloads/batch", json={"items": items})
        assert r.status_code == 201, r.text
        queue = [str(w["id"]) for w in r.json()["items"]]
        behind = f"waiting behind {big} (priority 0), which needs more"
        full = "waiting for 1 CPU, 0 free"

        # The machine is full: the 2-CPU head lacks both, the rest one each.
        told(http, {big: "waiting for 2 CPUs, 0 free", **dict.fromkeys(queue, full)}, {r1, r2})

        # One CPU free: the rest would fit, but the head of the line holds it.
        go(r1)
        told(http, {big: "waiting for 2 CPUs, 1 free", **dict.fromkeys(queue, behind)}, {r2})

        # Two free: the head starts; the next becomes the head; everyone lacks a CPU.
        go(r2)
        told(http, dict.fromkeys(queue, full), {big})

        # Killed, its two CPUs are free: the next two start (the pass stops there).
        assert http.delete(f"/v1/workloads/{big}").status_code == 200
        told(http, dict.fromkeys(queue[2:], full), set(queue[:2]))

        # A pending one deep in the queue killed, then exits one by one.
        assert http.delete(f"/v1/workloads/{queue[150]}").status_code == 200
        del queue[150]
        for n in range(2, 8):
            go(queue[n - 2])
            told(http, dict.fromkeys(queue[n + 1 :], full), set(queue[n - 1 : n + 1]))

        # A higher priority goes ahead of them all; one of 2 CPUs waits at the end.
        first = submit(priority=5)
        last = submit(resources={"cpus": 2})
        expected = {
            first: full,
            **dict.fromkeys(queue[8:], full),
            last: "waiting for 2 CPUs, 0 free",
        }
        told(http, expected, set(queue[6:8]))
        go(queue[6])
        del expected[first]
        told(http, expected, {first, queue[7]})
