"""The scheduler with a real store and a real local executor, in process, where a
test must control what happens within one turn of the event loop."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral import scheduler as scheduler_module
from corral.api import create_app
from corral.executors.base import Capacity
from corral.executors.local import LocalExecutor, kill_all
from corral.executors.shim import ShimStatus, read_pid, read_status, state_file
from corral.model import Resources, Status, WorkloadBatchItem, WorkloadCreate
from corral.scheduler import RETRY_SECONDS, Scheduler
from corral.store import Store
from corral.store.sqlite_async import AsyncSQLiteStore
from tests.conftest import add_key_async, event_inserts_fail, writes_refused
from tests.server import pid_gone


@asynccontextmanager
async def started(
    tmp_path: Path, cpus: float, wrap: Callable[[Store], Any] = lambda store: store
) -> AsyncIterator[tuple[AsyncSQLiteStore, Scheduler]]:
    """A started scheduler over a real store (``wrap(store)``, when given) and local
    executor in ``tmp_path``; on the way out it is stopped and every workload process
    it left is killed."""
    store = AsyncSQLiteStore(tmp_path / "corral.db")
    # The workloads' owner holds an admin key: a server running as root (as the tests
    # may) runs nothing as itself for a user without one.
    await add_key_async(store, "alice", admin=True)
    capacity = Capacity(cpus=cpus, memory_mb=1000, gpus=0)
    executor = LocalExecutor(tmp_path, capacity=capacity, kill_grace_seconds=1)
    scheduler = Scheduler(wrap(store), executor)
    await scheduler.start()
    try:
        yield store, scheduler
    finally:
        await scheduler.stop()
        await store.close()
        kill_all(tmp_path / "run")


@asynccontextmanager
async def api_client(
    tmp_path: Path, store: AsyncSQLiteStore, scheduler: Scheduler
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app over ``store`` and ``scheduler``, in process, with alice's key."""
    app = create_app(store, data_dir=tmp_path, scheduler=scheduler)
    key = {"Authorization": f"Bearer {await add_key_async(store, 'alice')}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://localhost", headers=key
    ) as client:
        yield client


async def until(
    predicate: Callable[[], object | Awaitable[object]], timeout: float = 10.0
) -> float:
    """Wait (on the loop) until ``predicate()`` (awaited, if it must be) is true; the
    seconds it took."""
    started = time.monotonic()
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


async def status_is(store: Store, workload_id: str, status: Status) -> bool:
    return (await store.get_workload(workload_id)).status is status


async def status_of(store: Store, workload_id: str) -> Status:
    return (await store.get_workload(workload_id)).status


def test_a_kill_in_the_same_loop_turn_as_the_claim_is_not_lost(tmp_path: Path) -> None:
    """The claim commits ``running`` and the spawn is under way on a thread; a kill
    handled before the launch task first runs must still stop the process."""

    async def scenario() -> tuple[Status, list[int]]:
        async with started(tmp_path, cpus=4) as (store, scheduler):
            assert scheduler.executor is not None
            executor = scheduler.executor
            workload, _ = await store.create_workload(
                owner="alice", spec=WorkloadCreate(command=["sleep", "30"])
            )
            scheduler.submitted(workload)
            await scheduler._schedule()  # claims it and starts the spawn
            # Killed by a synchronous writer: the same turn, the launch task has not run yet.
            killed = store.sync.update_workload_status(workload.id, Status.KILLED, actor="test")
            scheduler.stopped(killed)
            pidfile = tmp_path / "run" / f"{workload.id}.pid"
            for _ in range(100):  # wait for the workload's pid (up to 5 s)
                if pidfile.exists() and pidfile.read_text().strip():
                    break
                await asyncio.sleep(0.05)
            pid = read_pid(tmp_path / "run" / workload.id)  # (a 2nd line: the status)
            pids = [pid] if pid is not None else []
            for _ in range(60):  # gone within the grace period (1 s) and a margin
                if all(pid_gone(p) for p in pids) and not executor.active():
                    break
                await asyncio.sleep(0.05)
            return await status_of(store, workload.id), [p for p in pids if not pid_gone(p)]

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

    async def steps(store: AsyncSQLiteStore, scheduler: Scheduler) -> None:
        async def submit(name: str, cpus: float, priority: int = 0) -> None:
            spec = WorkloadCreate(
                command=["sleep", "30"], resources=Resources(cpus=cpus), priority=priority
            )
            workload, _ = await store.create_workload(owner="alice", spec=spec)
            ids[name] = workload.id
            scheduler.submitted(workload)
            await scheduler._schedule()

        async def look(name: str) -> None:
            w = await store.get_workload(ids[name])
            seen[name] = (w.status, w.reason)

        await submit("hold", 1)
        await submit("head", 3)
        await submit("behind", 1)
        await look("behind")
        await submit("urgent", 1, priority=5)
        await look("urgent")
        await look("head")
        killed = await store.update_workload_status(ids["head"], Status.KILLED, actor="test")
        scheduler.stopped(killed)
        await scheduler._schedule()
        ids["behind, once the head is gone"] = ids["behind"]
        await look("behind, once the head is gone")

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
            older, _ = await store.create_workload(owner="alice", spec=spec)
            newer, _ = await store.create_workload(owner="alice", spec=spec)
            with event_inserts_fail(store):
                scheduler.submitted(older)
                await scheduler._guard(scheduler._schedule)  # logs the failure, as _run does
            statuses["older, claim refused"] = await status_of(store, older.id)
            scheduler.submitted(newer)
            await scheduler._schedule()
            statuses["older"] = await status_of(store, older.id)
            statuses["newer"] = await status_of(store, newer.id)

    asyncio.run(scenario())
    assert statuses == {
        "older, claim refused": Status.PENDING,
        "older": Status.RUNNING,
        "newer": Status.PENDING,
    }


def test_an_exit_the_store_refuses_frees_its_capacity_and_is_recorded_later(
    tmp_path: Path,
) -> None:
    """The database refuses the terminal event of a workload that exits (code 3)
    through the real executor. At once: its CPU is free (a workload asking for the
    whole machine starts), ``logs?follow`` ends, and the safety poll does not call it
    lost; its shim's status file stays on disk. Once the refusal is dropped, the
    retry records its true exit code."""
    seen: dict[str, object] = {}

    async def scenario() -> None:
        async with (
            started(tmp_path, cpus=1) as (store, scheduler),
            api_client(tmp_path, store, scheduler) as client,
        ):
            await steps(store, scheduler, client)

    async def steps(
        store: AsyncSQLiteStore, scheduler: Scheduler, client: httpx.AsyncClient
    ) -> None:
        one_cpu = Resources(cpus=1)
        with event_inserts_fail(store, to=["completed", "failed"]) as refusal:
            spec = WorkloadCreate(command=["sh", "-c", "echo out; exit 3"], resources=one_cpu)
            first, _ = await store.create_workload(owner="alice", spec=spec)
            scheduler.submitted(first)
            await until(lambda: scheduler.process_over(first.id))
            seen["free CPUs once its process is over"] = scheduler._free.cpus
            logs = client.get(f"/v1/workloads/{first.id}/logs", params={"follow": "true"})
            seen["followed log"] = (await asyncio.wait_for(logs, 5)).text
            state = tmp_path / "run" / first.id  # (its status: the .pid file's 2nd line)
            seen["status file kept"] = read_status(state) == ShimStatus("exit", 3)
            spec = WorkloadCreate(command=["sleep", "30"], resources=one_cpu)
            second, _ = await store.create_workload(owner="alice", spec=spec)
            scheduler.submitted(second)
            await until(lambda: status_is(store, second.id, Status.RUNNING))
            await scheduler._reconcile()  # the safety poll
            await asyncio.sleep(3 * RETRY_SECONDS)  # retries, refused
            seen["while refused"] = await status_of(store, first.id)
            refusal.drop()

            async def recorded() -> bool:
                return await status_of(store, first.id) is not Status.RUNNING

            seen["recorded within 2 retries"] = (
                await until(recorded, timeout=5) < 2 * RETRY_SECONDS + 0.5
            )
        done = await store.get_workload(first.id)
        seen["recorded"] = (done.status, done.exit_code, done.reason)
        seen["events"] = [e.to_status for e in await store.list_events(first.id)]
        seen["status file after"] = state_file(state, "pid").exists()
        seen["process over after"] = scheduler.process_over(first.id)

    asyncio.run(scenario())
    assert seen == {
        "free CPUs once its process is over": 1,
        "followed log": "out\n",
        "status file kept": True,
        "while refused": Status.RUNNING,
        "recorded within 2 retries": True,
        "recorded": (Status.FAILED, 3, "exit code 3"),
        "events": [Status.PENDING, Status.RUNNING, Status.FAILED],
        "status file after": False,
        "process over after": False,
    }


def test_pending_reasons_and_claims_the_store_refused_are_retried(tmp_path: Path) -> None:
    """A pass whose reasons the database refuses writes them on a later pass (the
    reason counts as given only once stored), and a refused claim is retried without
    waiting for the next submit or exit, nor for the safety poll."""
    seen: dict[str, object] = {}

    async def scenario() -> None:
        async with started(tmp_path, cpus=1) as (store, scheduler):
            spec = WorkloadCreate(command=["sleep", "30"], resources=Resources(cpus=1))
            hold, _ = await store.create_workload(owner="alice", spec=spec)
            scheduler.submitted(hold)
            await until(lambda: status_is(store, hold.id, Status.RUNNING))
            when = "NEW.status = 'pending' AND NEW.reason IS NOT NULL"
            with writes_refused(store, on="UPDATE OF reason ON workloads", when=when) as refusal:
                waiting, _ = await store.create_workload(owner="alice", spec=spec)
                scheduler.submitted(waiting)
                await asyncio.sleep(3 * RETRY_SECONDS)
                seen["reason while refused"] = (await store.get_workload(waiting.id)).reason
                refusal.drop()

                async def reason() -> str | None:
                    return (await store.get_workload(waiting.id)).reason

                await until(reason, timeout=5)
            seen["reason"] = await reason()
            with event_inserts_fail(store, to=["running"]) as refusal:
                killed = await store.update_workload_status(hold.id, Status.KILLED, actor="test")
                scheduler.stopped(killed)
                await until(lambda: not scheduler.is_active(hold.id))
                await asyncio.sleep(3 * RETRY_SECONDS)
                seen["claim refused"] = await status_of(store, waiting.id)
                refusal.drop()
            await until(lambda: status_is(store, waiting.id, Status.RUNNING), 5)

    asyncio.run(scenario())
    assert seen == {
        "reason while refused": None,
        "reason": "waiting for 1 CPU, 0 free",
        "claim refused": Status.PENDING,
    }


def test_dependency_reasons_and_kills_the_store_refuses_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blocked workload's reason, and the kill of an afterok dependant whose
    dependency failed, are retried until the store takes them (nothing is lost), and
    the passes go on meanwhile: other workloads still start. (No safety poll during
    the test: the retries alone must do it.)"""
    monkeypatch.setattr(scheduler_module, "SAFETY_POLL_SECONDS", 600.0)
    seen: dict[str, object] = {}

    def item(command: list[str], depends_on: list[int | str] | None = None) -> WorkloadBatchItem:
        return WorkloadBatchItem(command=command, depends_on=depends_on or [])

    async def scenario() -> None:
        async with started(tmp_path, cpus=4) as (store, scheduler):
            when = "NEW.status = 'pending' AND NEW.reason LIKE 'waiting for%'"
            with writes_refused(store, on="UPDATE OF reason ON workloads", when=when) as refusal:
                (hold, blocked), _ = await store.create_batch(
                    [item(["sleep", "30"]), item(["true"], [0])], owner="alice"
                )
                scheduler.submitted(hold)
                scheduler.submitted(blocked)
                await until(lambda: status_is(store, hold.id, Status.RUNNING))
                await asyncio.sleep(3 * RETRY_SECONDS)
                seen["reason while refused"] = (await store.get_workload(blocked.id)).reason
                refusal.drop()

                async def reason() -> str | None:
                    return (await store.get_workload(blocked.id)).reason

                await until(reason, timeout=5)
            seen["reason"] = await reason() == f"waiting for {hold.id} to complete"
            with event_inserts_fail(store, to=["killed"]) as refusal:
                (a, b, c), _ = await store.create_batch(
                    [item(["sh", "-c", "exit 3"]), item(["true"], [0]), item(["true"], [1])],
                    owner="alice",
                )
                for workload in (a, b, c):
                    scheduler.submitted(workload)
                await until(lambda: status_is(store, a.id, Status.FAILED))
                await asyncio.sleep(3 * RETRY_SECONDS)
                seen["while refused"] = [await status_of(store, w.id) for w in (b, c)]
                other, _ = await store.create_workload(
                    WorkloadCreate(command=["true"]), owner="alice"
                )
                scheduler.submitted(other)
                await until(lambda: status_is(store, other.id, Status.COMPLETED))
                refusal.drop()
            await until(lambda: status_is(store, c.id, Status.KILLED), timeout=5)
            seen["killed"] = [(await store.get_workload(w.id)).reason for w in (b, c)] == [
                f"dependency {a.id} failed",
                f"dependency {b.id} was killed",
            ]
            seen["blocked still"] = await status_of(store, blocked.id)

    asyncio.run(scenario())
    assert seen == {
        "reason while refused": None,
        "reason": True,
        "while refused": [Status.PENDING, Status.PENDING],
        "killed": True,
        "blocked still": Status.PENDING,
    }


def test_the_safety_poll_runs_while_wake_ups_keep_coming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pending workload the scheduler was not told about (written by another
    process, or whose request's handler went away after the commit) is found by the
    safety poll. Wake-ups (submits, kills, exits) more often than the poll's period
    must not put the poll off for ever."""
    monkeypatch.setattr(scheduler_module, "SAFETY_POLL_SECONDS", 0.3)

    async def scenario() -> Status:
        async with started(tmp_path, cpus=4) as (store, scheduler):
            spec = WorkloadCreate(command=["true"])
            unseen, _ = await store.create_workload(owner="alice", spec=spec)
            deadline = time.monotonic() + 3  # ten periods
            while time.monotonic() < deadline:
                if not await status_is(store, unseen.id, Status.PENDING):
                    break
                scheduler._poke()  # as a busy server's exits and submits do
                await asyncio.sleep(0.05)
            return await status_of(store, unseen.id)

    assert asyncio.run(scenario()) is not Status.PENDING


class ClaimsHeld:
    """The real store, except that the answer to each claim (pending→running) is held,
    once the claim has committed, until ``release()``: a database slow to answer, so
    that a test can act between a claim's commit and the scheduler's hearing of it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.claimed: set[str] = set()
        self._released = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def release(self) -> None:
        self._released.set()

    async def update_workload_status(self, workload_id: str, status: Status, **kw: Any) -> Any:
        result = await self.store.update_workload_status(workload_id, status, **kw)
        if status is Status.RUNNING:
            self.claimed.add(workload_id)
            await self._released.wait()
        return result

    async def claim_workloads(self, workload_ids: Any, **kw: Any) -> Any:
        result = await self.store.claim_workloads(workload_ids, **kw)
        if result:
            self.claimed.update(w.id for w in result)
            await self._released.wait()
        return result


def test_a_kill_while_its_claim_is_under_way_launches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim commits ``running``; before the scheduler hears of it, the workload
    is killed (the API's transition, then ``stopped``). The claim's answer must then
    launch nothing, and give the CPU back: the next workload starts. (No safety poll
    during the test: it would stop a process launched by mistake.)"""
    monkeypatch.setattr(scheduler_module, "SAFETY_POLL_SECONDS", 600.0)
    seen: dict[str, object] = {}

    async def scenario() -> None:
        held: list[ClaimsHeld] = []

        def wrap(store: Store) -> ClaimsHeld:
            held.append(ClaimsHeld(store))
            return held[0]

        async with started(tmp_path, cpus=1, wrap=wrap) as (store, scheduler):
            assert scheduler.executor is not None
            spec = WorkloadCreate(command=["sleep", "30"], resources=Resources(cpus=1))
            first, _ = await store.create_workload(owner="alice", spec=spec)
            scheduler.submitted(first)
            await until(lambda: first.id in held[0].claimed)
            killed = await store.update_workload_status(first.id, Status.KILLED, actor="test")
            scheduler.stopped(killed)
            held[0].release()
            await until(lambda: first.id not in scheduler._claiming)
            seen["first launched"] = first.id in scheduler.executor.active()
            second, _ = await store.create_workload(owner="alice", spec=spec)
            scheduler.submitted(second)
            await until(lambda: status_is(store, second.id, Status.RUNNING), timeout=3)
            seen["first"] = await status_of(store, first.id)
            seen["active"] = scheduler.executor.active() == {second.id}

    asyncio.run(scenario())
    assert seen == {"first launched": False, "first": Status.KILLED, "active": True}


def test_the_safety_poll_during_a_claim_takes_nothing_for_lost(tmp_path: Path) -> None:
    """The safety poll reads a workload as running whose claim the scheduler has not
    heard back from yet: it is the scheduler's own (not lost), and runs once heard."""

    async def scenario() -> tuple[Status, str | None]:
        held: list[ClaimsHeld] = []

        def wrap(store: Store) -> ClaimsHeld:
            held.append(ClaimsHeld(store))
            return held[0]

        async with started(tmp_path, cpus=1, wrap=wrap) as (store, scheduler):
            spec = WorkloadCreate(command=["sh", "-c", "echo ran"])
            workload, _ = await store.create_workload(owner="alice", spec=spec)
            scheduler.submitted(workload)
            await until(lambda: workload.id in held[0].claimed)
            await scheduler._reconcile()
            held[0].release()
            await until(lambda: status_is(store, workload.id, Status.COMPLETED))
            done = await store.get_workload(workload.id)
            return done.status, done.reason

    assert asyncio.run(scenario()) == (Status.COMPLETED, "exit code 0")
