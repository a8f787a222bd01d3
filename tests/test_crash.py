"""Acknowledged writes survive SIGKILL of a real server."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from tests.server import LiveServer

CREATES = 500


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    server = LiveServer(tmp_path, "--executor", "none").start()
    acked: dict[str, str] = {}  # id -> status the server acknowledged last
    acked_events: dict[str, int] = {}
    with server.http(timeout=10) as client:
        for i in range(CREATES):
            r = client.post("/v1/workloads", json={"command": ["true"], "labels": {"i": str(i)}})
            assert r.status_code == 201
            acked[r.json()["id"]] = "pending"
            acked_events[r.json()["id"]] = 1
        ids = list(acked)
        for n, wid in enumerate(ids[:150]):
            assert client.put(f"/v1/workloads/{wid}/status", json={"status": "running"}).is_success
            acked[wid], acked_events[wid] = "running", 2
            final = ["completed", "failed", "killed"][n % 3]
            if n % 2:
                r = client.put(f"/v1/workloads/{wid}/status", json={"status": final})
                assert r.is_success
                acked[wid], acked_events[wid] = final, 3

    # Keep writing while the server is killed: only what was acknowledged must survive.
    stop = threading.Event()

    def writer() -> None:
        with server.http(timeout=2) as client:
            while not stop.is_set():
                try:
                    r = client.post("/v1/workloads", json={"command": ["late"]})
                except httpx.TransportError:
                    return
                if r.status_code == 201:
                    acked[r.json()["id"]] = "pending"
                    acked_events[r.json()["id"]] = 1

    thread = threading.Thread(target=writer)
    thread.start()
    threading.Event().wait(0.3)
    server.kill()
    stop.set()
    thread.join()

    restarted = LiveServer(tmp_path, "--executor", "none", port=server.port).start()
    try:
        with restarted.http(timeout=10) as client:
            stored: dict[str, str] = {}
            cursor = ""
            while True:
                page = client.get("/v1/workloads", params={"limit": 1000, "cursor": cursor}).json()
                stored.update((w["id"], w["status"]) for w in page["items"])
                cursor = page["next_cursor"]
                if not cursor:
                    break
            assert len(acked) > CREATES
            missing = set(acked) - set(stored)
            assert not missing, f"{len(missing)} acknowledged workloads lost"
            for wid, status in acked.items():
                assert stored[wid] == status
            for wid in ids[:150]:
                events = client.get(f"/v1/workloads/{wid}/events").json()["items"]
                assert len(events) == acked_events[wid]
    finally:
        restarted.kill()
