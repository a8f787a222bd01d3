"""``GET /v1/status``'s queue head (``Scheduler.queue_head``), read from the front of
the queues without ranking every pending workload, against such a ranking."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from unittest.mock import patch

from corral import scheduler as scheduler_module
from corral.admission import rank
from corral.executors.base import Capacity
from corral.model import Resources, WorkloadCreate
from corral.scheduler import Scheduler
from corral.store.sqlite_async import AsyncSQLiteStore
from tests.conftest import add_key_async
from tests.fake_executor import FakeExecutor, FakeMachine

ONE_CPU = Resources(cpus=1, memory_mb=0, gpus=0)


def ranked(s: Scheduler, limit: int, owner: str | None) -> tuple[list[str], int]:
    """What ``queue_head`` answered before it was bounded: everything queued, ranked."""
    waiting = [*(p.workload for p in s._placing.values()), *s._pending.values()]
    queued = [w for w in waiting if owner is None or w.owner == owner]
    return [w.id for w in sorted(queued, key=rank)[:limit]], len(queued)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0.005)


async def heads(tmp: Path) -> list[tuple[Any, Any]]:
    """Bob's queued workloads (one a dependant whose dependency completed) behind
    alice's, carol with none; each owner's head and everyone's (with a walk of the
    sorted queue too short to reach them: then each owner's queue is read), as
    ``queue`` answers and as a ranking of everything would."""
    store = AsyncSQLiteStore(tmp / "corral.db")
    for owner in ("alice", "bob"):
        await add_key_async(store, owner, admin=True)
    machine = FakeMachine()
    capacity = Capacity(cpus=1, memory_mb=2000, gpus=0)
    s = Scheduler(store, FakeExecutor(machine, tmp, capacity), poll_seconds=3600)
    await s.start()
    try:

        async def submit(owner: str, **spec: Any) -> str:
            w, _ = await store.create_workload(
                WorkloadCreate(command=["true"], resources=ONE_CPU, **spec), owner=owner
            )
            s.submitted(w)
            return w.id

        first = await submit("bob")  # runs: the machine has one CPU
        await settle()
        for priority in (0, 0, 3, 0, 0):
            await submit("alice", priority=priority)
        await submit("bob", depends_on=[first])
        await submit("bob")
        await settle()
        machine.end(first, exit_code=0)  # bob's dependant joins the queue
        await settle()
        assert len(s._pending) == 6
        pairs = []
        for owner in ("bob", "alice", "carol", None):
            head, length = await s.queue(10, owner=owner)
            pairs.append((([w.id for w, _ in head], length), ranked(s, 10, owner)))
        head, length = s.queue_head(3, walk=1)
        pairs.append((([w.id for w, _ in head], length), ranked(s, 3, None)))
        return pairs
    finally:
        await s.stop()
        await store.close()


def test_the_queue_head_is_the_ranking_of_everything_queued(tmp_path: Path) -> None:
    pairs = asyncio.run(heads(tmp_path))
    assert [now for now, _ in pairs] == [expected for _, expected in pairs]
    assert pairs[0][1][1] == 2 and pairs[2][1] == ([], 0)  # bob's two; carol has none


def test_an_owners_queue_never_read_stays_as_long_as_what_it_holds(tmp_path: Path) -> None:
    """A stream of workloads through a machine of one CPU, three always queued and
    never read: the entries of those started are dropped as new ones are queued."""

    async def scenario() -> list[tuple[int, int]]:
        store = AsyncSQLiteStore(tmp_path / "corral.db")
        await add_key_async(store, "alice", admin=True)
        machine = FakeMachine()
        capacity = Capacity(cpus=1, memory_mb=2000, gpus=0)
        s = Scheduler(store, FakeExecutor(machine, tmp_path, capacity), poll_seconds=3600)
        await s.start()
        sizes = []

        async def submit() -> None:
            w, _ = await store.create_workload(
                WorkloadCreate(command=["true"], resources=ONE_CPU), owner="alice"
            )
            s.submitted(w)

        try:
            for _ in range(4):
                await submit()
            for _ in range(40):
                await submit()
                await settle()
                machine.end(sorted(machine.running())[0], exit_code=0)
                await settle()
                sizes.append((len(s._by_owner["alice"]), s._owners["alice"]))
        finally:
            await s.stop()
            await store.close()
        return sizes

    with patch.object(scheduler_module, "OWNER_SLACK", 2):
        sizes = asyncio.run(scenario())
    assert {queued for _, queued in sizes} == {3}  # 40 started through a queue of 3
    # Compacted on a submit when over twice the four queued then (before a start) + 2:
    assert max(entries for entries, _ in sizes) == 2 * 4 + 2, str(sizes)


def test_a_workload_queued_again_and_again_is_held_once(tmp_path: Path) -> None:
    """Claims refused (the database failing) 200 times: each retry queues the same two
    workloads again (a second live entry of each, in their owner's queue), and the
    owner's queue still holds about what is pending."""

    async def scenario() -> tuple[int, int, int]:
        store = AsyncSQLiteStore(tmp_path / "corral.db")
        await add_key_async(store, "alice", admin=True)
        capacity = Capacity(cpus=1, memory_mb=2000, gpus=0)
        s = Scheduler(store, FakeExecutor(FakeMachine(), tmp_path, capacity), poll_seconds=3600)
        refused = 0

        async def claim(*args: Any, **kwargs: Any) -> Any:
            nonlocal refused
            refused += 1
            raise OSError("database unavailable")

        real = store.claim_workloads
        await s.start()
        try:
            store.claim_workloads = claim  # type: ignore[method-assign]
            for _ in range(2):
                w, _ = await store.create_workload(
                    WorkloadCreate(command=["true"], resources=ONE_CPU), owner="alice"
                )
                s.submitted(w)
            while refused < 200:
                await asyncio.sleep(0.005)
            while s._owners.get("alice") != 2:
                await asyncio.sleep(0)  # between a refusal's requeue and the next claim
            return refused, s._owners["alice"], len(s._by_owner["alice"])
        finally:
            store.claim_workloads = real  # type: ignore[method-assign]
            await s.stop()
            await store.close()

    with patch.object(scheduler_module, "RETRY_SECONDS", 0.001):
        refused, queued, entries = asyncio.run(scenario())
    assert queued == 2 and entries <= 2 * 2 + scheduler_module.OWNER_SLACK + 1, (refused, entries)
