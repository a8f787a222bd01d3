"""``?tail=`` of a huge log on a real ``corral serve``: finding the last lines reads
back at most ``TAIL_SCAN_BYTES`` (issue 13: no unbounded work on the event loop;
``tests/test_log_tail.py`` shows the scan off the loop)."""

from __future__ import annotations

from pathlib import Path

from corral.logs import TAIL_SCAN_BYTES
from tests.server import LiveServer

HUGE = 2 << 30
"""A sparse log of 2 GiB without a newline: one line, all of it the last."""


def read_bytes(pid: int) -> int:
    """What the process has read so far (``rchar`` of ``/proc/PID/io``)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_the_tail_of_a_huge_log_without_a_newline_is_its_last_64_mib(tmp_path: Path) -> None:
    """``?tail=1`` of 2 GiB without a newline: the scan for the line's start stops
    ``TAIL_SCAN_BYTES`` back, so the answer is the log's last 64 MiB, and the server
    reads little more than that (it read all 2 GiB first, on the event loop, for
    0.9-4 s)."""
    live = LiveServer(tmp_path / "data", "--executor", "none").start()
    try:
        with live.http(timeout=120) as http:
            wid = http.post("/v1/workloads", json={"command": ["true"]}).json()["id"]
            log = tmp_path / "data" / "logs" / f"{wid}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "wb") as f:
                f.truncate(HUGE)
                f.seek(HUGE - 4)
                f.write(b"last")
            assert live.proc is not None
            before = read_bytes(live.proc.pid)
            size, end = 0, b""
            with http.stream("GET", f"/v1/workloads/{wid}/logs", params={"tail": 1}) as answer:
                assert answer.status_code == 200
                for chunk in answer.iter_bytes():
                    size += len(chunk)
                    end = (end + chunk)[-4:]
            read = read_bytes(live.proc.pid) - before
            assert (size, end) == (TAIL_SCAN_BYTES, b"last")
            assert read < 4 * TAIL_SCAN_BYTES, f"the server read {read} bytes"
    finally:
        live.kill()
