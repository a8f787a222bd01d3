"""The scheduler's passes against today's (before walks stopped early), in process,
with a real SQLite store and a fake executor whose processes the test ends
(``tests/fake_executor.py``): random submits (shapes, owners, priorities, batches
with a limit, more than the machine has), exits and kills, the scheduler running its
passes as a server does. Before each pass, today's is computed from the scheduler's
own state (a walk over the whole queue after anything but submits, else over the
submits, resuming where today's last walk stopped); after it, the same workloads
started with the same GPUs, and every queued workload holds the reason today's
pass leaves it (the store too, at the end). Then a deep queue behind a full machine:
an exit's pass looks at a few workloads, not at the queue.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
from hypothesis import event, given, settings

from corral.admission import Decision, Pass, admit, rank
from corral.executors.base import Capacity
from corral.model import Resources, Status, WorkloadBatchItem, WorkloadCreate
from corral.scheduler import STALE_SKIPPED, Scheduler
from corral.store.base import NewWorkload
from corral.store.sqlite_async import AsyncSQLiteStore
from tests.conftest import add_key_async
from tests.fake_executor import FakeExecutor, FakeMachine

OWNERS = ["alice", "bob"]
SHAPES = [(1.0, 0, 0)] * 12 + [(2.0, 500, 0), (0.5, 0, 1), (0.0, 0, 0), (4.0, 0, 0)]
"""(4 CPUs: more than the machine has.)"""
CAPACITY = Capacity(cpus=3, memory_mb=2000, gpus=2)


class Checked(Scheduler):
    """The scheduler, each pass checked against today's (see the module docstring);
    a difference is kept in ``failures`` (a pass that raised would be retried)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.today: Pass | None = None
        self.failures: list[str] = []
        self.passes = 0
        self.early = 0
        """Passes from the front that walked less than the whole queue."""
        self.busy = False

    async def _schedule(self) -> None:
        if not self._leads():
            await super()._schedule()
            return
        self.busy = True
        try:
            await self._checked()
        finally:
            self.busy = False

    async def _checked(self) -> None:
        full = self._full or self._last_pass is None
        if full:
            todo = sorted(self._pending.values(), key=rank)
            resume = None
        else:
            todo = [w for w in self._queue[self._walked :] if self._pending.get(w.id) is w]
            resume = self.today
        today = admit(
            todo, self._free.copy(), dict(self._batch_running), unfit=self._unfit, resume=resume
        )
        self.today = today.resume
        stored = dict(self._reasons)
        before = set(self._pending)
        await super()._schedule()
        self.passes += 1
        if full and self.last_walked < len(before):
            self.early += 1
        got, expected = self.started(before), self.expected(today)
        if got != expected:
            self.failures.append(f"pass {self.passes}: started {got}, today {expected}")
        reasons = dict(today.reasons)
        # Only those pending when the pass began: one admitted while it ran (the
        # reconcile of a lease held again admits the unknown pending workloads with
        # their stored reasons, and runs beside the passes) is not this pass's.
        for wid in before & self._pending.keys():
            want = reasons.get(wid, stored.get(wid))
            if self._reasons.get(wid) != want:
                self.failures.append(
                    f"pass {self.passes} ({'full' if full else 'submits'}): {wid} told"
                    f" {self._reasons.get(wid)!r}, today {want!r}"
                )

    def started(self, before: set[str]) -> dict[str, list[int]]:
        """What the pass started (of ``before``, pending when it began), with GPUs."""
        return {wid: self._allocated[wid][1] for wid in before - set(self._pending)}

    def expected(self, today: Decision) -> dict[str, list[int]]:
        """What today's pass starts, with GPUs."""
        return {s.workload.id: s.gpus for s in today.start}


@asynccontextmanager
async def checked(data_dir: Path) -> AsyncIterator[tuple[AsyncSQLiteStore, Checked, FakeMachine]]:
    store = AsyncSQLiteStore(data_dir / "corral.db")
    for owner in OWNERS:  # a server running as root runs nothing as a user without one
        await add_key_async(store, owner, admin=True)
    machine = FakeMachine()
    scheduler = Checked(store, FakeExecutor(machine, data_dir, CAPACITY))
    await scheduler.start()
    try:
        yield store, scheduler, machine
    finally:
        await scheduler.stop()
        await store.close()


async def idle(scheduler: Checked) -> None:
    """Until the scheduler has nothing to do: no wake-up, pass, claim or record."""
    assert scheduler._wake is not None
    quiet = 0
    while quiet < 3:
        await asyncio.sleep(0.002)
        busy = (
            scheduler._wake.is_set()
            or scheduler.busy
            or scheduler._tasks
            or scheduler._claiming
            or scheduler._launches
        )
        quiet = 0 if busy else quiet + 1


@st.composite
def step(draw: st.DrawFn) -> tuple[Any, ...]:
    """A submit (most often), one as the route makes it (started at submit when
    nothing waits and it fits), an exit, both in one turn of the loop (the next pass
    walks from the front, and over the submit), or a kill; whether the scheduler is let
    be idle after it (else what comes next may come before the pass)."""
    kind = draw(st.sampled_from(["submit"] * 3 + ["route"] * 2 + ["exit"] * 2 + ["both", "kill"]))
    wait = draw(st.sampled_from([True, True, False]))
    if kind in ("exit", "kill"):
        return (kind, wait, draw(st.integers(0, 50)))
    return (
        kind,
        wait,
        draw(st.sampled_from(OWNERS)),
        draw(st.sampled_from([0, 0, 0, 1, 2])),
        draw(st.sampled_from(SHAPES)),
        draw(st.sampled_from([1] * 9 + [3])),  # how many (3: a batch, at most 2 running)
    )


ops = st.lists(step(), min_size=15, max_size=50)


async def route_submit(store: AsyncSQLiteStore, scheduler: Checked, step: tuple[Any, ...]) -> None:
    """One workload, submitted as ``POST /v1/workloads`` does (``start_at_submit``)."""
    _, _, owner, priority, (cpus, memory_mb, gpus), _ = step
    res = Resources(cpus=cpus, memory_mb=memory_mb, gpus=gpus)
    spec = WorkloadCreate(command=["true"], priority=priority, resources=res)
    start = await scheduler.start_at_submit(spec, owner)
    (made,) = await store.create_workloads([NewWorkload(spec, owner, start=start)])
    assert not isinstance(made, Exception)
    scheduler.submitted(made[0], start)


async def kill_pending(store: AsyncSQLiteStore, scheduler: Checked, n: int) -> None:
    """Kill the ``n``-th pending workload (modulo), not while a pass runs (it would
    take the kill for a start)."""
    await idle(scheduler)
    pending = sorted(scheduler._pending.values(), key=rank)
    if pending:
        victim = pending[n % len(pending)]
        killed = await store.update_workload_status(victim.id, Status.KILLED, actor="test")
        scheduler.stopped(killed)


async def play(data_dir: Path, steps: list[tuple[Any, ...]]) -> tuple[list[str], int]:
    async with checked(data_dir) as (store, scheduler, machine):
        for step in steps:
            if step[0] == "route":
                await route_submit(store, scheduler, step)
            elif step[0] in ("submit", "both"):
                _, _, owner, priority, (cpus, memory_mb, gpus), many = step
                spec: dict[str, Any] = {
                    "command": ["true"],
                    "priority": priority,
                    "resources": Resources(cpus=cpus, memory_mb=memory_mb, gpus=gpus),
                }
                if many == 1:
                    created, _ = await store.create_workload(WorkloadCreate(**spec), owner=owner)
                    batch = [created]
                else:
                    batch, _ = await store.create_batch(
                        [WorkloadBatchItem(**spec) for _ in range(many)], owner=owner, max_running=2
                    )
                running = sorted(machine.running())
                if step[0] == "both" and running:
                    machine.end(running[0], exit_code=0)  # reported before the pass
                for w in batch:
                    scheduler.submitted(w)
            elif step[0] == "exit":
                running = sorted(machine.running())
                if running:
                    machine.end(running[step[2] % len(running)], exit_code=0)
            else:
                await kill_pending(store, scheduler, step[2])
            if step[1]:
                await idle(scheduler)
        await idle(scheduler)
        page = await store.list_workloads(statuses=[Status.PENDING], limit=1000)
        failures = list(scheduler.failures)
        for w in page.items:
            if w.reason != scheduler._reasons.get(w.id):
                failures.append(
                    f"{w.id}: stored {w.reason!r}, held {scheduler._reasons.get(w.id)!r}"
                )
        event(f"passes stopped early: {min(scheduler.early, 3)}")
        return failures, scheduler.passes


@settings(max_examples=60, deadline=None)
@given(ops)
def test_passes_decide_and_explain_as_today(steps: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        failures, passes = asyncio.run(play(Path(tmp), steps))
    assert failures == []
    assert passes > 0


async def submit(
    store: AsyncSQLiteStore,
    scheduler: Checked,
    *,
    priority: int = 0,
    many: int = 1,
    limit: int | None = None,
) -> list[Any]:
    """``many`` new workloads of 1 CPU (a batch with ``limit``), submitted as the API does."""
    spec = {"command": ["true"], "priority": priority}
    if limit is None:
        created = await store.create_workloads(
            [NewWorkload(WorkloadCreate(**spec), "alice") for _ in range(many)]
        )
        batch = [c[0] for c in created if not isinstance(c, Exception)]
    else:
        items = [WorkloadBatchItem(**spec) for _ in range(many)]
        batch, _ = await store.create_batch(items, owner="alice", max_running=limit)
    for w in batch:
        scheduler.submitted(w)
    await idle(scheduler)
    return batch


async def end(scheduler: Checked, machine: FakeMachine, workload_id: str) -> None:
    machine.end(workload_id, exit_code=0)
    await idle(scheduler)


def test_a_batch_member_deep_in_the_queue_is_told_again_when_its_batch_frees_a_place(
    tmp_path: Path,
) -> None:
    """Its reason depends on its batch, not on its shape: while it is queued, passes
    walk everything. A batch of three (two at a time) behind a full machine: two start,
    the third is told its batch is full; two workloads of a higher priority go ahead
    of it; one of its batch ends: the first of them starts, and the batch member, now
    behind the second, waits for a CPU like everyone."""

    async def scenario() -> tuple[list[str], str | None]:
        async with checked(tmp_path) as (store, scheduler, machine):
            fill = await submit(store, scheduler, many=3)
            a, b, c = await submit(store, scheduler, many=3, limit=2)
            await end(scheduler, machine, fill[0].id)
            await end(scheduler, machine, fill[1].id)
            assert machine.running() == {fill[2].id, a.id, b.id}
            assert scheduler._reasons[c.id] == "waiting: 2 of its batch already running (limit 2)"
            await submit(store, scheduler, priority=1, many=2)
            await end(scheduler, machine, a.id)
            return scheduler.failures, scheduler._reasons.get(c.id)

    failures, reason = asyncio.run(scenario())
    assert failures == []
    assert reason == "waiting for 1 CPU, 0 free"


def test_an_exit_with_a_deep_queue_walks_a_few_workloads(tmp_path: Path) -> None:
    """3,000 queued behind a machine of 3 CPUs, each asking for one: an exit's pass
    starts the next in line, makes the one after it the head of the line, and looks at
    nothing else; every reason is still the one a walk over everything gives."""

    async def scenario() -> tuple[list[str], list[int], dict[str | None, int]]:
        async with checked(tmp_path) as (store, scheduler, machine):
            queued = await submit(store, scheduler, many=3000)
            walked = []
            for workload in queued[:20]:
                await end(scheduler, machine, workload.id)
                walked.append(scheduler.last_walked)
            page = await store.list_workloads(statuses=[Status.PENDING], limit=1000)
            told: dict[str | None, int] = {}
            for w in page.items:
                told[w.reason] = told.get(w.reason, 0) + 1
            return scheduler.failures, walked, told

    failures, walked, told = asyncio.run(scenario())
    assert failures == []
    assert walked == [2] * 20
    assert told == {"waiting for 1 CPU, 0 free": 1000}


def test_workloads_that_start_behind_a_waiting_head_are_not_skipped_by_every_pass(
    tmp_path: Path,
) -> None:
    """The head of the line waits for the GPU (a workload holds it) and reserves no
    CPU, so each exit starts the next workload behind it. Each such start leaves a
    stale entry between the head and where the walks stop; were they kept until stale
    entries outnumber the pending, every exit's pass would skip all of them (O(exits)
    a pass: 0.13 ms at first, 0.62 ms after 3,000 exits, ~8 ms at 100,000 pending).
    The entries a walk skipped are dropped once they are many."""

    async def scenario() -> tuple[list[str], list[int], int]:
        async with checked(tmp_path) as (store, scheduler, machine):
            gpu = {"command": ["true"], "resources": Resources(cpus=0, gpus=2)}
            holder, _ = await store.create_workload(WorkloadCreate(**gpu), owner="alice")
            scheduler.submitted(holder)
            await idle(scheduler)
            head, _ = await store.create_workload(WorkloadCreate(**gpu), owner="alice")
            scheduler.submitted(head)
            await submit(store, scheduler, many=2000)
            stale = []
            for _ in range(400):
                cpu = min(w for w in machine.running() if w != holder.id)
                await end(scheduler, machine, cpu)
                stale.append(len(scheduler._queue) - len(scheduler._pending))
            return scheduler.failures, stale, len(scheduler._pending)

    failures, stale, pending = asyncio.run(scenario())
    assert failures == []
    assert pending == 2001 - 3 - 400
    assert max(stale) <= STALE_SKIPPED + 3


def test_reasons_another_leader_stored_meanwhile_are_told_again(tmp_path: Path) -> None:
    """The lease lost, another server schedules and stores its own reasons (another
    machine: "waiting for 1 CPU, 0 free" where this one said "waiting behind" the
    head); the lease held again, the pass walks everything: what it tells must be
    stored, even where it is what this server stored before."""

    async def scenario() -> tuple[dict[str, str | None], dict[str, str | None]]:
        async with checked(tmp_path) as (store, scheduler, machine):
            fill = await submit(store, scheduler, many=3)
            big = {"command": ["true"], "resources": Resources(cpus=2)}
            head, _ = await store.create_workload(WorkloadCreate(**big), owner="alice")
            scheduler.submitted(head)
            behind = await submit(store, scheduler, many=3)
            await end(scheduler, machine, fill[0].id)  # 1 CPU free: behind the head
            await scheduler.pause()
            other = [(w.id, "waiting for 1 CPU, 0 free") for w in behind]
            await store.set_pending_reasons(other)  # the other leader's
            await scheduler.resume()
            await idle(scheduler)
            page = await store.list_workloads(statuses=[Status.PENDING], limit=100)
            stored = {w.id: w.reason for w in page.items}
            return stored, {wid: scheduler._reasons.get(wid) for wid in stored}

    stored, held = asyncio.run(scenario())
    assert stored == held
    assert set(stored.values()) == {
        "waiting for 2 CPUs, 1 free",
        f"waiting behind {min(stored)} (priority 0), which needs more",
    }
