"""What only PostgreSQL has to show (the shared contract is test_store_contract.py):
timestamps read back as corral's strings, faults as domain errors (an unreachable
server, a lost connection, a lock timeout; a full disk is test_faults.py's, on both
databases), and races between stores in different sessions on idempotency keys."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from bench.pg_server import free_port

from corral.errors import FieldError, InvalidInputError
from corral.model import Status, WorkloadBatchItem, WorkloadCreate
from corral.store import StorageFullError, Store, StoreBusyError
from corral.store.base import NewWorkload
from corral.store.errors import (
    DatabaseError,
    DatabaseRefusedError,
    DatabaseUnreachableError,
    IdempotencyKeyReusedError,
)
from corral.store.postgres import PostgresStore, _domain_error, pool_size_from_env
from tests.blocking import BlockingStore

SPEC = WorkloadCreate(command=["true"])
RFC3339 = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"


@pytest.fixture
def store_kind() -> str:
    return "postgresql"


def sql(store: Store, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement on the store's database, from a session of its own."""
    with psycopg.connect(store.url, autocommit=True) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def test_timestamps_read_back_as_the_strings_sqlite_stores(store: Store) -> None:
    """``timestamptz`` comes back in UTC with six digits of fraction, whatever
    PostgreSQL's text drops (a zero fraction, trailing zeros) and whatever the
    database's own time zone."""
    sql(store, "ALTER DATABASE " + store.url.rsplit("/", 1)[1] + " SET TimeZone = 'Asia/Tokyo'")
    fresh = BlockingStore(PostgresStore(store.url, migrate_schema=False))
    try:
        w, _ = fresh.create_workload(SPEC, owner="alice")
        assert fresh.get_workload(w.id) == w
        for at, expected in [
            ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05.000000Z"),
            ("2026-01-02T03:04:05.12Z", "2026-01-02T03:04:05.120000Z"),
            ("2026-01-02T12:04:05.000001+09:00", "2026-01-02T03:04:05.000001Z"),
        ]:
            sql(store, "UPDATE workloads SET created_at = %s WHERE id = %s", (at, w.id))
            assert fresh.get_workload(w.id).created_at == expected
        events = fresh.list_events(w.id)
        assert events[0].at == w.created_at
    finally:
        fresh.close()


def test_an_unreachable_database_is_a_503_naming_it(tmp_path: Path) -> None:
    """Nothing listens on the port: opening (the migration) and every call are
    ``DatabaseUnreachableError``, a ``StoreBusyError`` (503, retry later), never a
    psycopg error."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/corral"
    with pytest.raises(DatabaseUnreachableError, match="unreachable") as info:
        PostgresStore(url)
    assert "refused" in str(info.value)
    store = BlockingStore(PostgresStore(url, migrate_schema=False, timeout=0.5))
    try:
        with pytest.raises(DatabaseUnreachableError, match="the database is unreachable"):
            store.get_workload("01m8n0ne000000000000000000")
        with pytest.raises(StoreBusyError):
            store.create_workload(SPEC, owner="alice")
    finally:
        store.close()


def test_a_refused_connection_says_what_to_fix_not_to_wait(store: Store) -> None:
    """An unknown role or database is no outage: opening the store (as `corral serve`
    does first) quotes the server's refusal and names what to check. (Later, the
    pool's connection attempts log the refusal and a call waiting for a connection
    is a plain 503: the pool does not hand its last error to the caller.)"""
    base, db = store.url.rsplit("/", 1)
    scheme, rest = base.split("://", 1)
    host = rest.split("@", 1)[1]
    for url, said in [
        (f"{scheme}://nobody@{host}/{db}", 'role "nobody" does not exist'),
        (f"{base}/no_such_db", 'database "no_such_db" does not exist'),
    ]:
        with pytest.raises(DatabaseRefusedError) as info:
            PostgresStore(url)
        message = str(info.value)
        assert said in message and "check the user, password and database name" in message
        assert "retry" not in message and "FATAL" not in message
        assert isinstance(info.value, StoreBusyError)  # a 503 to API callers


def test_a_lost_connection_is_unreachable_and_the_pool_recovers(store: Store) -> None:
    w, _ = store.create_workload(SPEC, owner="alice")
    store.get_workload(w.id)  # the pool's connections are open
    ended = sql(
        store,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    assert ended, "no session of the store to end"
    outcomes = []
    for _ in range(5):  # each dead connection fails once, then the pool replaces it
        try:
            outcomes.append(store.get_workload(w.id) == w)
        except DatabaseUnreachableError:
            outcomes.append(False)
    assert outcomes[0] is False and outcomes[-1] is True, outcomes


def test_a_lock_held_past_lock_timeout_is_busy(store: Store) -> None:
    """With the database's ``lock_timeout``, a transition waiting on a row another
    session holds is ``StoreBusyError`` (503 busy), and changes nothing."""
    w, _ = store.create_workload(SPEC, owner="alice")
    sql(store, "ALTER DATABASE " + store.url.rsplit("/", 1)[1] + " SET lock_timeout = '200ms'")
    impatient = BlockingStore(PostgresStore(store.url, migrate_schema=False))
    holder = psycopg.connect(store.url)
    try:
        holder.execute("SELECT 1 FROM workloads WHERE id = %s FOR UPDATE", (w.id,))
        with pytest.raises(StoreBusyError, match="lock") as info:
            impatient.update_workload_status(w.id, Status.RUNNING)
        assert not isinstance(info.value, DatabaseUnreachableError)
        holder.rollback()
        assert impatient.get_workload(w.id) == w
        assert impatient.update_workload_status(w.id, Status.RUNNING).status is Status.RUNNING
    finally:
        holder.close()
        impatient.close()


def test_a_pending_reason_never_waits_for_a_row_lock(store: Store) -> None:
    """A reason is advice: a row another session holds keeps its old one, and the
    call returns at once instead of waiting for the lock (the scheduler awaits it)."""
    held, _ = store.create_workload(SPEC, owner="alice")
    free, _ = store.create_workload(SPEC, owner="alice")
    holder = psycopg.connect(store.url)
    try:
        holder.execute("SELECT 1 FROM workloads WHERE id = %s FOR UPDATE", (held.id,))
        with ThreadPoolExecutor(1) as pool:
            setting = pool.submit(
                store.set_pending_reasons,
                [(held.id, "waiting for 1 CPU"), (free.id, "waiting too")],
            )
            try:
                setting.result(timeout=5)  # (were it waiting for the lock: a timeout)
            finally:
                holder.rollback()
        assert store.get_workload(held.id).reason is None
        assert store.get_workload(free.id).reason == "waiting too"
    finally:
        holder.close()


def test_racing_creates_with_one_idempotency_key_make_one_workload(
    store_factory: Callable[[], Store],
) -> None:
    """Eight sessions submit the same body with the same key at once, for 20 keys: each
    key makes one workload, every caller gets it, one of them as created; a different
    body with a taken key is refused. (The losers' inserts fail on the key's index;
    the store reruns them, finding the winner's row.)"""
    stores = [store_factory() for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    results: dict[int, list[tuple[str, bool]]] = {}
    errors: list[BaseException] = []

    def submit(index: int) -> None:
        try:
            mine = []
            for k in range(20):
                barrier.wait(timeout=30)
                w, replayed = stores[index].create_workload(
                    SPEC, owner="alice", idempotency_key=f"k{k}"
                )
                mine.append((w.id, replayed))
            results[index] = mine
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for k in range(20):
        answers = [results[i][k] for i in range(len(stores))]
        assert len({wid for wid, _ in answers}) == 1, answers
        assert sorted(replayed for _, replayed in answers) == [False] + [True] * 7
    assert stores[0].count_workloads() == 20
    with pytest.raises(IdempotencyKeyReusedError):
        stores[0].create_workload(
            WorkloadCreate(command=["false"]), owner="alice", idempotency_key="k0"
        )


def test_group_commits_taking_keys_in_opposite_orders_all_land(
    store_factory: Callable[[], Store],
) -> None:
    """Two group commits write the same 40 keys, one in reverse order, at once: they
    may deadlock on the keys' index, which PostgreSQL breaks by failing one; the store
    reruns it. Every key ends with one workload, created by one call, replayed by the
    other."""
    one, other = store_factory(), store_factory()

    def run(
        barrier: threading.Barrier, store: Store, batch: list[NewWorkload], out: list[Any]
    ) -> None:
        barrier.wait(timeout=30)
        try:
            out.extend(store.create_workloads(batch))
        except BaseException as exc:
            out.append(exc)

    for rnd in range(5):
        keys = [f"r{rnd}-{k}" for k in range(40)]
        items = [NewWorkload(SPEC, "alice", idempotency_key=k) for k in keys]
        barrier = threading.Barrier(2)
        forward: list[Any] = []
        backward: list[Any] = []
        threads = [
            threading.Thread(target=run, args=(barrier, one, items, forward)),
            threading.Thread(target=run, args=(barrier, other, items[::-1], backward)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        backward.reverse()
        assert all(isinstance(r, tuple) for r in forward + backward), (forward, backward)
        for a, b in zip(forward, backward, strict=True):
            assert a[0].id == b[0].id and {a[1], b[1]} == {False, True}
    assert one.count_workloads() == 200


def test_a_nul_in_a_name_is_refused_alone(store: Store) -> None:
    """PostgreSQL's text cannot hold a NUL (SQLite's can): a name with one is a field
    error of its own item, the group commit's other items are stored; as a filter it is
    invalid input, never a 500. (The API's models refuse a NUL first; the store's own
    guard is checked here with specs built past them.)"""
    bad = WorkloadCreate.model_construct(**{**SPEC.model_dump(), "name": "a\x00b"})
    results = store.create_workloads([NewWorkload(SPEC, "alice"), NewWorkload(bad, "alice")])
    assert isinstance(results[1], FieldError) and results[1].loc == ("name",)
    assert not isinstance(results[0], Exception)
    with pytest.raises(FieldError, match=r"items\[1\]\.name"):
        store.create_batch(
            [
                WorkloadBatchItem(command=["true"]),
                WorkloadBatchItem.model_construct(
                    **{**WorkloadBatchItem(command=["x"]).model_dump(), "name": "\x00"}
                ),
            ],
            owner="alice",
        )
    with pytest.raises(InvalidInputError, match="NUL"):
        store.list_workloads(name="a\x00b")
    assert store.count_workloads() == 1


def test_listings_are_planned_for_their_values_every_time(store: Store) -> None:
    """A listing's best plan depends on its values (a rare status walks its index, a
    common one the ids), so it is never a prepared statement, whose generic plan
    PostgreSQL picks after five runs (measured at 10^6 workloads: 5-7 ms with custom
    plans, up to 55 ms with the generic one); a get by id may be."""
    one = BlockingStore(PostgresStore(store.url, pool_size=1, migrate_schema=False))
    try:
        w, _ = one.create_workload(WorkloadCreate(command=["true"], labels={"t": "a"}), owner="a")
        for _ in range(12):
            one.list_workloads(statuses=[Status.PENDING], labels=[("t", "a")], owner="a")
            one.count_workloads(statuses=[Status.PENDING], labels=[("t", "a")], owner="a")
            one.get_workload(w.id)
        prepared = one.run(one.inner._fetch("SELECT statement FROM pg_prepared_statements"))
    finally:
        one.close()
    statements = [r[0] for r in prepared]
    assert not [s for s in statements if "workload_labels" in s], statements
    assert [s for s in statements if s.endswith("FROM workloads WHERE id = $1")]


def test_the_pool_size_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_DB_POOL_SIZE", raising=False)
    assert pool_size_from_env() == 10
    monkeypatch.setenv("CORRAL_DB_POOL_SIZE", "3")
    assert pool_size_from_env() == 3
    for bad in ("0", "-1", "many"):
        monkeypatch.setenv("CORRAL_DB_POOL_SIZE", bad)
        with pytest.raises(ValueError, match="CORRAL_DB_POOL_SIZE must be a positive integer"):
            pool_size_from_env()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (psycopg.errors.DiskFull, StorageFullError),
        (psycopg.errors.DeadlockDetected, StoreBusyError),
        (psycopg.errors.SerializationFailure, StoreBusyError),
        (psycopg.errors.TooManyConnections, StoreBusyError),
        (psycopg.errors.OutOfMemory, StoreBusyError),
        (psycopg.errors.LockNotAvailable, StoreBusyError),
        (psycopg.errors.QueryCanceled, StoreBusyError),
        (psycopg.errors.AdminShutdown, DatabaseUnreachableError),
        (psycopg.errors.CannotConnectNow, DatabaseUnreachableError),
        (psycopg.errors.ConnectionFailure, DatabaseUnreachableError),
        (psycopg.OperationalError, DatabaseUnreachableError),  # no SQLSTATE: no connection
        (psycopg.errors.UniqueViolation, DatabaseError),
        (psycopg.errors.UndefinedTable, DatabaseError),
        (psycopg.errors.RaiseException, DatabaseError),
    ],
)
def test_each_sqlstate_class_is_its_domain_error(
    error: type[psycopg.Error], expected: type[Exception]
) -> None:
    """psycopg's error classes do not nest by SQLSTATE class (a deadlock is not a
    ``TransactionRollback`` subclass there): the mapping goes by the code."""
    mapped = _domain_error(error("what the server said"))
    assert type(mapped) is expected and "what the server said" in str(mapped)
