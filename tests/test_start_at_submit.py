"""Starting at submit (``Scheduler.start_at_submit``; "Starting at submit" in the
scheduler's docstring): a submit that finds nothing waiting and room for it is
created running, in the create's own transaction, and launched before its answer.
In process, with a real store and local executor, where a test must act between
the create and the scheduler's hearing of it; and once through HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from corral import scheduler as scheduler_module
from corral.model import Resources, Status, Workload, WorkloadCreate
from corral.scheduler import Scheduler
from corral.store.base import NewWorkload, StartNow
from corral.store.cluster import Fence
from corral.store.errors import IdempotencyKeyReusedError
from corral.store.sqlite import SQLiteStore
from corral.store.sqlite_async import AsyncSQLiteStore
from tests.server import LiveServer
from tests.test_scheduler import api_client, started, status_is, status_of, until


def _events(store: SQLiteStore, workload_id: str) -> list[tuple[str | None, str, str | None]]:
    return [(e.from_status, e.to_status, e.actor) for e in store.list_events(workload_id)]


async def create_started(
    store: AsyncSQLiteStore, scheduler: Scheduler, spec: WorkloadCreate
) -> tuple[Workload, StartNow]:
    """What the route does before ``submitted``: ``start_at_submit`` (which must
    start it), then the create with its ``StartNow``."""
    start = await scheduler.start_at_submit(spec, "alice")
    assert start is not None
    (workload, replayed), *_ = await store.create_workloads(
        [NewWorkload(spec, "alice", actor="alice", start=start)]
    )
    assert not replayed
    return workload, start


def test_the_store_creates_it_running_in_one_transaction(tmp_path: Path) -> None:
    """With ``start``: the chosen id, running on the node, both events; a stale fence
    leaves it pending (no error); without ``start`` nothing changes."""
    store = SQLiteStore(tmp_path / "corral.db")
    spec = WorkloadCreate(command=["true"], labels={"a": "b"})
    started_item = NewWorkload(spec, "alice", actor="alice", start=StartNow("01J0START", "n1"))
    fenced = NewWorkload(
        spec, "alice", actor="alice", start=StartNow("01J0FENCED", "n1", Fence("x", 7))
    )
    plain = NewWorkload(spec, "alice", actor="alice")
    (running, r1), (pending, r2), (other, r3) = store.create_workloads(  # type: ignore[misc]
        [started_item, fenced, plain]
    )
    assert (r1, r2, r3) == (False, False, False)
    assert (running.id, running.status, running.node) == ("01J0START", Status.RUNNING, "n1")
    assert running.started_at is not None
    assert (pending.id, pending.status, pending.node) == ("01J0FENCED", Status.PENDING, None)
    assert other.status is Status.PENDING and other.id not in {"01J0START", "01J0FENCED"}
    assert store.get_workload("01J0START") == running
    assert _events(store, "01J0START") == [
        (None, "pending", "alice"),
        ("pending", "running", "scheduler"),
    ]
    assert _events(store, "01J0FENCED") == [(None, "pending", "alice")]
    store.close()


def test_a_replayed_or_refused_create_claims_nothing(tmp_path: Path) -> None:
    """An idempotent replay answers the stored workload as it is (not claimed again);
    a key reused with another spec is refused, and its id is never written."""
    store = SQLiteStore(tmp_path / "corral.db")
    spec = WorkloadCreate(command=["true"])
    first = store.create_workloads([NewWorkload(spec, "alice", "k1")])[0]
    assert not isinstance(first, Exception)
    replay = NewWorkload(spec, "alice", "k1", start=StartNow("01J0REPLAY", "n1"))
    other = NewWorkload(
        WorkloadCreate(command=["false"]), "alice", "k1", start=StartNow("01J0REUSED", "n1")
    )
    again, refused = store.create_workloads([replay, other])
    assert not isinstance(again, Exception)
    assert again == (first[0], True) and again[0].status is Status.PENDING
    assert isinstance(refused, IdempotencyKeyReusedError)
    with sqlite3.connect(tmp_path / "corral.db") as conn:
        ids = {r[0] for r in conn.execute("SELECT id FROM workloads")}
    assert ids == {first[0].id}
    store.close()


def test_a_submit_to_an_idle_server_starts_in_its_create(tmp_path: Path) -> None:
    """Nothing waits and it fits: created running, launched by ``submitted`` (before
    the answer), its resources taken from the start; it runs to completion."""

    async def scenario() -> None:
        async with started(tmp_path, cpus=2) as (store, scheduler):
            assert scheduler.executor is not None
            spec = WorkloadCreate(command=["sleep", "0.3"], resources=Resources(cpus=2))
            start = await scheduler.start_at_submit(spec, "alice")
            assert start is not None
            assert scheduler.free().cpus == 0  # taken before the create
            (workload, replayed), *_ = await store.create_workloads(
                [NewWorkload(spec, "alice", actor="alice", start=start)]
            )
            assert workload.status is Status.RUNNING and not replayed
            scheduler.submitted(workload, start)
            assert scheduler.is_active(workload.id)  # launching, before any await
            await until(lambda: status_is(store, workload.id, Status.COMPLETED))
            assert scheduler.free().cpus == 2

    asyncio.run(scenario())


def test_nothing_starts_at_submit_while_something_waits(tmp_path: Path) -> None:
    """A pending workload keeps its place: a later submit that would fit is queued
    behind it (no jumping the line), and one that does not fit is not started."""

    async def scenario() -> None:
        async with started(tmp_path, cpus=2) as (store, scheduler):
            big = WorkloadCreate(command=["sleep", "30"], resources=Resources(cpus=2))
            small = WorkloadCreate(command=["true"], resources=Resources(cpus=1))
            running, start = await create_started(store, scheduler, big)
            scheduler.submitted(running, start)
            assert await scheduler.start_at_submit(small, "alice") is None  # no room
            waiting, _ = await store.create_workload(big, owner="alice")
            scheduler.submitted(waiting)
            await until(lambda: waiting.id in scheduler._pending)
            scheduler.stopped(await store.update_workload_status(running.id, Status.KILLED))
            # The big one is next in line; the CPUs come free once the process is gone,
            # and a submit meanwhile must not take them.
            assert await scheduler.start_at_submit(small, "alice") is None
            await until(lambda: status_is(store, waiting.id, Status.RUNNING))
            scheduler.stopped(await store.update_workload_status(waiting.id, Status.KILLED))

    asyncio.run(scenario())


def test_the_pass_after_a_start_at_submit_counts_what_it_took(tmp_path: Path) -> None:
    """A start at submit takes resources outside a pass: the next pass must not
    resume from what the last one left free (it did: a second 1-CPU workload ran on
    a full 1-CPU machine, found by tests/test_cli_bulk.py)."""

    async def scenario() -> None:
        async with started(tmp_path, cpus=1) as (store, scheduler):
            first, _ = await store.create_workload(WorkloadCreate(command=["true"]), owner="alice")
            scheduler.submitted(first)  # a pass runs: it leaves 1 CPU free behind it
            await until(lambda: status_is(store, first.id, Status.COMPLETED))
            await until(lambda: scheduler.free().cpus == 1)
            spec = WorkloadCreate(command=["sleep", "30"], resources=Resources(cpus=1))
            busy, start = await create_started(store, scheduler, spec)
            scheduler.submitted(busy, start)
            second, _ = await store.create_workload(WorkloadCreate(command=["true"]), owner="alice")
            scheduler.submitted(second)
            await until(lambda: second.id in scheduler._reasons)  # a pass gave its reason
            assert await status_of(store, second.id) is Status.PENDING
            scheduler.stopped(await store.update_workload_status(busy.id, Status.KILLED))
            await until(lambda: status_is(store, second.id, Status.COMPLETED))

    asyncio.run(scenario())


def test_a_kill_before_the_create_answers_launches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed (another request, by the id it read elsewhere) between the create's
    commit and ``submitted``: nothing runs and the CPUs come back. (No safety poll:
    it would stop a process launched by mistake.)"""
    monkeypatch.setattr(scheduler_module, "SAFETY_POLL_SECONDS", 600.0)

    async def scenario() -> None:
        async with started(tmp_path, cpus=1) as (store, scheduler):
            assert scheduler.executor is not None
            spec = WorkloadCreate(command=["sleep", "30"], resources=Resources(cpus=1))
            workload, start = await create_started(store, scheduler, spec)
            killed = await store.update_workload_status(workload.id, Status.KILLED, actor="t")
            scheduler.stopped(killed)
            scheduler.submitted(workload, start)
            assert scheduler.executor.active() == set()
            assert scheduler.free().cpus == 1
            assert await status_of(store, workload.id) is Status.KILLED
            nxt = await scheduler.start_at_submit(spec, "alice")  # the CPU is free again
            assert nxt is not None
            scheduler.not_started(nxt)

    asyncio.run(scenario())


def test_a_failed_or_replayed_create_gives_the_resources_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started(tmp_path, cpus=1) as (store, scheduler):
            spec = WorkloadCreate(command=["true"], resources=Resources(cpus=1))
            start = await scheduler.start_at_submit(spec, "alice")
            assert start is not None and scheduler.free().cpus == 0
            scheduler.not_started(start)  # the create raised
            assert scheduler.free().cpus == 1 and not scheduler._starting
            first, _ = await store.create_workload(spec, owner="alice", idempotency_key="k")
            scheduler.submitted(first)
            await until(lambda: status_is(store, first.id, Status.COMPLETED))
            start = await scheduler.start_at_submit(spec, "alice")
            assert start is not None
            (again, replayed), *_ = await store.create_workloads(
                [NewWorkload(spec, "alice", "k", start=start)]
            )
            assert replayed and again.id == first.id
            scheduler.not_started(start)  # what the route does for a replay
            assert scheduler.free().cpus == 1 and not scheduler._starting

    asyncio.run(scenario())


def test_a_fenced_create_comes_back_pending_and_is_queued(tmp_path: Path) -> None:
    """The store leaves it pending (the lease it was started under is not live):
    ``submitted`` gives its resources back and queues it the usual way."""

    async def scenario() -> None:
        async with started(tmp_path, cpus=1) as (store, scheduler):
            spec = WorkloadCreate(command=["true"], resources=Resources(cpus=1))
            start = await scheduler.start_at_submit(spec, "alice")
            assert start is not None
            stale = StartNow(start.workload_id, start.node, Fence("gone", 1))
            (workload, _), *_ = await store.create_workloads(
                [NewWorkload(spec, "alice", start=stale)]
            )
            assert workload.status is Status.PENDING and workload.id == start.workload_id
            scheduler.submitted(workload, start)
            assert not scheduler._starting
            await until(lambda: status_is(store, workload.id, Status.COMPLETED))
            assert scheduler.free().cpus == 1

    asyncio.run(scenario())


def test_the_safety_poll_during_the_create_takes_nothing_for_lost(tmp_path: Path) -> None:
    """The poll reads the workload running before ``submitted`` is told: it is the
    scheduler's own (``_starting``), not lost; it runs once told."""

    async def scenario() -> tuple[Status, str | None]:
        async with started(tmp_path, cpus=1) as (store, scheduler):
            spec = WorkloadCreate(command=["sh", "-c", "echo ran"])
            workload, start = await create_started(store, scheduler, spec)
            await scheduler._reconcile()
            scheduler.submitted(workload, start)
            await until(lambda: status_is(store, workload.id, Status.COMPLETED))
            done = await store.get_workload(workload.id)
            return done.status, done.reason

    assert asyncio.run(scenario()) == (Status.COMPLETED, "exit code 0")


def test_through_http_an_idle_server_answers_running(tmp_path: Path) -> None:
    """End to end: the 201 of a submit to an idle server says running, the events
    say created then claimed, and the process ran; behind a full machine the answer
    says pending, as before."""
    with (
        LiveServer(tmp_path, "--executor", "local", "--cpus", "1") as server,
        server.http() as http,
    ):
        first = http.post("/v1/workloads", json={"command": ["sleep", "30"]})
        assert first.status_code == 201, first.text
        assert first.json()["status"] == "running"
        second = http.post("/v1/workloads", json={"command": ["true"]})
        assert second.json()["status"] == "pending"
        wid, other = first.json()["id"], second.json()["id"]
        events = http.get(f"/v1/workloads/{wid}/events").json()["items"]
        assert [(e["from_status"], e["to_status"], e["actor"]) for e in events] == [
            (None, "pending", first.json()["owner"]),
            ("pending", "running", "scheduler"),
        ]
        assert http.delete(f"/v1/workloads/{wid}").status_code == 200
        for _ in range(200):
            if http.get(f"/v1/workloads/{other}").json()["status"] == "completed":
                break
            time.sleep(0.05)
        assert http.get(f"/v1/workloads/{other}").json()["status"] == "completed"
        assert http.get(f"/v1/workloads/{wid}").json()["status"] == "killed"


class StatusesHeld:
    """The real store, except that once ``hold()`` is called, the next reads of
    dependencies' statuses (``statuses``: the blocked workloads' re-check) are held,
    once read, until ``release()``: a read that takes a while (more than
    ``INLINE_IDS`` ids go to a reader thread), so that a test can submit while a
    re-check is under way."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.reading = asyncio.Event()
        self._gate: asyncio.Event | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    async def statuses(self, workload_ids: Any) -> Any:
        result = await self.store.statuses(workload_ids)
        gate = self._gate
        if gate is not None:
            self.reading.set()
            await gate.wait()
        return result


def test_a_submit_during_a_blocked_workloads_recheck_does_not_jump_ahead_of_it(
    tmp_path: Path,
) -> None:
    """A blocked workload whose dependency just completed is being re-checked (its
    mark taken off ``_recheck`` while the statuses are read): it was submitted first
    and is about to be queued, so a submit meanwhile must not start at submit and
    take the only CPU ahead of it (it did: the blocked one then waited behind it)."""

    async def scenario() -> dict[str, object]:
        held: list[StatusesHeld] = []

        def wrap(store: Any) -> StatusesHeld:
            held.append(StatusesHeld(store))
            return held[0]

        async with started(tmp_path, cpus=1, wrap=wrap) as (store, scheduler):
            one = Resources(cpus=1)
            dep, _ = await store.create_workload(
                WorkloadCreate(command=["sleep", "0.3"], resources=one), owner="alice"
            )
            scheduler.submitted(dep)
            await until(lambda: status_is(store, dep.id, Status.RUNNING))
            spec = WorkloadCreate(command=["sleep", "30"], resources=one, depends_on=[dep.id])
            blocked, _ = await store.create_workload(spec, owner="alice")
            scheduler.submitted(blocked)
            await until(lambda: blocked.id in scheduler._reasons)  # checked: it waits
            held[0].hold()
            await asyncio.wait_for(held[0].reading.wait(), 10)  # re-checked once dep ended
            late = WorkloadCreate(command=["sleep", "30"], resources=one)
            start = await scheduler.start_at_submit(late, "alice")
            seen: dict[str, object] = {"started at submit": start is not None}
            if start is not None:
                (now, _), *_ = await store.create_workloads(
                    [NewWorkload(late, "alice", start=start)]
                )
                scheduler.submitted(now, start)
            held[0].release()
            await until(lambda: blocked.id not in scheduler._blocked)
            await asyncio.sleep(0.3)
            seen["blocked one"] = await status_of(store, blocked.id)
            return seen

    assert asyncio.run(scenario()) == {"started at submit": False, "blocked one": Status.RUNNING}


def test_a_submit_whose_request_is_cancelled_mid_create_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request is cancelled while its create is queued or written (a client gone,
    uvicorn's shutdown timeout): the create is still written (``CreateBatcher`` writes
    an item whose caller went away), running, by this server. It must then run, as a
    pending one left by a cancelled request did before starting at submit; it was
    left running with no process and its resources given back, and the safety poll
    failed it as lost."""
    monkeypatch.setattr(scheduler_module, "SAFETY_POLL_SECONDS", 600.0)

    async def scenario() -> tuple[Status, str | None, float]:
        async with (
            started(tmp_path, cpus=1) as (store, scheduler),
            api_client(tmp_path, store, scheduler) as client,
        ):
            body = {"command": ["sh", "-c", "echo ran"], "resources": {"cpus": 1}}
            request = asyncio.create_task(client.post("/v1/workloads", json=body))
            while not scheduler._starting:
                await asyncio.sleep(0)
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request

            async def created() -> list[Any]:
                return (await store.list_workloads()).items

            await until(created)
            (workload,) = await created()
            await scheduler._reconcile()  # the safety poll
            await until(lambda: status_is(store, workload.id, Status.COMPLETED), 5)
            done = await store.get_workload(workload.id)
            return done.status, done.reason, scheduler.free().cpus

    assert asyncio.run(scenario()) == (Status.COMPLETED, "exit code 0", 1)
