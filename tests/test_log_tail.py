"""``open_reader_off_loop`` (``GET …/logs?tail=N``): the scan for the last lines runs
on threads of its own, while the loop and its default executor serve others, and a
request cancelled meanwhile leaves no descriptor behind. The scan's bound is raised
here so that it is long: a sparse log of 512 MiB without a newline."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest.mock import patch

from corral import logs
from corral.logs import open_reader_off_loop

BIG = 512 << 20


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def huge_log(tmp_path: Path) -> Path:
    log = tmp_path / "w.log"
    with open(log, "wb") as f:
        f.truncate(BIG)
    return log


async def tails_idle() -> None:
    while logs._tail_threads is not None and not logs._tail_threads.idle():
        await asyncio.sleep(0.01)


def test_a_long_tail_scan_holds_neither_the_loop_nor_its_executor(tmp_path: Path) -> None:
    log = huge_log(tmp_path)

    async def scenario() -> tuple[bool, int]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
        scans = [asyncio.create_task(open_reader_off_loop(log, 1)) for _ in range(4)]
        await asyncio.sleep(0)
        await asyncio.to_thread(lambda: None)  # the scheduler's, retention's, Ray's
        ticks = 0
        while ticks < 5:  # the loop turns
            await asyncio.sleep(0.001)
            ticks += 1
        before_any_scan = not any(s.done() for s in scans)
        readers = await asyncio.gather(*scans)
        for reader in readers:
            reader.close()
        return before_any_scan, readers[0].pos

    with patch.object(logs, "TAIL_SCAN_BYTES", 1 << 30):
        served, pos = asyncio.run(scenario())
    assert served  # each scan reads 512 MiB: the others were served first
    assert pos == 0  # one line, all of it


def test_tails_cancelled_meanwhile_leave_no_descriptor(tmp_path: Path) -> None:
    log = huge_log(tmp_path)

    async def scenario() -> tuple[int, int]:
        before = fds()
        scans = [asyncio.create_task(open_reader_off_loop(log, 1)) for _ in range(3)]
        await asyncio.sleep(0.05)
        for scan in scans:  # the clients went away
            scan.cancel()
        await asyncio.gather(*scans, return_exceptions=True)
        await tails_idle()
        await asyncio.sleep(0.05)  # the done callbacks ran
        return before, fds()

    with patch.object(logs, "TAIL_SCAN_BYTES", 1 << 30):
        before, after = asyncio.run(scenario())
    assert after == before


def test_scans_of_requests_gone_before_they_started_are_not_run(tmp_path: Path) -> None:
    """20 requests cancelled while their scans wait for the two threads: only the two
    under way run (a client starting and dropping tails queues no reading)."""
    log = tmp_path / "w.log"
    log.write_bytes(b"a\nb\n")
    gate = threading.Event()
    ran = 0
    real = logs.open_reader

    def slow_open(path: Path, tail: int | None = None) -> logs.LogReader:
        nonlocal ran
        ran += 1
        gate.wait(5)  # a long scan
        return real(path, tail)

    async def scenario() -> None:
        scans = [asyncio.create_task(open_reader_off_loop(log, 1)) for _ in range(20)]
        await asyncio.sleep(0.05)  # two run, 18 wait for a thread
        for scan in scans:
            scan.cancel()  # the clients went away
        await asyncio.gather(*scans, return_exceptions=True)
        gate.set()
        while logs._tail_threads is not None and not logs._tail_threads.idle():
            await asyncio.sleep(0.01)

    with patch.object(logs, "open_reader", slow_open):
        asyncio.run(scenario())
    assert ran <= logs.TAIL_THREADS, f"{ran} scans ran for 20 requests all gone"
