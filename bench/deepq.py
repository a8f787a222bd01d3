"""A deep queue and its exits (issue 13): ``python -m bench.deepq [--quick] [--out FILE]``.

- **Pass time per exit**, in process: a real ``AsyncSQLiteStore`` holding N pending
  ``true`` workloads (1 CPU each; N = 20,000 and 100,000, quick: 2,000 and 20,000),
  the real ``Scheduler`` and a real ``LocalExecutor`` of 2 CPUs, so ``true`` runs two
  at a time and every exit is followed by a pass. A pass is timed by the time it
  holds the event loop: the steps of its coroutine (from its start to each await,
  and from each resumption to the next), summed; the time it spends awaiting the
  store is not counted (the loop serves others meanwhile). The first pass (the walk
  of the whole queue once loaded) is shown apart; the figures are over the passes of
  the next ``EXITS`` exits (median, p90, p99, max), with how many workloads each
  walked. The safety poll (``_reconcile``, every 5 s), which reads every pending
  workload from the store, is timed once the same way, for comparison.
- **API latency with the queue deep**, over HTTP: ``corral serve --executor local``
  with ``CORRAL_CPUS=2`` (keys on) on a database holding N pending ``true`` (N =
  100,000 and, as the flat reference, 10,000; quick: 20,000 and 5,000), answering
  ``GET /v1/workloads/{id}`` on one keep-alive connection, one request at a time, for
  ``SECONDS`` (or until half the queue has run: a short queue runs dry) while its
  workloads exit two at a time: p50, p99 and max, and the exits in that time.

The queue is stored before the scheduler (or server) starts, through
``SQLiteStore.create_workloads``. Speed is never asserted. See docs/benchmarks.md,
"Issue 13".
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import time
from collections.abc import Coroutine, Generator
from pathlib import Path
from typing import Any

from bench.common import (
    Metric,
    Server,
    auth,
    fresh_dir,
    machine_info,
    percentile,
    remove_fresh_dirs,
)
from corral.executors.base import Capacity
from corral.executors.local import LocalExecutor, kill_all
from corral.keys import default_admin, key_digest, new_key
from corral.model import WorkloadCreate
from corral.scheduler import Scheduler
from corral.store.base import NewWorkload
from corral.store.sqlite import SQLiteStore
from corral.store.sqlite_async import AsyncSQLiteStore

OWNER = default_admin()
CPUS = 2
EXITS = 400
SECONDS = 15.0
REFERENCE = 10_000
"""The shallow queue the deep one's API latency is compared with (it runs dry after
about 8 s of exits: the reference stops once half of it has run)."""


def seed(path: Path, n: int) -> list[str]:
    """A database at ``path`` holding ``n`` pending ``true`` workloads of ``OWNER``
    (1 CPU each), and an admin key of ``OWNER`` (a server running as root runs
    nothing as root for a user without one); their ids, in submission order."""
    store = SQLiteStore(path)
    try:
        store.create_api_key(user=OWNER, admin=True, key_sha256=key_digest(new_key()))
        spec = WorkloadCreate(command=["true"])
        ids: list[str] = []
        for start in range(0, n, 2000):
            items = [NewWorkload(spec, OWNER) for _ in range(min(2000, n - start))]
            for created in store.create_workloads(items):
                assert not isinstance(created, Exception), created
                ids.append(created[0].id)
        return ids
    finally:
        store.close()


# --- the pass time per exit, in process ------------------------------------------------


class _Steps:
    """Await a coroutine, summing the time each of its steps holds the loop."""

    def __init__(self, coro: Coroutine[Any, Any, None]) -> None:
        self.coro = coro
        self.busy = 0.0

    def __await__(self) -> Generator[Any, Any, None]:
        value: Any = None
        error: BaseException | None = None
        while True:
            started = time.perf_counter()
            try:
                step = self.coro.throw(error) if error is not None else self.coro.send(value)
            except StopIteration:
                self.busy += time.perf_counter() - started
                return
            except BaseException:
                self.busy += time.perf_counter() - started
                raise
            self.busy += time.perf_counter() - started
            try:
                value, error = (yield step), None
            except BaseException as exc:  # cancelled: handed to the coroutine
                value, error = None, exc


class TimedScheduler(Scheduler):
    """The scheduler, each of its passes timed (``passes``: seconds on the loop)."""

    passes: list[float]
    walked: list[int]

    async def _schedule(self) -> None:
        steps = _Steps(super()._schedule())
        try:
            await steps
        finally:
            self.passes.append(steps.busy)
            self.walked.append(getattr(self, "last_walked", -1))  # (-1: not counted)


async def _pass_times(data_dir: Path, n: int, exits: int) -> dict[str, Any]:
    store = AsyncSQLiteStore(data_dir / "corral.db")
    executor = LocalExecutor(
        data_dir, capacity=Capacity(cpus=CPUS, memory_mb=0, gpus=0), kill_grace_seconds=1
    )
    scheduler = TimedScheduler(store, executor)
    scheduler.passes, scheduler.walked = [], []
    loaded = time.perf_counter()
    await scheduler.start()
    try:
        while len(scheduler.passes) < 1:
            await asyncio.sleep(0.005)
        started = time.perf_counter()
        load_s = started - loaded
        first = len(scheduler.passes)
        done = n - exits - CPUS
        while (scheduler.queue_depth() or 0) > done:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        times = [t * 1000 for t in scheduler.passes[first:]]
        walked = scheduler.walked[first:]
        poll = _Steps(scheduler._reconcile())  # the safety poll, once, for comparison
        poll_started = time.perf_counter()
        await poll
        poll_s = time.perf_counter() - poll_started
    finally:
        await scheduler.stop()
        await store.close()
        kill_all(data_dir / "run")
    return {
        "pending": n,
        "load_and_first_pass_s": round(load_s, 2),
        "first_pass_ms": round(scheduler.passes[0] * 1000, 2),
        "passes": len(times),
        "exits_per_s": round(exits / elapsed, 1),
        "p50_ms": round(statistics.median(times), 3),
        "p90_ms": round(percentile(times, 90), 3),
        "p99_ms": round(percentile(times, 99), 3),
        "max_ms": round(max(times), 3),
        "walked_median": statistics.median(walked),
        "walked_max": max(walked),
        "safety_poll_loop_ms": round(poll.busy * 1000, 1),
        "safety_poll_wall_ms": round(poll_s * 1000, 1),
    }


def pass_times(n: int, exits: int) -> dict[str, Any]:
    data_dir = fresh_dir(f"deepq-{n}")
    seed(data_dir / "corral.db", n)
    return asyncio.run(_pass_times(data_dir, n, exits))


# --- the API's latency with the queue deep, over HTTP ---------------------------------


def _get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> Any:
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
    return json.loads(body)


def api_latency(n: int, seconds: float) -> dict[str, Any]:
    data_dir = fresh_dir(f"deepq-api-{n}")
    ids = seed(data_dir / "corral.db", n)
    probe = ids[-1]  # pending throughout
    with Server(data_dir, "local", env={"CORRAL_CPUS": str(CPUS)}) as srv:
        headers = auth(srv.port)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            before = _get(conn, "/v1/status", headers)
            time.sleep(1.0)  # past the first pass over the whole queue
            latencies: list[float] = []
            start = time.perf_counter()
            counts = _get(conn, "/v1/status", headers)
            while time.perf_counter() - start < seconds:
                # A short queue runs dry: half of it will do.
                checked = n <= REFERENCE and len(latencies) % 200 == 199
                if checked and _pending(_get(conn, "/v1/status", headers)) < n / 2:
                    break
                sent = time.perf_counter()
                _get(conn, f"/v1/workloads/{probe}", headers)
                latencies.append((time.perf_counter() - sent) * 1000)
            after = _get(conn, "/v1/status", headers)
            window = time.perf_counter() - start
        finally:
            conn.close()
    done = _completed(after) - _completed(counts)
    return {
        "pending": n,
        "requests": len(latencies),
        "exits": done,
        "seconds": round(window, 1),
        "exits_per_s": round(done / window, 1),
        "pending_at_start": _pending(before),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "max_ms": round(max(latencies), 3),
    }


def _completed(status: dict[str, Any]) -> int:
    return int(status["counts"].get("completed", 0))


def _pending(status: dict[str, Any]) -> int:
    return int(status["counts"].get("pending", 0))


# --- the metric of bench.run ---------------------------------------------------------------


def run(quick: bool, only: set[str]) -> dict[str, Metric]:
    """``deepq_get_p99_ms`` (``bench.run``): the ``GET`` p99 of ``api_latency`` with
    100,000 pending (quick: 20,000), its bound the same with ``REFERENCE`` pending
    (quick: 5,000); ``ratio`` is reference / deep, 1.0 when the p99 stays flat."""
    deep, small = (20_000, 5_000) if quick else (100_000, REFERENCE)
    seconds = 5.0 if quick else SECONDS
    rows = {n: api_latency(n, seconds) for n in (small, deep)}
    return {
        "deepq_get_p99_ms": Metric(
            rows[deep]["p99_ms"],
            "ms",
            rows[small]["p99_ms"],
            f"get_p99_{small}_ms",
            detail={str(n): row for n, row in rows.items()},
            lower_is_better=True,
        )
    }


# --- the run -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.deepq", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller queues")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    sizes = (2_000, 20_000) if args.quick else (20_000, 100_000)
    api_sizes = (5_000, 20_000) if args.quick else (REFERENCE, 100_000)
    exits = 100 if args.quick else EXITS
    seconds = 5.0 if args.quick else SECONDS
    report: dict[str, Any] = {"machine": machine_info(), "passes": [], "api": []}
    try:
        for n in sizes:
            row = pass_times(n, exits)
            report["passes"].append(row)
            print(json.dumps(row), flush=True)
        for n in api_sizes:
            row = api_latency(n, seconds)
            report["api"].append(row)
            print(json.dumps(row), flush=True)
    finally:
        remove_fresh_dirs()
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
