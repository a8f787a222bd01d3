"""Retention in the store and ``corral.retention``, on SQLite and PostgreSQL:
``Store.delete_finished`` deletes exactly the finished workloads past the age, with
every row that references them, in batches, never one a pending or running workload
depends on; ``Retention`` does it batch after batch and removes the logs, also while
submits, transitions and reads go on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from corral.errors import CorralError, FieldError, InvalidInputError
from corral.ids import _PAIRS, _SHIFTS, new_id, rfc3339_at
from corral.model import Status, Workload, WorkloadBatchItem, WorkloadCreate
from corral.retention import Retention, interval_for
from corral.scheduler import Scheduler
from corral.store import NotFoundError, StoreBusyError
from corral.store.base import DELETE_BATCH_MAX, OLDER_THAN_MAX_SECONDS
from corral.store.sqlite import SQLiteStore
from corral.store.sqlite_async import AsyncSQLiteStore
from tests.blocking import BlockingStore
from tests.conftest import is_sqlite, query

AGE = 1.0
"""The age the tests delete past: what finished before a ``wait_past_age`` is due."""
SPEC = WorkloadCreate(command=["true"])


def epoch(at: str) -> float:
    return datetime.fromisoformat(at).timestamp()


def wait_past_age() -> None:
    """Let everything finished so far become older than ``AGE`` (with a margin)."""
    time.sleep(AGE + 0.2)


def finish(store: BlockingStore, workload_id: str, status: Status) -> Workload:
    """pending → ``status`` the way the scheduler or a kill would go."""
    if status is Status.KILLED:
        return store.update_workload_status(workload_id, Status.KILLED, actor="alice")
    store.update_workload_status(workload_id, Status.RUNNING, actor="scheduler")
    if status is Status.RUNNING:
        return store.get_workload(workload_id)
    code = 0 if status is Status.COMPLETED else 1
    return store.update_workload_status(workload_id, status, exit_code=code, actor="scheduler")


def make(
    store: BlockingStore,
    status: Status,
    *,
    owner: str = "alice",
    depends_on: list[str] | None = None,
    key: str | None = None,
) -> Workload:
    spec = WorkloadCreate(
        command=["true"], labels={"team": "ml", "n": new_id()[-6:]}, depends_on=depends_on or []
    )
    created, _ = store.create_workload(spec, owner=owner, idempotency_key=key)
    if status is Status.PENDING:
        return created
    return finish(store, created.id, status)


def tick(store: BlockingStore) -> Workload:
    """Another event, newer than every other: the workload of the newest event is
    kept (see ``test_the_newest_events_workload_is_kept_so_event_ids_never_go_back``)."""
    return make(store, Status.PENDING, owner="carol")


async def run_task_for(keep: Retention, seconds: float) -> None:
    """Run the retention task for ``seconds``, then cancel it."""
    task = keep.start()
    assert task is not None
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def rows_referencing(store: BlockingStore, ids: list[str]) -> dict[str, int]:
    """How many rows of each table that references workloads name one of ``ids``."""
    marks = ", ".join(f"'{i}'" for i in ids)
    return {
        "workload_labels": query(
            store, f"SELECT COUNT(*) FROM workload_labels WHERE workload_id IN ({marks})"
        )[0][0],
        "events": query(store, f"SELECT COUNT(*) FROM events WHERE workload_id IN ({marks})")[0][0],
        "idempotency_keys": query(
            store, f"SELECT COUNT(*) FROM idempotency_keys WHERE workload_id IN ({marks})"
        )[0][0],
        "workload_dependencies": query(
            store,
            "SELECT COUNT(*) FROM workload_dependencies"
            f" WHERE workload_id IN ({marks}) OR depends_on IN ({marks})",
        )[0][0],
    }


def test_each_migrations_docstring_names_the_revision_it_revises() -> None:
    """``Revises:`` in a migration's docstring is its ``down_revision`` (0007's said
    0005)."""
    import importlib

    import corral.store.migrations.versions as versions

    folder = Path(versions.__path__[0])
    names = sorted(p.stem for p in folder.glob("0*.py"))
    assert "0007_retention_indexes" in names
    for name in names:
        module = importlib.import_module(f"{versions.__name__}.{name}")
        doc = module.__doc__ or ""
        assert f"Revision ID: {module.revision}\n" in doc, name
        assert f"Revises: {module.down_revision or ''}".rstrip() + "\n" in doc, name


def test_every_table_referencing_workloads_deletes_with_them(store: BlockingStore) -> None:
    """The schema's foreign keys to ``workloads`` (a table added later that forgot
    its cascade fails here), and an index starting with each referencing column, so
    that the cascade probes rather than scans."""
    if is_sqlite(store):
        tables = [r[0] for r in query(store, "SELECT name FROM sqlite_master WHERE type='table'")]
        keys = {
            (t, r[3], r[6])
            for t in tables
            for r in query(store, f"PRAGMA foreign_key_list({t})")
            if r[2] == "workloads"
        }
        indexed = {
            (t, query(store, f"PRAGMA index_info({idx[1]})")[0][2])
            for t in tables
            for idx in query(store, f"PRAGMA index_list({t})")
        }
    else:
        keys = {
            (r[0], r[1], r[2])
            for r in query(
                store,
                "SELECT c.conrelid::regclass::text, a.attname,"
                " CASE c.confdeltype WHEN 'c' THEN 'CASCADE' ELSE c.confdeltype::text END"
                " FROM pg_constraint AS c JOIN pg_attribute AS a"
                " ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
                " WHERE c.contype = 'f' AND c.confrelid = 'workloads'::regclass",
            )
        }
        indexed = {
            (r[0], r[1])
            for r in query(
                store,
                "SELECT i.indrelid::regclass::text, a.attname FROM pg_index AS i"
                " JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]",
            )
        }
    assert keys == {
        ("workload_labels", "workload_id", "CASCADE"),
        ("events", "workload_id", "CASCADE"),
        ("idempotency_keys", "workload_id", "CASCADE"),
        ("workload_dependencies", "workload_id", "CASCADE"),
        ("workload_dependencies", "depends_on", "CASCADE"),
    }
    assert {(t, c) for t, c, _ in keys} <= indexed


def test_deletes_the_finished_past_the_age_with_their_rows_and_nothing_else(
    store: BlockingStore,
) -> None:
    old = [
        make(store, Status.COMPLETED, key="k1"),
        make(store, Status.FAILED),
        make(store, Status.KILLED, owner="bob"),
    ]
    # Finished, and depending on an old one that is finished too: both go.
    old.append(make(store, Status.COMPLETED, depends_on=[old[0].id]))
    pending = make(store, Status.PENDING)
    running = make(store, Status.RUNNING)
    wait_past_age()
    young = make(store, Status.COMPLETED)
    before = time.time()
    deleted = store.delete_finished(AGE)
    after = time.time()
    assert sorted(deleted) == sorted(w.id for w in old)
    if epoch(young.finished_at or "") >= before - AGE:  # (else the machine stalled an AGE)
        assert young.id not in deleted
    assert all(epoch(w.finished_at or "") < after - AGE for w in old)
    for w in old:
        with pytest.raises(NotFoundError):
            store.get_workload(w.id)
        with pytest.raises(NotFoundError):
            store.list_events(w.id)
    assert rows_referencing(store, [w.id for w in old]) == dict.fromkeys(
        ["workload_labels", "events", "idempotency_keys", "workload_dependencies"], 0
    )
    assert store.get_workload(pending.id) == pending
    assert store.get_workload(running.id).status is Status.RUNNING
    assert rows_referencing(store, [pending.id])["workload_labels"] == 2
    assert {e.workload_id for e in store.list_events_after(0)} >= {pending.id, running.id}
    assert not {e.workload_id for e in store.list_events_after(0)} & set(deleted)
    # Its idempotency key went with it: the same key now creates anew.
    again, replayed = store.create_workload(SPEC, owner="alice", idempotency_key="k1")
    assert not replayed and again.id != old[0].id
    # A re-run deletes nothing more (the young one, if still young, stays).
    rerun = store.delete_finished(AGE)
    assert young.id in rerun or rerun == []
    assert store.delete_finished(AGE) == []


def test_zero_deletes_every_finished_one_and_a_huge_age_none(store: BlockingStore) -> None:
    done = make(store, Status.COMPLETED)
    tick(store)
    assert store.delete_finished(OLDER_THAN_MAX_SECONDS) == []
    assert store.delete_finished(0) == [done.id]


def test_the_newest_events_workload_is_kept_so_event_ids_never_go_back(
    store: BlockingStore,
) -> None:
    """SQLite gives a new row the table's largest id plus one: were the newest event
    deleted, the next event would take its id again, and a follower of the feed that
    had seen it (``Last-Event-ID``) would skip the new one. So its workload stays
    until a newer event exists (the same on PostgreSQL, whose ids come from a
    sequence anyway: one contract)."""
    first = make(store, Status.COMPLETED)
    last = make(store, Status.FAILED)
    seen = store.list_events_after(0)[-1].id  # a follower is here, at last's end
    assert store.delete_finished(0) == [first.id]
    assert store.get_workload(last.id) == last
    later = tick(store)
    assert [(e.workload_id, e.id > seen) for e in store.list_events_after(seen)] == [
        (later.id, True)
    ]
    assert store.delete_finished(0) == [last.id]
    newer = tick(store)
    assert [e.workload_id for e in store.list_events_after(seen)] == [later.id, newer.id]


def test_batches_are_at_most_the_limit(store: BlockingStore) -> None:
    ids = {make(store, Status.COMPLETED).id for _ in range(7)}
    tick(store)
    batches = [store.delete_finished(0, limit=3) for _ in range(4)]
    assert [len(b) for b in batches] == [3, 3, 1, 0]
    assert {i for b in batches for i in b} == ids


def test_an_owner_deletes_only_their_own(store: BlockingStore) -> None:
    alice = make(store, Status.COMPLETED, owner="alice")
    bob = make(store, Status.FAILED, owner="bob")
    tick(store)
    assert store.delete_finished(0, owner="carol") == []
    assert store.delete_finished(0, owner="alice") == [alice.id]
    assert store.get_workload(bob.id) == bob
    assert store.delete_finished(0) == [bob.id]


def test_a_dependency_of_a_pending_or_running_workload_is_kept_until_it_ends(
    store: BlockingStore,
) -> None:
    """The scheduler kills a pending dependant whose dependency does not exist
    (``admission.dependencies``: "dependency … does not exist"), afterok or afterany:
    so a finished dependency stays while anything that depends on it may still need
    it judged; it goes once they have all ended."""
    x = make(store, Status.COMPLETED)
    w = make(store, Status.COMPLETED)
    y = make(store, Status.PENDING, depends_on=[x.id])
    spec = WorkloadCreate(command=["true"], depends_on=[w.id], dependency_type="afterany")
    z, _ = store.create_workload(spec, owner="alice")
    finish(store, z.id, Status.RUNNING)
    lone = make(store, Status.FAILED)
    tick(store)
    assert store.delete_finished(0) == [lone.id]
    assert store.get_workload(x.id) == x and store.get_workload(w.id) == w
    assert store.statuses([y.id, z.id]) == {y.id: Status.PENDING, z.id: Status.RUNNING}
    finish(store, y.id, Status.COMPLETED)
    tick(store)
    assert sorted(store.delete_finished(0)) == sorted([x.id, y.id])
    store.update_workload_status(z.id, Status.COMPLETED, exit_code=0, actor="scheduler")
    tick(store)
    assert sorted(store.delete_finished(0)) == sorted([w.id, z.id])
    # A batch keeps its items' order of deletion free: dependants and dependencies
    # of one finished batch go together.
    items = [
        WorkloadBatchItem(command=["true"]),
        WorkloadBatchItem(command=["true"], depends_on=[0]),
    ]
    batch, _ = store.create_batch(items, owner="alice")
    for b in batch:
        finish(store, b.id, Status.COMPLETED)
    tick(store)
    assert sorted(store.delete_finished(0)) == sorted(b.id for b in batch)


def test_a_create_naming_a_deleted_workload_is_refused_as_unknown(store: BlockingStore) -> None:
    gone = make(store, Status.COMPLETED)
    tick(store)
    assert store.delete_finished(0) == [gone.id]
    with pytest.raises(FieldError) as info:
        store.create_workload(WorkloadCreate(command=["true"], depends_on=[gone.id]), owner="alice")
    assert str(info.value) == f"depends_on[0]: no workload has id {gone.id!r}"


def test_creates_naming_a_workload_race_its_delete_and_one_wins_whole(
    store_factory: Callable[[], BlockingStore],
) -> None:
    """A delete and creates that depend on the workload, at once, from several
    connections: either the delete wins (every create then names no workload: a
    FieldError, never a database error) or a create does (the workload stays, and
    every dependant created has it)."""
    store = store_factory()
    others = [store_factory() for _ in range(3)]
    outcomes = {"deleted": 0, "kept": 0}
    for _ in range(8):
        target = make(store, Status.COMPLETED)
        tick(store)
        created: list[str] = []
        errors: list[BaseException] = []
        go = threading.Barrier(len(others) + 1)

        def create(
            s: BlockingStore,
            target_id: str = target.id,
            go: threading.Barrier = go,
            created: list[str] = created,
            errors: list[BaseException] = errors,
        ) -> None:
            go.wait()
            for _ in range(3):
                try:
                    spec = WorkloadCreate(command=["true"], depends_on=[target_id])
                    created.append(s.create_workload(spec, owner="alice")[0].id)
                except FieldError:
                    pass
                except BaseException as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=create, args=(s,)) for s in others]
        for t in threads:
            t.start()
        go.wait()
        deleted = store.delete_finished(0)
        for t in threads:
            t.join()
        assert not errors, errors
        if target.id in deleted:
            outcomes["deleted"] += 1
            assert created == []
        else:
            outcomes["kept"] += 1
            assert store.get_workload(target.id) == target
        for dependant in created:
            assert store.get_workload(dependant).depends_on == [target.id]
        store.run(_kill_all(store))  # leave nothing pending to protect the next target
    assert sum(outcomes.values()) == 8


async def _kill_all(store: BlockingStore) -> None:
    for wid in await store.inner.pending_ids():
        await store.inner.update_workload_status(wid, Status.KILLED, actor="test")


@pytest.mark.parametrize(
    ("older_than", "limit"),
    [(-1, 10), (math.nan, 10), (math.inf, 10), (OLDER_THAN_MAX_SECONDS + 1, 10), (0, 0)],
    ids=["negative", "nan", "inf", "too-old", "no-limit"],
)
def test_delete_finished_checks_its_arguments(
    store: BlockingStore, older_than: float, limit: int
) -> None:
    make(store, Status.COMPLETED)
    with pytest.raises(InvalidInputError):
        store.delete_finished(older_than, limit=limit)
    with pytest.raises(InvalidInputError):
        store.delete_finished(0, limit=DELETE_BATCH_MAX + 1)
    assert store.count_workloads() == 1


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[BlockingStore]:
    """SQLite's own: its lock and its two steps (PostgreSQL takes no lock for a read,
    and finds and deletes in one transaction)."""
    opened = BlockingStore(AsyncSQLiteStore(tmp_path / "corral.db"))
    yield opened
    opened.close()


def test_with_none_due_a_delete_takes_no_write_lock(sqlite_store: BlockingStore) -> None:
    """SQLite: the walk for the ids due (which meets every workload created before
    the cutoff that ended after it: 270 ms at a million) is a read; with none due the
    write lock is never taken (it was held for the walk, every writer waiting)."""
    store = sqlite_store
    path = store.inner.path
    make(store, Status.COMPLETED)  # not an hour old
    tick(store)
    holder = sqlite3.connect(path, isolation_level=None)
    quick = SQLiteStore(path, busy_timeout_ms=200)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        assert quick.delete_finished(3600) == []
        assert store.delete_finished(3600) == []
        assert quick.delete_finished(0, owner="bob") == []
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        quick.close()
    assert len(store.delete_finished(0)) == 1


def test_ids_found_due_are_checked_again_under_the_lock(sqlite_store: BlockingStore) -> None:
    """SQLite: a workload found due that a create made a dependency of meanwhile is
    kept; a full batch left short by it is filled by walking again, so that a short
    batch still means none are left."""
    store = sqlite_store
    path = store.inner.path
    sync = SQLiteStore(path)
    try:
        done = [make(store, Status.COMPLETED).id for _ in range(4)]
        tick(store)
        now = time.time()
        found = sync.due_ids(now, 0, owner=None, limit=3)
        assert found == done[:3]
        make(store, Status.PENDING, depends_on=[found[0]])
        deleted = sync.delete_due(found, now, 0, owner=None, limit=3)
        assert deleted == done[1:]  # the first kept; the fourth, walked to again
        found = sync.due_ids(now, 0, owner=None, limit=3)
        assert found == []
        assert sync.delete_due(done, now, 0, owner="alice", limit=3) == []  # gone, or still needed
    finally:
        sync.close()


class SkewedTime:
    """The ``time`` module as a store module sees it, its wall clock ``behind``
    seconds behind the real one (and the database's)."""

    def __init__(self, behind: float) -> None:
        self.behind = behind

    def time(self) -> float:
        return time.time() - self.behind

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def skew_server_clock(monkeypatch: pytest.MonkeyPatch, store: BlockingStore, behind: float) -> None:
    """Set the clock of the server that ``store`` serves ``behind`` seconds back: the
    times and ids it stamps (``now_rfc3339``, ``new_id``) and its own reads of it."""
    import corral.store.postgres
    import corral.store.sqlite
    import corral.store.sqlite_async

    module = corral.store.sqlite if is_sqlite(store) else corral.store.postgres
    clock = SkewedTime(behind)
    if is_sqlite(store):
        monkeypatch.setattr(corral.store.sqlite_async, "time", clock)

    def skewed_id() -> str:
        value = (int(clock.time() * 1000) << 80) | int.from_bytes(os.urandom(10))
        return "".join(_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS)

    monkeypatch.setattr(module, "time", clock)
    monkeypatch.setattr(module, "now_rfc3339", lambda: rfc3339_at(clock.time()))
    monkeypatch.setattr(module, "new_id", skewed_id)


def test_a_server_clock_behind_the_databases_does_not_hasten_a_deletion(
    store: BlockingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose clock is 10 minutes behind the database's stamps what it ends
    by its clock; ``--older-than 1m`` keeps it for a minute by that clock, not by the
    database's (on PostgreSQL the cutoff was the database's: deleted at once)."""
    skew_server_clock(monkeypatch, store, 600)
    done = make(store, Status.COMPLETED)
    tick(store)
    assert store.delete_finished(60.0) == []
    skew_server_clock(monkeypatch, store, 600 - 61)  # a minute on, by the server's clock
    assert store.delete_finished(60.0) == [done.id]


def test_interval_is_half_the_age_within_bounds() -> None:
    assert interval_for(7 * 86400) == 300
    assert interval_for(120) == 60
    assert interval_for(10) == 30
    assert interval_for(2, min_interval=0.5) == 1


# --- Retention: batches, logs, under load ------------------------------------------------


def retention(store: BlockingStore, logs: Path) -> Retention:
    logs.mkdir(exist_ok=True)
    return Retention(store.inner, Scheduler(store.inner), logs)


def write_log(logs: Path, workload_id: str) -> Path:
    path = logs / f"{workload_id}.log"
    path.write_text(f"output of {workload_id}\n")
    return path


def test_retention_deletes_batch_after_batch_and_removes_their_logs(
    store: BlockingStore, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    keep = retention(store, logs)
    specs = [WorkloadBatchItem(command=["true"]) for _ in range(DELETE_BATCH_MAX + 20)]
    batch, _ = store.create_batch(specs, owner="alice")
    for w in batch:
        finish(store, w.id, Status.KILLED)
        write_log(logs, w.id)
    running = make(store, Status.RUNNING)
    write_log(logs, running.id)
    stray_old = "00000000000000000000000000"  # no such workload, made long ago
    write_log(logs, stray_old)
    (logs / "notes.txt").write_text("not a log")
    for wid in (batch[0].id, running.id, stray_old):  # capped logs' tails (logs.py)
        (logs / f"{wid}.log.ring").write_bytes(b"ring")
    calls: list[int] = []
    inner = store.inner.delete_finished

    async def counted(*args: Any, **kwargs: Any) -> list[str]:
        found: list[str] = await inner(*args, **kwargs)
        calls.append(len(found))
        return found

    keep.store = type("Counted", (), {"delete_finished": staticmethod(counted)})()  # type: ignore[assignment]
    assert store.run(keep.clean(0)) == len(batch)
    assert calls == [DELETE_BATCH_MAX, 20]
    keep.store = store.inner
    kept = [f"{running.id}.log", f"{running.id}.log.ring", "notes.txt"]
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        [*kept, f"{stray_old}.log", f"{stray_old}.log.ring"]
    )
    # The sweep: the stray log of no workload goes; a young id is not even asked about.
    stray_young = new_id()
    write_log(logs, stray_young)
    assert store.run(keep.sweep_logs(60)) == 1
    assert store.run(keep.sweep_logs(60)) == 0
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        [f"{running.id}.log", f"{running.id}.log.ring", f"{stray_young}.log", "notes.txt"]
    )
    assert store.run(keep.sweep_logs(0)) == 1  # now it is asked, and it is not there
    assert store.run(keep.clean(0)) == 0


class Load:
    """Other connections at work while retention runs: submitters (each new workload
    gets its log once created, as the executor writes it once it runs; two in three
    are moved to an end; some pending ones depend on an old workload of alice's),
    and a reader of workloads, pages, counts, events and the event feed."""

    def __init__(self, store_factory: Callable[[], BlockingStore], logs: Path, old: list[str]):
        self.logs = logs
        self.old = old
        self.stop = threading.Event()
        self.young: dict[str, Workload] = {}
        """Created by the load, as last written (status, finished_at)."""
        self.dependants: dict[str, str] = {}
        """Created by the load: id -> the old workload it depends on."""
        self.refused: list[str] = []
        """Old ids a create named after they were deleted (FieldError)."""
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._guarded, args=(self._submit, store_factory(), n))
            for n in range(2)
        ]
        self._threads.append(
            threading.Thread(target=self._guarded, args=(self._read, store_factory(), 0))
        )

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join()

    def _guarded(
        self, work: Callable[[BlockingStore, int], None], s: BlockingStore, n: int
    ) -> None:
        try:
            while not self.stop.is_set():
                work(s, n)
        except BaseException as exc:
            self.errors.append(exc)

    def _submit(self, s: BlockingStore, n: int) -> None:
        i = len(self.young) + n
        w = make(s, Status.PENDING, owner=("alice", "bob")[i % 2])
        write_log(self.logs, w.id)
        if i % 3:
            w = finish(s, w.id, (Status.COMPLETED, Status.FAILED, Status.KILLED)[i % 3])
        with self._lock:
            self.young[w.id] = w
        if i % 4 == 0:
            target = self.old[(n * 97 + i * 31) % len(self.old)]
            try:
                d = make(s, Status.PENDING, owner="alice", depends_on=[target])
            except FieldError:
                self.refused.append(target)
            else:
                with self._lock:
                    self.dependants[d.id] = target

    def _read(self, s: BlockingStore, n: int) -> None:
        s.list_workloads(limit=100)
        s.list_workloads(owner="alice", statuses=[Status.COMPLETED], limit=50)
        s.count_by_status()
        s.list_events_after(0, limit=200)
        for wid in self.old[:50]:
            with contextlib.suppress(NotFoundError):
                s.get_workload(wid)
                s.list_events(wid)


def old_and_active(store: BlockingStore) -> tuple[dict[str, Workload], dict[str, Workload]]:
    """Finished workloads of alice and bob (more than a batch), some of alice's held
    by a pending dependant; pending and running ones of both."""
    old: dict[str, Workload] = {}
    for i in range(DELETE_BATCH_MAX + 150):
        status = (Status.COMPLETED, Status.FAILED, Status.KILLED)[i % 3]
        w = make(store, status, owner="bob" if i % 4 == 0 else "alice", key=f"o{i}")
        old[w.id] = w
    active: dict[str, Workload] = {}
    for i in range(30):
        w = make(store, Status.RUNNING if i % 2 else Status.PENDING, owner=("alice", "bob")[i % 2])
        active[w.id] = w
    for held in [w for w in old.values() if w.owner == "alice"][:20]:
        d = make(store, Status.PENDING, owner="alice", depends_on=[held.id])
        active[d.id] = d
    return old, active


def test_retention_deletes_exactly_the_right_rows_and_logs_under_concurrent_load(
    store_factory: Callable[[], BlockingStore], tmp_path: Path
) -> None:
    """While the ``Load`` goes on, alice cleans her own, then an admin everyone's,
    then this server's logs are swept. Exactly the finished workloads past the age
    without a pending or running dependant go, with their logs; everything else, and
    its log (also of the workloads created while the sweep looked), stays."""
    store = store_factory()
    logs = tmp_path / "logs"
    keep = retention(store, logs)
    old, active = old_and_active(store)
    for wid in [*old, *active]:
        write_log(logs, wid)
    bob_old = [wid for wid, w in old.items() if w.owner == "bob"]
    wait_past_age()
    with Load(store_factory, logs, [w for w in old if old[w].owner == "alice"]) as load:
        time.sleep(0.3)  # the load is under way
        t0 = time.time()
        alice_deleted = store.run(keep.delete(AGE, owner="alice"))
        assert len(store.statuses(bob_old)) == len(bob_old)  # a user's clean: theirs only
        everyone_count = store.run(keep.clean(AGE))
        t1 = time.time()
        swept = store.run(keep.sweep_logs(0))  # every log asked about, the newest too
        time.sleep(0.2)
    assert not load.errors, load.errors
    assert load.young and load.dependants  # the load did happen

    everything = {**old, **active, **load.young}
    ids_now = set(store.statuses([*everything, *load.dependants]))
    deleted = set(everything) - ids_now
    assert len(alice_deleted) + everyone_count == len(deleted)
    assert all(everything[w].owner == "alice" for w in alice_deleted)
    assert not (set(load.dependants) | set(active)) - ids_now  # nothing pending or running
    # Every dependency of a pending or running one is there (the scheduler would kill
    # it else).
    for w in store.get_workloads([*active, *load.dependants]):
        if w.status in (Status.PENDING, Status.RUNNING):
            assert set(w.depends_on) <= ids_now, w
    # Old ones (all past the age): deleted unless a pending dependant held them.
    holders = {d for w in active.values() for d in w.depends_on} | set(load.dependants.values())
    assert {w for w in old if w not in deleted} == holders & set(old)
    assert set(load.refused) <= deleted
    # Young ones: gone only if finished and past the age by the end; kept if not yet.
    check_young(load.young, deleted, t0, t1)
    # Logs: exactly those of the deleted went: the admin's by its clean, alice's (her
    # delete leaves them) by the sweep, which removed no log of a workload created
    # while it looked.
    assert swept == len(alice_deleted)
    assert {p.name.removesuffix(".log") for p in logs.iterdir()} == set(everything) - deleted
    # A re-run deletes nothing that was due when the clean began.
    assert not set(store.run(keep.delete(AGE))) - set(load.young)
    check_young(load.young, deleted, t0, t1)


def check_young(young: dict[str, Workload], deleted: set[str], t0: float, t1: float) -> None:
    for wid, w in young.items():
        finished = epoch(w.finished_at) if w.finished_at else math.inf
        if wid in deleted:
            assert finished < t1 - AGE, w
        else:
            assert finished >= t0 - AGE, f"{wid} was past the age when the clean began, yet kept"


def test_a_user_clean_leaves_other_users_alone_under_a_concurrent_admin_read(
    store: BlockingStore, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    keep = retention(store, logs)
    mine = [make(store, Status.COMPLETED, owner="alice") for _ in range(3)]
    theirs = [make(store, Status.COMPLETED, owner="bob") for _ in range(3)]
    for w in [*mine, *theirs]:
        write_log(logs, w.id)
    assert store.run(keep.clean(0, owner="alice")) == 3
    assert {p.name for p in logs.iterdir()} == {f"{w.id}.log" for w in theirs}
    assert sorted(store.statuses([w.id for w in [*mine, *theirs]])) == sorted(w.id for w in theirs)


def test_a_log_of_a_workload_still_stopping_here_is_kept(
    store: BlockingStore, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    keep = retention(store, logs)
    stopping = make(store, Status.KILLED)
    write_log(logs, stopping.id)
    tick(store)
    keep.scheduler.is_active = lambda wid: wid == stopping.id  # type: ignore[method-assign]
    assert store.run(keep.clean(0)) == 1
    assert (logs / f"{stopping.id}.log").exists()
    assert store.run(keep.sweep_logs(0)) == 0
    keep.scheduler.is_active = lambda wid: False  # type: ignore[method-assign]
    assert store.run(keep.sweep_logs(0)) == 1
    assert not (logs / f"{stopping.id}.log").exists()


def test_the_sweep_removes_what_a_capped_log_left_without_the_log(
    store: BlockingStore, tmp_path: Path
) -> None:
    """A ring, or a ring in the making, of a workload no longer there, with no
    ``<id>.log`` beside it: swept too (only ``<id>.log`` names were listed)."""
    logs = tmp_path / "logs"
    keep = retention(store, logs)
    ring_only, tmp_only = new_id(), new_id()  # no such workloads
    (logs / f"{ring_only}.log.ring").write_bytes(b"ring")
    (logs / f"{tmp_only}.log.ring.tmp").write_bytes(b"ring in the making")
    running = make(store, Status.RUNNING)
    (logs / f"{running.id}.log.ring.tmp").write_bytes(b"")
    (logs / f"{tmp_only}.txt").write_text("not a log")
    assert store.run(keep.sweep_logs(0)) == 2
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        [f"{running.id}.log.ring.tmp", f"{tmp_only}.txt"]
    )


def test_a_log_the_os_refuses_to_remove_is_logged_and_the_rest_go(
    store: BlockingStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The rows are deleted already: a file that cannot be removed (here a directory
    where a ring would be) is a warning, not a failed clean (a 500)."""
    logs = tmp_path / "logs"
    keep = retention(store, logs)
    stuck, other = make(store, Status.COMPLETED), make(store, Status.FAILED)
    write_log(logs, stuck.id)
    write_log(logs, other.id)
    (logs / f"{stuck.id}.log.ring").mkdir()
    (logs / f"{stuck.id}.log.ring" / "in-the-way").touch()
    tick(store)
    with caplog.at_level(logging.WARNING, logger="corral.logs"):
        assert store.run(keep.clean(0)) == 2
    assert sorted(p.name for p in logs.iterdir()) == [f"{stuck.id}.log.ring"]
    assert f"cannot remove the log {logs / stuck.id}.log.ring" in caplog.text


def test_the_task_counts_the_logs_of_what_it_deleted(
    store: BlockingStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    keep = Retention(
        store.inner, Scheduler(store.inner), logs, retain_seconds=0.3, min_interval=0.2
    )
    done = make(store, Status.COMPLETED)
    write_log(logs, done.id)
    tick(store)
    time.sleep(0.5)
    assert store.run(keep.run_once()) == (1, 1)  # (1, 0): only the sweep's were counted
    done = make(store, Status.FAILED)
    write_log(logs, done.id)
    tick(store)
    time.sleep(0.5)

    with caplog.at_level(logging.INFO, logger="corral.retention"):
        store.run(run_task_for(keep, 0.5))
    said = [r.getMessage() for r in caplog.records if r.name == "corral.retention"]
    assert said == ["retention: deleted 1 finished workload, removed 1 log"]


def test_the_task_runs_at_once_and_again_and_survives_a_failure(
    store: BlockingStore, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    runs: list[int] = []
    fail = [True]

    async def deletes_rows() -> bool:
        runs.append(len(runs))
        if fail[0]:
            fail[0] = False
            raise CorralError("the database is away")
        return True

    keep = Retention(
        store.inner,
        Scheduler(store.inner),
        logs,
        retain_seconds=0.4,
        min_interval=0.2,
        deletes_rows=deletes_rows,
    )
    assert keep.interval == 0.2
    done = make(store, Status.COMPLETED)
    tick(store)

    store.run(run_task_for(keep, 1.5))
    assert len(runs) >= 3  # at once (failed), then every 0.2 s
    with pytest.raises(NotFoundError):
        store.get_workload(done.id)
    assert Retention(store.inner, Scheduler(store.inner), logs).start() is None


def test_a_fault_midway_leaves_the_batches_done_without_their_logs(
    store: BlockingStore, tmp_path: Path
) -> None:
    """A clean the database stops after a batch (a 503 or 507 to the client) has
    removed that batch's logs already: a retry would not know them."""
    logs = tmp_path / "logs"
    keep = retention(store, logs)
    batch, _ = store.create_batch(
        [WorkloadBatchItem(command=["true"]) for _ in range(DELETE_BATCH_MAX + 5)], owner="alice"
    )
    for w in batch:
        finish(store, w.id, Status.KILLED)
        write_log(logs, w.id)
    tick(store)
    inner = store.inner.delete_finished
    calls: list[int] = []

    async def failing(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(1)
        if len(calls) > 1:
            raise StoreBusyError("the database is locked")
        found: list[str] = await inner(*args, **kwargs)
        return found

    keep.store = type("Failing", (), {"delete_finished": staticmethod(failing)})()  # type: ignore[assignment]
    with pytest.raises(StoreBusyError):
        store.run(keep.clean(0))
    left = {p.name.removesuffix(".log") for p in logs.iterdir()}
    assert left == set(store.statuses([w.id for w in batch]))
    assert len(left) == 5
