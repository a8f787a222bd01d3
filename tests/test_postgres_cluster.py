"""What only PostgreSQL has of several servers on one database (the shared contract is
test_store_cluster.py): notifications sent on commit only, one per transaction;
``listen`` on a connection of its own, reconnecting; the fence against an acquire in
another session, both ways round."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from corral.model import Status, WorkloadBatchItem, WorkloadCreate
from corral.store import IdempotencyKeyReusedError, InvalidTransitionError, Store
from corral.store.base import NewWorkload
from corral.store.cluster import Fence, FencedError, ServerInfo
from corral.store.errors import DatabaseError, DatabaseUnreachableError
from corral.store.postgres import PostgresStore
from corral.store.postgres_cluster import (
    FENCE_SQL,
    KILL,
    LISTEN_APPLICATION_NAME,
    NOTIFY_PAYLOAD_MAX_BYTES,
    SESSION_PREFIX,
    WAKE,
    fence_params,
    wake_payload,
)
from tests import pg
from tests.blocking import BlockingStore

SPEC = WorkloadCreate(command=["true"])
WAIT_SECONDS = 30.0
"""How long a test waits for what must happen (never a measure of speed)."""
_names = itertools.count(1)


@pytest.fixture
def store_kind() -> str:
    return "postgresql"


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement on the database at ``url``, from a session of its own."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def wait_until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        assert time.monotonic() < deadline, f"still not the case after {WAIT_SECONDS} s: {what}"
        time.sleep(0.01)


class Notes:
    """A session of its own that listens on the store's channels, as another server."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f"LISTEN {WAKE}")
        self.conn.execute(f"LISTEN {KILL}")
        self._got: list[tuple[str, str]] = []

    def next(self) -> tuple[str, str]:
        """The next notification (channel, payload), in the order sent."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not self._got:
            left = deadline - time.monotonic()
            assert left > 0, "no notification came"
            # stop_after=1 may yield a few that came in one packet: keep them all
            for n in self.conn.notifies(timeout=left, stop_after=1):
                self._got.append((n.channel, n.payload))
        return self._got.pop(0)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def notes(store: Store) -> Iterator[Notes]:
    listener = Notes(store.url)
    yield listener
    listener.close()


def waiting_on_locks(url: str, query_like: str) -> int:
    """Sessions whose statement matches ``query_like`` and waits for a lock."""
    rows = sql(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE %s",
        (query_like,),
    )
    return int(rows[0][0])


@contextmanager
def refused_at_commit(url: str, table: str, when: str = "true") -> Iterator[None]:
    """While inside, the database refuses, when the transaction commits, every one
    that inserted rows of ``table`` where ``when`` holds (a deferred constraint
    trigger): after every statement of it, the ``pg_notify`` included, has run."""
    name = f"refuse_at_commit_{next(_names)}"
    sql(
        url,
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'refused at commit by the test'; END $$",
    )
    sql(
        url,
        f"CREATE CONSTRAINT TRIGGER {name} AFTER INSERT ON {table}"
        f" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN ({when})"
        f" EXECUTE FUNCTION {name}()",
    )
    try:
        yield
    finally:
        sql(url, f"DROP TRIGGER {name} ON {table}; DROP FUNCTION {name}()")


# --- NOTIFY --------------------------------------------------------------------------


def test_a_create_notifies_its_id_on_commit_and_a_refused_one_nothing(
    store: Store, notes: Notes
) -> None:
    before = store.count_workloads()
    with refused_at_commit(store.url, "workloads"), pytest.raises(DatabaseError, match="commit"):
        store.create_workload(SPEC, owner="alice")
    assert store.count_workloads() == before
    w, _ = store.create_workload(SPEC, owner="alice")
    assert notes.next() == (WAKE, w.id)  # the refused one sent nothing before it


def test_a_notification_goes_out_when_its_transaction_commits(store: Store, notes: Notes) -> None:
    """A create held at its commit (a deferred trigger waits for a lock the test
    holds) has run its ``pg_notify`` already; another create that commits meanwhile
    is notified first, and the held one only once it commits."""
    sql(
        store.url,
        "CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN PERFORM pg_advisory_xact_lock(4343); RETURN NULL; END $$",
    )
    sql(
        store.url,
        "CREATE CONSTRAINT TRIGGER hold AFTER INSERT ON workloads DEFERRABLE INITIALLY DEFERRED"
        " FOR EACH ROW WHEN (NEW.name = 'held') EXECUTE FUNCTION hold()",
    )
    gate = psycopg.connect(store.url, autocommit=True)
    gate.execute("SELECT pg_advisory_lock(4343)")
    with ThreadPoolExecutor(1) as pool:
        try:
            held = pool.submit(
                store.create_workload, WorkloadCreate(command=["true"], name="held"), owner="a"
            )
            # (its COMMIT, or the end of its one statement: a create without a key is one)
            wait_until(
                "the create waits at its commit", lambda: waiting_on_locks(store.url, "%") == 1
            )
            quick, _ = store.create_workload(SPEC, owner="alice")
            assert notes.next() == (WAKE, quick.id)
        finally:
            gate.execute("SELECT pg_advisory_unlock(4343)")
            gate.close()
        w, _ = held.result(timeout=WAIT_SECONDS)
    assert notes.next() == (WAKE, w.id)


def test_one_notification_per_transaction_with_its_ids_and_none_for_a_replay(
    store: Store, notes: Notes
) -> None:
    items = [NewWorkload(SPEC, "alice", key, None) for key in ("k1", None, "k2")]
    made = store.create_workloads(items)  # one group commit
    ids = [r[0].id for r in made if not isinstance(r, Exception)]
    assert len(ids) == 3
    other = WorkloadCreate(command=["false"])
    replays = store.create_workloads(
        [NewWorkload(SPEC, "alice", "k1", None), NewWorkload(other, "alice", "k2", None)]
    )
    assert replays[0] == (made[0][0], True)  # type: ignore[index]
    assert isinstance(replays[1], IdempotencyKeyReusedError)
    batch, _ = store.create_batch([WorkloadBatchItem(command=["true"])] * 2, owner="alice")
    assert notes.next() == (WAKE, ",".join(ids))
    assert notes.next() == (WAKE, ",".join(w.id for w in batch))  # nothing for the replays


def test_a_batch_too_big_for_one_payload_notifies_a_star(store: Store, notes: Notes) -> None:
    fits = NOTIFY_PAYLOAD_MAX_BYTES // 27  # 26 characters and a comma each
    assert wake_payload(["0" * 26] * fits) != "*"
    assert wake_payload(["0" * 26] * (fits + 1)) == "*"
    small, _ = store.create_batch([WorkloadBatchItem(command=["true"])] * fits, owner="alice")
    big, _ = store.create_batch([WorkloadBatchItem(command=["true"])] * (fits + 1), owner="alice")
    assert notes.next() == (WAKE, ",".join(w.id for w in small))
    assert notes.next() == (WAKE, "*")
    assert len(big) == fits + 1


def test_every_kill_notifies_its_id_and_nothing_else_does(store: Store, notes: Notes) -> None:
    waiting, running, done = (store.create_workload(SPEC, owner="alice")[0] for _ in range(3))
    for w in (waiting, running, done):
        assert notes.next() == (WAKE, w.id)
    store.update_workload_status(running.id, Status.RUNNING)
    store.update_workload_status(done.id, Status.RUNNING)
    store.update_workload_status(done.id, Status.COMPLETED, exit_code=0)
    with pytest.raises(InvalidTransitionError):
        store.update_workload_status(done.id, Status.KILLED)  # refused: nothing sent
    killed = "NEW.to_status = 'killed'"
    with refused_at_commit(store.url, "events", killed), pytest.raises(DatabaseError):
        store.update_workload_status(waiting.id, Status.KILLED)
    store.update_workload_status(waiting.id, Status.KILLED)
    store.update_workload_status(running.id, Status.KILLED)
    assert notes.next() == (KILL, waiting.id)
    assert notes.next() == (KILL, running.id)


# --- listen() ------------------------------------------------------------------------


class Listening:
    """``store.listen`` as a task on an event loop in a thread of its own; what its
    callbacks got, in order, on ``got``."""

    def __init__(self, store: PostgresStore) -> None:
        self.got: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start() -> asyncio.Task[None]:
            return asyncio.create_task(
                store.listen(
                    lambda ids: self.got.put((WAKE, ids)), lambda wid: self.got.put((KILL, wid))
                )
            )

        self.task = asyncio.run_coroutine_threadsafe(start(), self.loop).result()

    def next(self) -> tuple[str, Any]:
        try:
            return self.got.get(timeout=WAIT_SECONDS)
        except queue.Empty:
            raise AssertionError("the listener got nothing") from None

    def stop(self) -> None:
        """Cancel the task, as a server stopping does, and wait for its end."""
        self.loop.call_soon_threadsafe(self.task.cancel)
        ended = asyncio.run_coroutine_threadsafe(asyncio.wait([self.task]), self.loop)
        ended.result(timeout=WAIT_SECONDS)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
        assert self.task.cancelled(), self.task  # it ran until cancelled, and no error


def listener_pids(url: str) -> list[int]:
    rows = sql(
        url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = %s",
        (LISTEN_APPLICATION_NAME,),
    )
    return [r[0] for r in rows]


def test_listen_calls_back_for_creates_and_kills_from_any_session(store: Store) -> None:
    listening = Listening(PostgresStore(store.url, migrate_schema=False))
    try:
        assert listening.next() == (WAKE, None)  # listening: read what came before
        (pid,) = listener_pids(store.url)
        w, _ = store.create_workload(SPEC, owner="alice")
        assert listening.next() == (WAKE, [w.id])
        store.create_batch([WorkloadBatchItem(command=["true"])] * 300, owner="alice")
        assert listening.next() == (WAKE, None)  # too many ids for one payload
        store.update_workload_status(w.id, Status.KILLED)
        assert listening.next() == (KILL, w.id)
        assert listener_pids(store.url) == [pid]  # one connection all along
    finally:
        listening.stop()
    assert listener_pids(store.url) == []  # cancelled: its connection is closed
    assert listening.got.empty()


def test_listen_reconnects_after_losing_its_connection_and_says_read_everything(
    store: Store,
) -> None:
    listening = Listening(PostgresStore(store.url, migrate_schema=False))
    try:
        assert listening.next() == (WAKE, None)
        (pid,) = listener_pids(store.url)
        ended = sql(store.url, "SELECT pg_terminate_backend(%s)", (pid,))
        assert ended == [(True,)]
        missed, _ = store.create_workload(SPEC, owner="alice")  # perhaps while away
        got = listening.next()
        if got == (WAKE, [missed.id]):  # it was back in time for this one
            got = listening.next()
        assert got == (WAKE, None)  # reconnected: read everything again
        (again,) = listener_pids(store.url)
        assert again != pid
        w, _ = store.create_workload(SPEC, owner="alice")
        got = listening.next()
        if got == (WAKE, [missed.id]):  # it was back before this one committed
            got = listening.next()
        assert got == (WAKE, [w.id])
    finally:
        listening.stop()


def test_listen_waits_for_a_database_that_is_not_there_yet(store: Store) -> None:
    """Connecting fails (no such database): it keeps trying, quietly, until it can."""
    cluster = pg.current
    assert cluster is not None
    name = f"late_{next(_names)}"
    url = cluster.server.url(name)
    listening = Listening(PostgresStore(url, migrate_schema=False))
    try:
        assert listening.got.empty() and not listening.task.done()
        cluster.server.create_database(name)
        assert listening.next() == (WAKE, None)
        sql(url, f"NOTIFY {KILL}, 'x'")
        assert listening.next() == (KILL, "x")
    finally:
        listening.stop()
        cluster.server.drop_database(name)


# --- the fence against another session -------------------------------------------------


@pytest.fixture
def two_servers(store_factory: Callable[[], Store]) -> tuple[Store, Store]:
    """Two stores (two pools) on one database, as two servers have."""
    return store_factory(), store_factory()


def test_an_acquire_waits_for_a_claim_in_flight_and_then_sees_it(
    two_servers: tuple[Store, Store],
) -> None:
    a, b = two_servers
    got = a.acquire_lease("a", "a-1", 15)
    assert got is not None
    fence = got[0]
    w, _ = a.create_workload(SPEC, owner="alice")
    # The claim's event waits for an advisory lock the test holds: the claim stays in
    # flight, holding the lease row FOR SHARE.
    sql(
        a.url,
        "CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$",
    )
    sql(a.url, "CREATE TRIGGER hold BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION hold()")
    gate = psycopg.connect(a.url, autocommit=True)
    gate.execute("SELECT pg_advisory_lock(4242)")
    with ThreadPoolExecutor(2) as pool:
        try:
            claim = pool.submit(a.claim_workloads, [w.id], node="a", fence=fence)
            wait_until("the claim is in flight", lambda: waiting_on_locks(a.url, "%claimed%") == 1)
            acquire = pool.submit(b.acquire_lease, "b", "b-1", 15, replace_instance="a-1")
            wait_until(
                "the acquire waits for the claim",
                lambda: waiting_on_locks(a.url, "SELECT holder%FROM leases%FOR UPDATE") == 1,
            )
            assert not claim.done() and not acquire.done()
        finally:
            gate.execute("SELECT pg_advisory_unlock(4242)")
            gate.close()
        (claimed,) = claim.result(timeout=WAIT_SECONDS)
        taken = acquire.result(timeout=WAIT_SECONDS)
    assert claimed.id == w.id and claimed.status is Status.RUNNING
    assert taken is not None and taken[0] == Fence("b-1", 2) and taken[1].instance == "a-1"
    seen = b.get_workload(w.id)  # the new leader reads the claim committed
    assert seen.status is Status.RUNNING and seen.node == "a"
    assert w.id not in b.pending_ids()
    with pytest.raises(FencedError):
        a.update_workload_status(w.id, Status.COMPLETED, exit_code=0, fence=fence)


def test_fenced_writes_waiting_for_an_acquire_are_refused_when_it_commits(
    two_servers: tuple[Store, Store],
) -> None:
    a, b = two_servers
    got = a.acquire_lease("a", "a-1", 15)
    assert got is not None
    fence = got[0]
    waiting, _ = a.create_workload(SPEC, owner="alice")
    running, _ = a.create_workload(SPEC, owner="alice")
    a.claim_workloads([running.id], node="a", fence=fence)
    # Another server takes the lease in a transaction that stays open.
    taker = psycopg.connect(a.url)
    taker.execute("SELECT 1 FROM leases WHERE name = 'scheduler' FOR UPDATE")
    taker.execute(
        "UPDATE leases SET holder = 'b', instance = 'b-1', epoch = epoch + 1,"
        " expires_at = clock_timestamp() + interval '15 s'"
    )
    with ThreadPoolExecutor(2) as pool:
        try:
            claim = pool.submit(a.claim_workloads, [waiting.id], node="a", fence=fence)
            done = pool.submit(
                a.update_workload_status, running.id, Status.COMPLETED, exit_code=0, fence=fence
            )
            wait_until(
                "both wait for the lease row",
                lambda: waiting_on_locks(a.url, "%leases%FOR SHARE%") == 2,
            )
        finally:
            taker.commit()
            taker.close()
        with pytest.raises(FencedError):
            claim.result(timeout=WAIT_SECONDS)
        with pytest.raises(FencedError):
            done.result(timeout=WAIT_SECONDS)
    assert b.get_workload(waiting.id).status is Status.PENDING  # nothing written
    assert b.get_workload(running.id).status is Status.RUNNING
    assert len(b.list_events(waiting.id)) == 1 and len(b.list_events(running.id)) == 2
    lease = b.get_lease()
    assert (lease.instance, lease.epoch, lease.expired) == ("b-1", 2, False)


def test_a_takeover_ends_the_sessions_of_a_holder_stalled_inside_a_transaction(
    two_servers: tuple[Store, Store],
) -> None:
    """A leader stopped (SIGSTOP) between two statements of a fenced write holds the
    lease row FOR SHARE, a session PostgreSQL sees as active, so no idle timeout ends
    it: the server taking the expired lease ends the holder's sessions, named by its
    instance, and takes the lease at once; the stalled write fails having written
    nothing when its server wakes."""
    url = two_servers[0].url
    a, b = (
        BlockingStore(PostgresStore(url, migrate_schema=False, session_name=SESSION_PREFIX + i))
        for i in ("a-1", "b-1")
    )
    try:
        _takeover_ends_stalled_sessions(a, b)
    finally:
        a.close()
        b.close()


def _takeover_ends_stalled_sessions(a: BlockingStore, b: BlockingStore) -> None:
    assert a.register_server(ServerInfo("a", "a-1", "h", 1), live_seconds=15) is None
    assert b.register_server(ServerInfo("b", "b-1", "h", 2), live_seconds=15) is None
    named = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    assert sql(a.url, named, (f"{SESSION_PREFIX}a-1",))[0][0] >= 1
    got = a.acquire_lease("a", "a-1", 1.0)
    assert got is not None
    w, _ = a.create_workload(SPEC, owner="alice")
    wake = threading.Event()

    async def stalled(conn: Any) -> None:
        await (await conn.execute(FENCE_SQL, fence_params(got[0]))).fetchall()
        await conn.execute("UPDATE workloads SET reason = 'stalled' WHERE id = %s", (w.id,))
        await asyncio.get_running_loop().run_in_executor(None, wake.wait)  # SIGSTOP
        await (await conn.execute("SELECT 1")).fetchall()

    stalling = asyncio.run_coroutine_threadsafe(a.inner._transaction(stalled), a.loop)
    pool = ThreadPoolExecutor(1)
    try:
        wait_until("the lease expires", lambda: b.get_lease().expired)
        began = time.monotonic()
        acquire = pool.submit(b.acquire_lease, "b", "b-1", 15)
        taken = acquire.result(timeout=10)  # (without the fix: until a wakes)
        assert time.monotonic() - began < 5
        assert taken is not None and taken[0].instance == "b-1"
        assert sql(a.url, named, (f"{SESSION_PREFIX}a-1",))[0][0] == 0
        assert b.get_workload(w.id).reason is None  # rolled back
    finally:
        wake.set()
        pool.shutdown()
    with pytest.raises(DatabaseUnreachableError):
        stalling.result(timeout=WAIT_SECONDS)
    for _ in range(10):  # each ended connection of its pool fails once, then is replaced
        try:
            assert a.get_workload(w.id).reason is None
            break
        except DatabaseUnreachableError:
            continue
    else:
        raise AssertionError("the stalled server's pool never recovered")
