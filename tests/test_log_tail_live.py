"""``?tail=`` of a huge log on a real ``corral serve``: finding the last lines reads
back as far as they go (all of a log without a newline), and the server answers
others meanwhile (issue 13: no unbounded work on the event loop)."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.server import LiveServer, wait_until

HUGE = 2 << 30
"""A sparse log of 2 GiB without a newline: one line, all of it the last."""


def read_bytes(pid: int) -> int:
    """What the process has read so far (``rchar`` of ``/proc/PID/io``)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_the_tail_of_a_huge_log_without_a_newline_holds_nobody_up(tmp_path: Path) -> None:
    """While the server reads back through 2 GiB for the last line, a ``/healthz``
    sent once it has read 256 MB is answered with most of the log still to read:
    the scan runs off the event loop. (On the loop, the answer came after the whole
    scan, when the server had read everything.) The tail's answer then starts with
    the log's first bytes: its one line is all of it."""
    live = LiveServer(tmp_path / "data", "--executor", "none").start()
    try:
        with live.http() as http:
            wid = http.post("/v1/workloads", json={"command": ["true"]}).json()["id"]
            log = tmp_path / "data" / "logs" / f"{wid}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "wb") as f:
                f.truncate(HUGE)
            assert live.proc is not None
            pid = live.proc.pid
            answered: list[bytes] = []

            def tail() -> None:
                with (
                    live.http(timeout=120) as client,
                    client.stream(
                        "GET", f"/v1/workloads/{wid}/logs", params={"tail": 1}
                    ) as response,
                ):
                    assert response.status_code == 200
                    answered.append(next(response.iter_bytes()))

            before = read_bytes(pid)
            thread = threading.Thread(target=tail, daemon=True)
            thread.start()
            wait_until(lambda: read_bytes(pid) - before > 256 << 20, timeout=60, interval=0.005)
            assert http.get("/healthz").status_code == 200
            read_at_health = read_bytes(pid) - before
            thread.join(timeout=120)
            assert answered and set(answered[0]) == {0}
            assert read_at_health < HUGE // 2, f"healthz waited for {read_at_health} bytes read"
    finally:
        live.kill()
