"""``transition_ps``: ``AsyncSQLiteStore.update_workload_status`` calls per second, in
process, each awaited before the next (on uvloop, as the server runs): the store the
server and its scheduler use, its thread hop included. ``detail.sync_ps`` is the same
with the synchronous ``SQLiteStore`` called directly (what ``transition_ps`` measured
before the store was async, issue 11), in the same alternating blocks.

Bound: raw ``sqlite3`` on an identically migrated and filled database, with the same
pragmas, running the store's own two statements and nothing else: ``BEGIN IMMEDIATE``,
the conditional ``UPDATE … RETURNING`` (fetched), the event ``INSERT`` with its ``seq``
subquery, ``COMMIT``. What the figure leaves to corral is Python: building the
arguments, turning the returned row into a ``Workload``, and the call itself: for the
async store, a hop to its writer thread and back.

Both sides do pending→running, a transition with one allowed source status (a
single conditional UPDATE). A target with several sources (``killed``) first reads
the current status, one ``SELECT`` by primary key more.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import uvloop

from bench.common import Metric, fresh_dir
from corral.ids import now_rfc3339
from corral.model import Status, WorkloadCreate
from corral.store.sqlite import (
    _INSERT_NEXT_EVENT,
    _UPDATE_STATUS,
    BUSY_TIMEOUT_MS,
    SQLiteStore,
)
from corral.store.sqlite_async import AsyncSQLiteStore

SPEC = WorkloadCreate.model_validate(
    {
        "name": "step",
        "command": ["python3", "step.py", "--shard", "7"],
        "env": {"RUN_MODE": "bench"},
        "labels": {"team": "ml", "app": "trainer"},
    }
)


def _filled_store(path: Path, n: int) -> tuple[SQLiteStore, list[str]]:
    store = SQLiteStore(path)
    ids = [store.create_workload(owner="alice", spec=SPEC, actor="bench")[0].id for _ in range(n)]
    return store, ids


BLOCK = 1_000


def _raw_conn(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def corral_block(store: SQLiteStore, ids: list[str]) -> float:
    """Seconds for pending→running of ``ids`` through the store."""
    start = time.perf_counter()
    for wid in ids:
        store.update_workload_status(wid, Status.RUNNING, actor="bench")
    return time.perf_counter() - start


def async_block(loop: asyncio.AbstractEventLoop, store: AsyncSQLiteStore, ids: list[str]) -> float:
    """Seconds for pending→running of ``ids`` through the async store, one at a time."""

    async def run() -> float:
        start = time.perf_counter()
        for wid in ids:
            await store.update_workload_status(wid, Status.RUNNING, actor="bench")
        return time.perf_counter() - start

    return loop.run_until_complete(run())


def raw_block(conn: sqlite3.Connection, ids: list[str]) -> float:
    """Seconds for the same transitions in plain ``sqlite3``."""
    start = time.perf_counter()
    for wid in ids:
        now = now_rfc3339()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            _UPDATE_STATUS, ("running", None, None, None, now, now, None, None, wid, "pending")
        ).fetchone()
        conn.execute(
            _INSERT_NEXT_EVENT, (wid, wid, "transition", "pending", "running", now, None, "bench")
        )
        conn.execute("COMMIT")
    return time.perf_counter() - start


def run(quick: bool, only: set[str]) -> dict[str, Metric]:
    n = 3_000 if quick else 30_000
    raw_store, raw_ids = _filled_store(fresh_dir("raw") / "corral.db", n)
    raw_store.close()
    conn = _raw_conn(raw_store.path)
    store, ids = _filled_store(fresh_dir("store") / "corral.db", n)
    sync_store, sync_ids = _filled_store(fresh_dir("sync") / "corral.db", n)
    store.close()
    async_store = AsyncSQLiteStore(store.path, migrate_schema=False)
    loop = uvloop.new_event_loop()
    raw_s = ours_s = sync_s = 0.0
    try:  # alternate blocks, so a noisy neighbour slows all alike
        for i in range(0, n, BLOCK):
            raw_s += raw_block(conn, raw_ids[i : i + BLOCK])
            ours_s += async_block(loop, async_store, ids[i : i + BLOCK])
            sync_s += corral_block(sync_store, sync_ids[i : i + BLOCK])
    finally:
        conn.close()
        loop.run_until_complete(async_store.close())
        loop.close()
        sync_store.close()
    ours, raw, sync = n / ours_s, n / raw_s, n / sync_s
    detail = {
        "transitions": n,
        "seconds": round(ours_s, 3),
        "raw_seconds": round(raw_s, 3),
        "us_per_transition": round(1e6 / ours, 1),
        "raw_us_per_transition": round(1e6 / raw, 1),
        "sync_ps": round(sync, 1),
        "sync_us_per_transition": round(1e6 / sync, 1),
    }
    return {"transition_ps": Metric(ours, "tx/s", raw, "raw_sqlite_ps", 0, detail)}
