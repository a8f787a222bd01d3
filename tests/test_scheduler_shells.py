"""The scheduler's shells around the admission core, each through a fake executor
(``tests/fake_executor.py``: processes the test ends) with a real store, on each
database: timeouts, reconciliation (at start and by the safety poll), memory
admission, and a claim refused because the workload was killed after the decision.

The tests use only the scheduler's public surface (``start``, ``stop``,
``submitted``, ``free``, ``is_active``, ``is_stopping``) and reach the store through
``World``, whose methods are coroutines already: a store that becomes async changes
their bodies, not the tests."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from corral import scheduler as scheduler_module
from corral.executors.base import Capacity, Executor
from corral.model import Resources, Status, Workload, WorkloadCreate
from corral.scheduler import Scheduler
from corral.store import Store
from tests.blocking import BlockingStore
from tests.conftest import add_key_async
from tests.fake_executor import FakeExecutor, FakeMachine

OWNER = "alice"


class World:
    """The store, as these tests use it, and the machine the fake processes run on."""

    def __init__(self, store: BlockingStore, data_dir: Path) -> None:
        self.store: Store = store.inner
        self.run = store.run
        """Run a scenario on the loop the store serves (a PostgreSQL pool stays on
        the loop it was opened on)."""
        self.data_dir = data_dir
        self.machine = FakeMachine()

    async def create(
        self, *, cpus: float = 1, memory_mb: int = 0, timeout: float | None = None
    ) -> Workload:
        """A new pending workload (the scheduler is not told: see ``submit``)."""
        spec = WorkloadCreate(
            command=["true"],
            resources=Resources(cpus=cpus, memory_mb=memory_mb),
            timeout_seconds=timeout,
        )
        workload, _ = await self.store.create_workload(spec, owner=OWNER)
        return workload

    async def submit(self, scheduler: Scheduler, **spec: float) -> Workload:
        """A new pending workload, submitted as the API does."""
        workload = await self.create(**spec)  # type: ignore[arg-type]
        scheduler.submitted(workload)
        return workload

    async def get(self, workload: Workload) -> Workload:
        return await self.store.get_workload(workload.id)

    async def statuses(self, workload: Workload) -> list[Status]:
        """Its statuses, from its events, oldest first."""
        return [e.to_status for e in await self.store.list_events(workload.id) if e.to_status]

    async def set_status(self, workload: Workload, status: Status) -> Workload:
        """A status written by another process (a kill through another server, a claim
        by a server that then stopped): the scheduler is not told."""
        return await self.store.update_workload_status(workload.id, status, actor="test")

    async def becomes(self, workload: Workload, status: Status, timeout: float = 10.0) -> Workload:
        async def check() -> Workload | None:
            now = await self.get(workload)
            return now if now.status is status else None

        done: Workload = await until(check, timeout)
        return done


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Wait on the loop until ``check()`` (awaited when it is a coroutine) is true;
    return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        value = await result if isinstance(result, Awaitable) else result
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


@pytest.fixture
def world(store: BlockingStore, tmp_path: Path) -> World:
    # A server running as root (as the tests may) runs nothing as itself for a user
    # without an admin key.
    store.run(add_key_async(store.inner, OWNER, admin=True))
    return World(store, tmp_path)


@asynccontextmanager
async def serving(world: World, cpus: float = 4, memory_mb: int = 1000) -> AsyncIterator[Scheduler]:
    """A started scheduler over the world's store and a fake executor on its machine
    (a server's life: the processes outlive it)."""
    capacity = Capacity(cpus=cpus, memory_mb=memory_mb, gpus=0)
    executor: Executor = FakeExecutor(world.machine, world.data_dir, capacity)
    scheduler = Scheduler(world.store, executor)
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.stop()


def launched(world: World, workload: Workload) -> bool:
    return workload.id in world.machine.processes


# --- timeouts ----------------------------------------------------------------------------


def test_a_workload_over_its_time_limit_is_stopped_then_ends_failed_timed_out(
    world: World,
) -> None:
    """At its limit the workload's process is sent SIGTERM. One that obeys ends
    failed, "timed out after N s", with neither an exit code nor a signal (the
    signal was corral's). One that ignores SIGTERM stays running, ``stopping``, its
    CPU taken, until its process is gone (the test ends it as the SIGKILL after the
    grace period would), then ends the same way."""
    seen: dict[str, object] = {}

    async def scenario() -> None:
        async with serving(world) as scheduler:
            obeys = await world.submit(scheduler, timeout=0.2)
            stubborn = await world.create(timeout=0.3)
            world.machine.stubborn.add(stubborn.id)
            scheduler.submitted(stubborn)

            done = await world.becomes(obeys, Status.FAILED)
            seen["obeys"] = (done.reason, done.exit_code, done.signal)
            await until(lambda: launched(world, stubborn))
            process = world.machine.processes[stubborn.id]
            await until(lambda: process.signals)
            now = await world.get(stubborn)
            seen["at the limit"] = (now.status, scheduler.is_stopping(now), process.signals)
            seen["its CPU while it stops"] = scheduler.free().cpus
            world.machine.end(stubborn.id, signal=signal.SIGKILL)
            done = await world.becomes(stubborn, Status.FAILED)
            seen["stubborn"] = (done.reason, done.exit_code, done.signal)
            seen["its CPU once it is gone"] = scheduler.free().cpus

    world.run(scenario())
    assert seen == {
        "obeys": ("timed out after 0.2 s", None, None),
        "at the limit": (Status.RUNNING, True, [signal.SIGTERM]),
        "its CPU while it stops": 3.0,
        "stubborn": ("timed out after 0.3 s", None, None),
        "its CPU once it is gone": 4.0,
    }


def test_a_time_limit_counts_from_the_start_across_a_restart(world: World) -> None:
    """A workload whose limit passed while no server ran is stopped as soon as the
    next server adopts it (its limit counts from ``started_at``, not from the
    adoption)."""
    seen: dict[str, object] = {}

    async def scenario() -> None:
        async with serving(world) as scheduler:
            workload = await world.create(timeout=1)
            world.machine.stubborn.add(workload.id)  # so that the first SIGTERM shows
            scheduler.submitted(workload)
            await world.becomes(workload, Status.RUNNING)
        process = world.machine.processes[workload.id]
        seen["signalled by the first server"] = list(process.signals)
        await asyncio.sleep(1.2)  # no server runs while its limit passes
        async with serving(world) as scheduler:
            await asyncio.sleep(0)  # the adoption's timer, due at once, runs
            await asyncio.sleep(0.05)
            seen["at once after the adoption"] = list(process.signals)
            world.machine.end(workload.id, signal=signal.SIGKILL)
            done = await world.becomes(workload, Status.FAILED)
            seen["ended"] = done.reason

    world.run(scenario())
    assert seen == {
        "signalled by the first server": [],
        "at once after the adoption": [signal.SIGTERM],
        "ended": "timed out after 1 s",
    }


# --- reconciliation ----------------------------------------------------------------------


def test_a_restart_reconciles_the_running_workloads_with_their_processes(world: World) -> None:
    """Five workloads run when the server stops. While none runs: one process exits
    with code 3, one vanishes without a status, one workload is killed (by another
    server), one keeps running; and a sixth workload is claimed by a server that
    stopped before it started it. The next server: the exit is recorded with its
    true code, the vanished one is lost, the killed one's process is stopped and its
    status kept, the running one is adopted (still running, its CPU taken), and the
    claimed one is started, once."""
    seen: dict[str, object] = {}

    async def scenario() -> None:
        async with serving(world, cpus=8) as scheduler:
            exits, vanishes, killed, runs = [await world.submit(scheduler) for _ in range(4)]
            for w in (exits, vanishes, killed, runs):
                await world.becomes(w, Status.RUNNING)
        never_started = await world.create()
        await world.set_status(never_started, Status.RUNNING)  # claimed; then that server died
        world.machine.end(exits.id, exit_code=3)
        world.machine.vanish(vanishes.id)
        await world.set_status(killed, Status.KILLED)
        killed_process = world.machine.processes[killed.id]

        async with serving(world, cpus=8) as scheduler:
            done = await world.becomes(exits, Status.FAILED)
            seen["exited meanwhile"] = (done.exit_code, done.reason)
            done = await world.becomes(vanishes, Status.FAILED)
            seen["vanished"] = done.reason
            seen["killed"] = ((await world.get(killed)).status, killed_process.signals)
            await asyncio.sleep(0.1)
            now = await world.get(runs)
            seen["runs"] = (now.status, scheduler.is_active(runs.id))
            seen["started after the restart"] = world.machine.launches.count(never_started.id)
            seen["claimed"] = (await world.get(never_started)).status
            seen["CPUs taken"] = 8 - scheduler.free().cpus

    world.run(scenario())
    assert seen == {
        "exited meanwhile": (3, "exit code 3"),
        "vanished": "lost: its process vanished without an exit status",
        "killed": (Status.KILLED, [signal.SIGTERM]),
        "runs": (Status.RUNNING, True),
        "started after the restart": 1,
        "claimed": Status.RUNNING,
        "CPUs taken": 2.0,
    }


def test_the_safety_poll_reconciles_the_store_with_the_processes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the server runs, another process writes: a workload running in the store
    that no process of this server runs ends failed, lost; one of this server's
    workloads killed in the store (the scheduler not told) has its process stopped."""
    monkeypatch.setattr(scheduler_module, "SAFETY_POLL_SECONDS", 0.2)
    seen: dict[str, object] = {}

    async def scenario() -> None:
        async with serving(world) as scheduler:
            mine = await world.submit(scheduler)
            await world.becomes(mine, Status.RUNNING)
            process = world.machine.processes[mine.id]
            await world.set_status(mine, Status.KILLED)
            elsewhere = await world.create()
            await world.set_status(elsewhere, Status.RUNNING)

            done = await world.becomes(elsewhere, Status.FAILED)
            seen["not ours"] = done.reason
            await until(lambda: not scheduler.is_active(mine.id))
            seen["killed elsewhere"] = ((await world.get(mine)).status, process.signals)
            seen["launched"] = world.machine.launches == [mine.id]

    world.run(scenario())
    assert seen == {
        "not ours": "lost: it is running in the store, but no process of this server runs it",
        "killed elsewhere": (Status.KILLED, [signal.SIGTERM]),
        "launched": True,
    }


# --- memory admission ----------------------------------------------------------------


def test_a_workload_whose_memory_does_not_fit_waits_and_starts_when_it_frees(
    world: World,
) -> None:
    """Of 1000 MB, 800 are taken: a workload asking for 400 waits, saying so, and
    reserves them (it is the head of the line); one asking for 200 waits behind it,
    though 200 are free; one asking for none starts. When the 800 are given back,
    both start."""
    seen: dict[str, object] = {}

    async def reason(workload: Workload) -> str | None:
        return (await world.get(workload)).reason

    async def scenario() -> None:
        async with serving(world, cpus=8, memory_mb=1000) as scheduler:
            big = await world.submit(scheduler, memory_mb=800)
            await world.becomes(big, Status.RUNNING)
            head = await world.submit(scheduler, memory_mb=400)
            behind = await world.submit(scheduler, memory_mb=200)
            none = await world.submit(scheduler, memory_mb=0)
            await world.becomes(none, Status.RUNNING)
            await until(lambda: reason(behind))
            seen["head"] = await reason(head)
            seen["behind"] = (await reason(behind) or "").replace(head.id, "HEAD")
            seen["free"] = scheduler.free().memory_mb
            world.machine.end(big.id, exit_code=0)
            for w in (head, behind):
                await world.becomes(w, Status.RUNNING)
            seen["free after"] = scheduler.free().memory_mb

    world.run(scenario())
    assert seen == {
        "head": "waiting for 400 MB of memory, 200 MB free",
        "behind": "waiting behind HEAD (priority 0), which needs more",
        "free": 200,
        "free after": 400,
    }


# --- claims ------------------------------------------------------------------------------


def test_a_workload_killed_between_the_decision_and_the_claim_never_runs(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workloads of one CPU each on one CPU. The first is killed by another
    server after the scheduler learnt of it, so the pass still decides to start it:
    the claim is refused, nothing runs it, and the CPU goes to the second (at once:
    no safety poll during the test)."""
    monkeypatch.setattr(scheduler_module, "SAFETY_POLL_SECONDS", 600.0)
    seen: dict[str, object] = {}

    async def scenario() -> None:
        async with serving(world, cpus=1) as scheduler:
            first = await world.create()
            second = await world.create()
            await world.set_status(first, Status.KILLED)
            scheduler.submitted(first)  # as the scheduler knew it: pending
            scheduler.submitted(second)
            await world.becomes(second, Status.RUNNING)
            seen["first"] = await world.statuses(first)
            seen["launched"] = world.machine.launches == [second.id]

    world.run(scenario())
    assert seen == {"first": [Status.PENDING, Status.KILLED], "launched": True}
