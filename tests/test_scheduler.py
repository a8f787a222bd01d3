"""The scheduler with a real store and a real local executor, in process, where a
test must control what happens within one turn of the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from corral.executors.base import Capacity
from corral.executors.local import LocalExecutor, kill_all
from corral.model import Resources, Status, WorkloadCreate
from corral.scheduler import Scheduler
from corral.store.sqlite import SQLiteStore
from tests.conftest import event_inserts_fail
from tests.server import pid_gone


@asynccontextmanager
async def started(tmp_path: Path, cpus: float) -> AsyncIterator[tuple[SQLiteStore, Scheduler]]:
    """A started scheduler over a real store and local executor in ``tmp_path``; on
    the way out it is stopped and every workload process it left is killed."""
    store = SQLiteStore(tmp_path / "corral.db")
    capacity = Capacity(cpus=cpus, memory_mb=1000, gpus=0)
    scheduler = Scheduler(store, LocalExecutor(tmp_path, capacity=capacity, kill_grace_seconds=1))
    await scheduler.start()
    try:
        yield store, scheduler
    finally:
        await scheduler.stop()
        store.close()
        kill_all(tmp_path / "run")


def test_a_kill_in_the_same_loop_turn_as_the_claim_is_not_lost(tmp_path: Path) -> None:
    """The claim commits ``running`` and the spawn is under way on a thread; a kill
    handled before the launch task first runs must still stop the process."""

    async def scenario() -> tuple[Status, list[int]]:
        async with started(tmp_path, cpus=4) as (store, scheduler):
            assert scheduler.executor is not None
            executor = scheduler.executor
            workload, _ = store.create_workload(
                owner="alice", spec=WorkloadCreate(command=["sleep", "30"])
            )
            scheduler.submitted(workload)
            scheduler._schedule()  # claims it and starts the spawn
            killed = store.update_workload_status(workload.id, Status.KILLED, actor="test")
            scheduler.stopped(killed)  # the same turn: the launch task has not run yet
            pidfile = tmp_path / "run" / f"{workload.id}.pid"
            for _ in range(100):  # wait for the workload's pid (up to 5 s)
                if pidfile.exists() and pidfile.read_text().strip():
                    break
                await asyncio.sleep(0.05)
            pids = [int(pidfile.read_text())] if pidfile.exists() else []
            for _ in range(60):  # gone within the grace period (1 s) and a margin
                if all(pid_gone(p) for p in pids) and not executor.active():
                    break
                await asyncio.sleep(0.05)
            return store.get_workload(workload.id).status, [p for p in pids if not pid_gone(p)]

    status, alive = asyncio.run(scenario())
    assert status is Status.KILLED
    assert alive == [], "the killed workload's process kept running"


def test_passes_after_submits_match_a_pass_over_everything(tmp_path: Path) -> None:
    """A pass that follows only submits walks just the new tail of the queue; each
    decision must still be the one a pass over the whole queue makes. Of three CPUs
    one is taken; the head needs all three and reserves them, so a 1-CPU workload of
    its priority waits behind it; one of a higher priority (submitted out of order:
    it goes ahead of the head) starts at once; killing the head lets the one behind
    it start."""
    seen: dict[str, tuple[Status, str | None]] = {}
    ids: dict[str, str] = {}

    async def scenario() -> None:
        async with started(tmp_path, cpus=3) as (store, scheduler):
            await steps(store, scheduler)

    async def steps(store: SQLiteStore, scheduler: Scheduler) -> None:
        def submit(name: str, cpus: float, priority: int = 0) -> None:
            spec = WorkloadCreate(
                command=["sleep", "30"], resources=Resources(cpus=cpus), priority=priority
            )
            workload, _ = store.create_workload(owner="alice", spec=spec)
            ids[name] = workload.id
            scheduler.submitted(workload)
            scheduler._schedule()

        def look(name: str) -> None:
            w = store.get_workload(ids[name])
            seen[name] = (w.status, w.reason)

        submit("hold", 1)
        submit("head", 3)
        submit("behind", 1)
        look("behind")
        submit("urgent", 1, priority=5)
        look("urgent")
        look("head")
        killed = store.update_workload_status(ids["head"], Status.KILLED, actor="test")
        scheduler.stopped(killed)
        scheduler._schedule()
        ids["behind, once the head is gone"] = ids["behind"]
        look("behind, once the head is gone")

    asyncio.run(scenario())
    assert seen == {
        "behind": (Status.PENDING, f"waiting behind {ids['head']} (priority 0), which needs more"),
        "urgent": (Status.RUNNING, None),
        "head": (Status.PENDING, "waiting for 3 CPUs, 1 free"),
        "behind, once the head is gone": (Status.RUNNING, None),
    }


def test_a_pass_the_database_fails_is_walked_again(tmp_path: Path) -> None:
    """The claim of ``older`` fails in the database (its event row is refused): it
    stays pending and queued, and the next pass, after a newer submit, walks it
    again, so it starts before the newer one instead of being skipped."""
    statuses: dict[str, Status] = {}

    async def scenario() -> None:
        spec = WorkloadCreate(command=["sleep", "30"], resources=Resources(cpus=1))
        async with started(tmp_path, cpus=1) as (store, scheduler):
            older, _ = store.create_workload(owner="alice", spec=spec)
            newer, _ = store.create_workload(owner="alice", spec=spec)
            with event_inserts_fail(store):
                scheduler.submitted(older)
                scheduler._guard(scheduler._schedule)  # logs the failure, as _run does
            statuses["older, claim refused"] = store.get_workload(older.id).status
            scheduler.submitted(newer)
            scheduler._schedule()
            statuses["older"] = store.get_workload(older.id).status
            statuses["newer"] = store.get_workload(newer.id).status

    asyncio.run(scenario())
    assert statuses == {
        "older, claim refused": Status.PENDING,
        "older": Status.RUNNING,
        "newer": Status.PENDING,
    }
