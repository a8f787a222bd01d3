"""``Scheduler.wake(None)`` (PostgreSQL: every pending id read again): a call made
while one is under way joins it (it returns at once, and the one under way reads
again), and is not lost when the read under way fails: one more is started. (The
safety poll would find the workload later: up to ``SAFETY_POLL_SECONDS``.)"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from corral.executors.base import Capacity
from corral.model import Resources, WorkloadCreate
from corral.scheduler import Scheduler
from corral.store.sqlite_async import AsyncSQLiteStore
from tests.conftest import add_key_async
from tests.fake_executor import FakeExecutor, FakeMachine

ONE_CPU = Resources(cpus=1, memory_mb=0, gpus=0)


async def scenario(tmp: Path) -> tuple[bool, Any]:
    store = AsyncSQLiteStore(tmp / "corral.db")
    await add_key_async(store, "alice", admin=True)
    s = Scheduler(
        store,
        FakeExecutor(FakeMachine(), tmp, Capacity(cpus=0, memory_mb=0, gpus=0)),
        poll_seconds=3600,
    )
    await s.start()
    real = store.pending_ids
    reading, fail = asyncio.Event(), asyncio.Event()
    calls = 0

    async def pending_ids(**kwargs: Any) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first read: held, then fails
            reading.set()
            await fail.wait()
            raise OSError("connection reset")
        return await real(**kwargs)

    store.pending_ids = pending_ids  # type: ignore[method-assign]
    try:
        first = asyncio.create_task(s.wake(None))
        await reading.wait()
        # another server creates a workload and notifies (too many ids: None)
        w, _ = await store.create_workload(
            WorkloadCreate(command=["true"], resources=ONE_CPU), owner="alice"
        )
        await s.wake(None)  # merged: returns at once
        fail.set()
        with contextlib.suppress(OSError):
            await first
        await asyncio.sleep(0.05)
        return w.id in s._pending, s._waking_all
    finally:
        store.pending_ids = real  # type: ignore[method-assign]
        await s.stop()
        await store.close()


def test_a_wake_merged_into_a_failed_one_is_not_lost(tmp_path: Path) -> None:
    admitted, flag = asyncio.run(scenario(tmp_path))
    assert flag is None
    assert admitted
