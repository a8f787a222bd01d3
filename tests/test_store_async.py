"""The async SQLite store and the create batcher over it, on a real database file:
writes wait for SQLite's lock on their thread, never on the event loop, and creates
that arrive while a batch is being written go together into the next one."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from corral.errors import CorralError
from corral.model import Status, WorkloadCreate
from corral.store.base import Created, NewWorkload, Store
from corral.store.batch import CreateBatcher
from corral.store.sqlite import SQLiteStore, WriteWouldWait
from corral.store.sqlite_async import INLINE_ROWS, AsyncSQLiteStore

SPEC = WorkloadCreate(command=["true"])


def test_a_write_waiting_for_the_lock_holds_neither_the_loop_nor_reads(tmp_path: Path) -> None:
    """Another connection holds the write lock: a create waits for it (on the writer
    thread) while the loop goes on turning and reads, by id and listings, answer."""
    seen: dict[str, object] = {}

    async def scenario() -> None:
        store = AsyncSQLiteStore(tmp_path / "corral.db", busy_timeout_ms=10_000)
        other = sqlite3.connect(store.path, isolation_level=None)
        try:
            kept, _ = await store.create_workload(SPEC, owner="alice")
            other.execute("BEGIN IMMEDIATE")
            create = asyncio.ensure_future(store.create_workload(SPEC, owner="alice"))
            for _ in range(5):
                await asyncio.sleep(0.02)  # the loop turns
            seen["read by id"] = (await store.get_workload(kept.id)).id == kept.id
            seen["listed"] = len((await store.list_workloads()).items)
            seen["counted"] = (await store.count_by_status())[Status.PENDING]
            seen["create waits"] = not create.done()
            other.execute("ROLLBACK")
            created, _ = await create
            seen["created"] = (await store.get_workload(created.id)).status
        finally:
            other.close()
            await store.close()

    asyncio.run(scenario())
    assert seen == {
        "read by id": True,
        "listed": 1,
        "counted": 1,
        "create waits": True,
        "created": Status.PENDING,
    }


class CountingBatches:
    """The real store; ``sizes`` lists the size of each ``create_workloads`` call."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def create_workloads(self, items: Sequence[NewWorkload]) -> list[Created | CorralError]:
        self.sizes.append(len(items))
        return await self.store.create_workloads(items)


def test_creates_made_while_a_batch_is_written_go_together_into_the_next(
    tmp_path: Path,
) -> None:
    """The first create's batch waits for the write lock; five more, each in a loop
    turn of its own, queue meanwhile and are written as one batch once it commits.
    Each caller gets its own workload."""

    async def scenario() -> tuple[list[int], int, int]:
        store = AsyncSQLiteStore(tmp_path / "corral.db", busy_timeout_ms=10_000)
        counting = CountingBatches(store)
        batcher = CreateBatcher(counting)  # type: ignore[arg-type]
        other = sqlite3.connect(store.path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            first = asyncio.ensure_future(batcher.create(SPEC, owner="alice"))
            await asyncio.sleep(0.05)  # its batch is under way, waiting for the lock
            more = []
            for i in range(5):
                spec = WorkloadCreate(command=["true"], name=f"n{i}")
                more.append(asyncio.ensure_future(batcher.create(spec, owner="alice")))
                await asyncio.sleep(0)
            other.execute("ROLLBACK")
            created = [w for w, _ in await asyncio.gather(first, *more)]
            stored = len((await store.list_workloads()).items)
            return counting.sizes, len({w.id for w in created}), stored
        finally:
            other.close()
            await store.close()

    assert asyncio.run(scenario()) == ([1, 5], 6, 6)


def test_a_write_made_while_an_earlier_one_waits_goes_after_it(tmp_path: Path) -> None:
    """A kill waits on the writer thread for a lock another connection holds. The
    lock is let go and, at once, a claim of the same workload is made: it queues
    behind the kill (it is not run inline ahead of it), so the kill wins and the
    claim is refused, as their order says."""

    async def scenario() -> tuple[Status, str]:
        store = AsyncSQLiteStore(tmp_path / "corral.db", busy_timeout_ms=10_000)
        other = sqlite3.connect(store.path, isolation_level=None)
        try:
            workload, _ = await store.create_workload(SPEC, owner="alice")
            other.execute("BEGIN IMMEDIATE")
            kill = asyncio.ensure_future(
                store.update_workload_status(workload.id, Status.KILLED, actor="test")
            )
            await asyncio.sleep(0.05)  # the kill waits for the lock on the writer thread
            other.execute("ROLLBACK")
            claim = asyncio.ensure_future(
                store.update_workload_status(workload.id, Status.RUNNING, actor="test")
            )
            killed = await kill
            refused = await asyncio.gather(claim, return_exceptions=True)
            return killed.status, type(refused[0]).__name__
        finally:
            other.close()
            await store.close()

    assert asyncio.run(scenario()) == (Status.KILLED, "InvalidTransitionError")


def test_a_write_without_waiting_refuses_at_once_and_does_nothing(tmp_path: Path) -> None:
    """``without_waiting`` (how the async store tries a write inline): with the lock
    taken elsewhere, ``WriteWouldWait`` rather than the busy timeout's
    ``StoreBusyError``, nothing stored, and the store's busy timeout kept for the
    rest (the thread's own connection)."""
    store = SQLiteStore(tmp_path / "corral.db", busy_timeout_ms=10_000)
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(WriteWouldWait):
            store.without_waiting(store.create_workload, SPEC, owner="alice")
        other.execute("ROLLBACK")
        assert store.list_workloads().items == []
        assert store._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
        assert store._conn(no_wait=True).execute("PRAGMA busy_timeout").fetchone()[0] == 0
        created, _ = store.without_waiting(store.create_workload, SPEC, owner="alice")
        assert store.get_workload(created.id).status is Status.PENDING
    finally:
        other.close()
        store.close()


def test_the_writes_of_one_loop_turn_share_one_transaction_each_with_its_own_answer(
    tmp_path: Path,
) -> None:
    """Writes made during one turn of the loop (here: gathered) are one transaction,
    one ``COMMIT``; a refused one among them (a transition the table forbids, a
    workload that does not exist) gets its own error and the others their results."""

    async def scenario() -> tuple[list[object], list[str], Status]:
        store = AsyncSQLiteStore(tmp_path / "corral.db")
        try:
            (a, _), (b, _) = [await store.create_workload(SPEC, owner="al") for _ in range(2)]
            statements: list[str] = []
            store.sync._conn(no_wait=True).set_trace_callback(statements.append)
            answers = await asyncio.gather(
                store.update_workload_status(a.id, Status.RUNNING, actor="test"),
                store.update_workload_status(b.id, Status.COMPLETED, actor="test"),
                store.update_workload_status("01nonexistent0000000000000", Status.KILLED),
                store.create_workload(SPEC, owner="al"),
                return_exceptions=True,
            )
            commits = [s for s in statements if s.strip().upper() in ("BEGIN IMMEDIATE", "COMMIT")]
            shown = [type(x).__name__ if isinstance(x, Exception) else x for x in answers]
            return shown, commits, (await store.get_workload(b.id)).status
        finally:
            await store.close()

    shown, commits, b_status = asyncio.run(scenario())
    assert getattr(shown[0], "status", None) is Status.RUNNING
    assert shown[1:3] == ["InvalidTransitionError", "NotFoundError"]
    assert isinstance(shown[3], tuple)  # (the workload, replayed)
    assert commits == ["BEGIN IMMEDIATE", "COMMIT"]
    assert b_status is Status.PENDING


def test_a_write_refused_together_with_others_leaves_nothing_of_its_own(tmp_path: Path) -> None:
    """``write_together``: a write that fails after it wrote is rolled back to its
    savepoint; the writes before and after it are committed."""
    store = SQLiteStore(tmp_path / "corral.db")

    def half_done() -> None:
        with store._write() as conn:
            conn.execute("UPDATE workloads SET name = 'half' WHERE id = ?", (first.id,))
            raise CorralError("refused after writing")

    try:
        first, _ = store.create_workload(SPEC, owner="al")
        results = store.write_together(
            [
                lambda: store.create_workload(SPEC, owner="al"),
                half_done,
                lambda: store.update_workload_status(first.id, Status.KILLED, actor="t"),
            ]
        )
        assert isinstance(results[1], CorralError)
        assert store.get_workload(first.id).name != "half"
        assert store.get_workload(first.id).status is Status.KILLED
        created = results[0]
        assert not isinstance(created, Exception)
        assert store.get_workload(created[0].id).status is Status.PENDING
    finally:
        store.close()


def test_a_fault_in_a_turn_of_writes_gives_each_its_own_answer(tmp_path: Path) -> None:
    """A fault of the database within a turn's transaction (here: a write that raises
    ``sqlite3.Error``, as a full disk does) rolls the whole transaction back; the
    writes are then made one by one on the writer thread, each with its own answer:
    the faulty one its error, the others their results, stored."""

    async def scenario() -> tuple[list[str], int]:
        store = AsyncSQLiteStore(tmp_path / "corral.db")

        def faulty() -> None:
            with store.sync._write() as conn:
                conn.execute("INSERT INTO no_such_table VALUES (1)")

        try:
            answers = await asyncio.gather(
                store.create_workload(SPEC, owner="al"),
                store._write(1, faulty),
                store.create_workload(SPEC, owner="al"),
                return_exceptions=True,
            )
            names = [type(x).__name__ for x in answers]
            return names, len((await store.list_workloads()).items)
        finally:
            await store.close()

    assert asyncio.run(scenario()) == (["tuple", "OperationalError", "tuple"], 2)


def test_a_large_write_goes_after_the_small_ones_made_before_it(tmp_path: Path) -> None:
    """Writes are made in the order they were asked for: a large write (on the writer
    thread at once) asked for after a small one of the same loop turn (written at the
    turn's end) goes after it, as a write asked for after one under way does."""

    async def scenario() -> tuple[str, str]:
        store = AsyncSQLiteStore(tmp_path / "corral.db")
        try:
            many = [NewWorkload(SPEC, "al", None, "test") for _ in range(INLINE_ROWS + 1)]
            (one, _), _ = await asyncio.gather(
                store.create_workload(SPEC, owner="al"), store.create_workloads(many)
            )
            (first, *_) = await store.list_events_after(0, limit=1)
            return first.workload_id, one.id
        finally:
            await store.close()

    first, one = asyncio.run(scenario())
    assert first == one


def test_a_write_asked_for_before_close_is_written(tmp_path: Path) -> None:
    """``close`` lets the writes under way finish, those of the loop turn not written
    yet among them, however long the loop is busy before the turn's end (here: a
    callback that holds it while ``close`` runs on its thread)."""

    async def scenario() -> Created:
        store = AsyncSQLiteStore(tmp_path / "corral.db")
        write = asyncio.ensure_future(store.create_workload(SPEC, owner="al"))
        closing = asyncio.ensure_future(store.close())
        asyncio.get_running_loop().call_soon(time.sleep, 0.5)  # the loop busy meanwhile
        await closing
        return await write

    (created, _) = asyncio.run(scenario())
    reopened = SQLiteStore(tmp_path / "corral.db")
    try:
        assert reopened.get_workload(created.id).status is Status.PENDING
    finally:
        reopened.close()
