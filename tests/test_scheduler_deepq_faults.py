"""The scheduler's passes against today's (``tests/test_scheduler_deepq.py``'s
``Checked``), through what that test leaves out: dependencies (a dependant unblocked
once its dependency completes joins the queue in the middle: its id is older than
those submitted since; one whose dependency failed is killed), submits through
another server (the safety poll finds them), a claim refused (the workload killed
while its claim is under way), the store refusing a claim or the pending reasons
(the pass is retried), the safety poll, and the lease lost (another leader stores
reasons of its own) and held again. Every pass decides as today's would, and once
idle every pending workload's stored reason is the one the scheduler holds.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest.mock import patch

import hypothesis.strategies as st
from hypothesis import event, given, settings

from corral import scheduler as scheduler_module
from corral.admission import Decision, rank
from corral.model import Resources, Status, Workload, WorkloadCreate
from corral.store.cluster import Fence
from corral.store.errors import StoreBusyError
from corral.store.sqlite_async import AsyncSQLiteStore
from tests.conftest import add_key_async
from tests.fake_executor import FakeExecutor, FakeMachine
from tests.test_scheduler_deepq import CAPACITY, OWNERS, SHAPES
from tests.test_scheduler_deepq import Checked as DeepChecked


class Checked(DeepChecked):
    """As ``test_scheduler_deepq.Checked``; a pass runs under ``lock`` (the test runs
    the safety poll under it too, as the loop runs one or the other), and what a
    claim refused never started is left out of what today's pass starts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = asyncio.Lock()
        self.refused: set[str] = set()
        """Killed while their claim was under way."""
        self.inserted = 0

    def _enqueue(self, workload: Workload) -> None:
        queue = self._queue
        if queue and self._sorted and self._settled and rank(workload) < rank(queue[-1]):
            self.inserted += 1  # put in its place, among those walked
        super()._enqueue(workload)

    async def _schedule(self) -> None:
        async with self.lock:  # (one that raises is retried: nothing to compare)
            await super()._schedule()

    def started(self, before: set[str]) -> dict[str, list[int]]:
        return {wid: self._allocated[wid][1] for wid in before if wid in self._allocated}

    def expected(self, today: Decision) -> dict[str, list[int]]:
        return {s.workload.id: s.gpus for s in today.start if s.workload.id not in self.refused}


class Faults:
    """What the store is to refuse next, and the claim to undercut with a kill."""

    def __init__(self, store: AsyncSQLiteStore, scheduler: Checked) -> None:
        self.reasons = 0
        self.claims = 0
        self.kill_in_claim = False
        claim, set_reasons = store.claim_workloads, store.set_pending_reasons
        self.set_reasons = set_reasons
        """The store's own (another leader's writes)."""

        async def claim_workloads(
            ids: Sequence[str], *, node: str, fence: Fence | None = None
        ) -> list[Workload]:
            if self.claims and ids:
                self.claims -= 1
                raise StoreBusyError("a test")
            if self.kill_in_claim and ids:  # killed by another server meanwhile
                self.kill_in_claim = False
                killed = await store.update_workload_status(ids[0], Status.KILLED, actor="t")
                scheduler.refused.add(ids[0])
                scheduler.stopped(killed)
            return await claim(ids, node=node, fence=fence)

        async def set_pending_reasons(reasons: Sequence[tuple[str, str]]) -> None:
            if self.reasons and reasons:
                self.reasons -= 1
                raise StoreBusyError("a test")
            await set_reasons(reasons)

        store.claim_workloads = claim_workloads  # type: ignore[method-assign]
        store.set_pending_reasons = set_pending_reasons  # type: ignore[method-assign]


async def idle(scheduler: Checked) -> None:
    """Until the scheduler has nothing to do (a pass failed: its retry too)."""
    assert scheduler._wake is not None
    quiet = 0
    while quiet < 3:
        await asyncio.sleep(0.002)
        if scheduler._retry is not None:  # run the retry now
            scheduler._retry.cancel()
            scheduler._retry_now()
        busy = (
            scheduler._wake.is_set()
            or scheduler.busy
            or scheduler._tasks
            or scheduler._claiming
            or scheduler._launches
            or scheduler._retry is not None
        )
        quiet = 0 if busy else quiet + 1


@st.composite
def step(draw: st.DrawFn) -> tuple[Any, ...]:
    kinds = ["submit"] * 5 + ["exit"] * 4 + ["dep"] * 2 + ["elsewhere"]
    kind = draw(st.sampled_from([*kinds, "kill", "refuse", "fail", "poll", "lease"]))
    wait = draw(st.sampled_from([True, True, False]))
    if kind in ("submit", "dep", "elsewhere"):
        return (
            kind,
            wait,
            draw(st.sampled_from(OWNERS)),
            draw(st.sampled_from([0, 0, 0, 1, 2])),
            draw(st.sampled_from(SHAPES)),
            draw(st.integers(0, 50)),
        )
    if kind == "fail":
        return (kind, wait, draw(st.sampled_from(["reasons", "claims"])))
    return (kind, wait, draw(st.integers(0, 50)))


class Player:
    """Plays the steps on one scheduler (SQLite store, fake executor)."""

    def __init__(self, store: AsyncSQLiteStore, scheduler: Checked, machine: FakeMachine) -> None:
        self.store, self.scheduler, self.machine = store, scheduler, machine
        self.faults = Faults(store, scheduler)
        self.made: dict[str, list[str]] = {owner: [] for owner in OWNERS}
        """Each owner's workloads, for dependencies (only one's own may be named)."""
        self.paused = False

    async def submit(self, owner: str, spec: dict[str, Any], *, told: bool = True) -> None:
        """``told``: the API tells the scheduler (else another server took it: the
        safety poll finds it)."""
        created, _ = await self.store.create_workload(WorkloadCreate(**spec), owner=owner)
        self.made[owner].append(created.id)
        if told:
            self.scheduler.submitted(created)

    async def play(self, step: tuple[Any, ...]) -> None:
        kind, scheduler, faults = step[0], self.scheduler, self.faults
        if kind in ("submit", "dep", "elsewhere"):
            _, _, owner, priority, (cpus, memory_mb, gpus), k = step
            spec: dict[str, Any] = {
                "command": ["true"],
                "priority": priority,
                "resources": Resources(cpus=cpus, memory_mb=memory_mb, gpus=gpus),
            }
            mine = self.made[owner]
            if kind == "dep" and mine:
                spec["depends_on"] = [mine[k % len(mine)]]
            await self.submit(owner, spec, told=kind != "elsewhere")
        elif kind == "exit":
            running = sorted(self.machine.running())
            if running:
                code = 1 if step[2] % 4 == 0 else 0  # (its afterok dependants are killed)
                self.machine.end(running[step[2] % len(running)], exit_code=code)
        elif kind == "kill":
            await self.kill(step[2])
        elif kind == "refuse":
            faults.kill_in_claim = True
        elif kind == "fail" and step[2] == "reasons":
            faults.reasons += 1
        elif kind == "fail":
            faults.claims += 1
        elif kind == "poll":  # as the loop runs it: not while a pass runs
            await idle(scheduler)
            async with scheduler.lock:
                await scheduler._guard(scheduler._reconcile)
            scheduler._poke()
        elif kind == "lease":
            await self.lease()
        if step[1]:
            await idle(scheduler)

    async def lease(self) -> None:
        """Lost (another leader tells every pending workload its own reason), or held
        again."""
        await idle(self.scheduler)
        await (self.scheduler.resume() if self.paused else self.scheduler.pause())
        self.paused = not self.paused
        if self.paused:
            page = await self.store.list_workloads(statuses=[Status.PENDING], limit=1000)
            await self.faults.set_reasons([(w.id, "another leader's") for w in page.items])

    async def kill(self, k: int) -> None:
        await idle(self.scheduler)  # (not while a pass runs: it would take it for a start)
        pending = sorted(self.scheduler._pending.values(), key=rank)
        if pending:
            victim = pending[k % len(pending)]
            killed = await self.store.update_workload_status(victim.id, Status.KILLED, actor="t")
            self.scheduler.stopped(killed)

    async def check(self) -> list[str]:
        """Once no fault is left and the scheduler idle: what differed."""
        if self.paused:
            await self.scheduler.resume()
        self.faults.kill_in_claim, self.faults.reasons, self.faults.claims = False, 0, 0
        await idle(self.scheduler)
        held = self.scheduler._reasons
        failures = list(self.scheduler.failures)
        page = await self.store.list_workloads(statuses=[Status.PENDING], limit=1000)
        for w in page.items:
            if w.reason != held.get(w.id):
                failures.append(f"{w.id}: stored {w.reason!r}, held {held.get(w.id)!r}")
        failures += queue_head_differences(self.scheduler)
        early, inserted = self.scheduler.early, self.scheduler.inserted
        event(f"passes stopped early: {min(early, 3)}, put in place: {min(inserted, 2)}")
        return failures


def queue_head_differences(scheduler: Checked) -> list[str]:
    """``queue_head`` (bounded reads from the front of the queues) against a ranking
    of everything queued, for everyone and for each owner, with walks of the sorted
    queue long enough and too short (then each owner's queue is read)."""
    failures = []
    waiting = [*(p.workload for p in scheduler._placing.values()), *scheduler._pending.values()]
    for owner in [None, *OWNERS]:
        mine = [w for w in waiting if owner is None or w.owner == owner]
        expected = [w.id for w in sorted(mine, key=rank)[:4]], len(mine)
        for walk in (1, 3, scheduler_module.QUEUE_WALK):
            head, length = scheduler.queue_head(4, owner=owner, walk=walk)
            if ([w.id for w, _ in head], length) != expected:
                failures.append(f"queue_head({owner}, walk={walk}): {head}, {length} != {expected}")
    return failures


async def play(data_dir: Path, deep: int, steps: list[tuple[Any, ...]]) -> list[str]:
    store = AsyncSQLiteStore(data_dir / "corral.db")
    for owner in OWNERS:
        await add_key_async(store, owner, admin=True)
    machine = FakeMachine()
    scheduler = Checked(store, FakeExecutor(machine, data_dir, CAPACITY), poll_seconds=3600)
    player = Player(store, scheduler, machine)
    await scheduler.start()
    try:
        for n in range(deep):  # a queue deeper than the machine to begin with
            await player.submit(OWNERS[n % 2], {"command": ["true"]})
        await idle(scheduler)
        failures = []
        for step in steps:
            await player.play(step)
            failures += queue_head_differences(scheduler)  # (between passes too)
        return failures + await player.check()
    finally:
        await scheduler.stop()
        await store.close()


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 12), st.lists(step(), min_size=20, max_size=60))
def test_passes_decide_and_explain_as_today_through_faults(
    deep: int, steps: list[tuple[Any, ...]]
) -> None:
    """(Stale entries skipped are dropped at once: ``STALE_SKIPPED`` 0, and an owner's
    queue is compacted once a read skips two.)"""
    with (
        tempfile.TemporaryDirectory() as tmp,
        patch.object(scheduler_module, "STALE_SKIPPED", 0),
        patch.object(scheduler_module, "STALE_SKIPPED_OWNER", 1),
        patch.object(scheduler_module, "OWNER_SLACK", 1),
        patch.object(scheduler_module, "ID_PAGE", 3),  # the safety poll reads several pages
    ):
        failures = asyncio.run(play(Path(tmp), deep, steps))
    assert failures == []
