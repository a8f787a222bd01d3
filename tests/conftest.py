"""Shared fixtures: real stores on real files, an app over them, a live server.

Stores are async (``corral.store.Store``); the synchronous tests (the contract suite,
hypothesis machines, races on threads, the in-process API client) get them through
``BlockingStore`` (``tests/blocking.py``), whose ``inner`` is the async store and
whose ``run`` runs a coroutine on the loop that store serves. A store kind is one
entry of ``STORE_KINDS`` and one branch of ``make_store``."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bench.pg_server import PgServer
from bench.pg_server import start as pg_start

import corral
from corral.api import create_app
from corral.executors.local import is_alive, kill_all
from corral.keys import key_digest, new_key
from corral.model import KeyRole, WorkloadCreate
from corral.store import StorageFullError, Store
from corral.store.sqlite import SQLiteStore
from corral.store.sqlite_async import AsyncSQLiteStore
from tests import pg
from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore

STORE_KINDS = ["sqlite", "postgresql"]
"""The databases every test that takes a store runs on (one suite, two databases)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test``: two workers, ``--dist loadgroup``), every
    test of Ray (the session's cluster, or heads of its own) runs on one worker: one
    Ray cluster per run, and never two Ray heads at once on a 2-core machine. Each
    worker has its own PostgreSQL (``pg_server``) and its own ports
    (``bench.common.free_port``)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        if (
            "ray_cluster" in fixtures
            or "ray" in params  # an executor kind, whose fixture asks for ray_cluster
            or item.path.name.startswith("test_ray")
        ):
            item.add_marker(pytest.mark.xdist_group("ray"))


@pytest.fixture(scope="session", autouse=True)
def no_server_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the session no ``corral serve`` with its data below this
    session's temporary directory still runs: a server a test leaked (started twice,
    say: the second start answered ``/healthz`` from the first) would keep its port,
    its database and its scheduler busy long after. Any found are killed, and named."""
    yield
    base = str(tmp_path_factory.getbasetemp()) + "/"
    left = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if "serve" in args and any(a.startswith(base) for a in args) and is_alive(int(entry)):
            left[int(entry)] = " ".join(args)[:300]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"servers left running by the tests: {left}"


def needs(condition: bool, why: str) -> None:
    """Skip a test whose ``condition`` fails here, except in CI (``CI=true``), where
    every test must run: CI fails instead of skipping it."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI runs every test, but this one cannot run here: {why}")
    pytest.skip(why)


def needs_root(why: str) -> None:
    """``needs`` root (useradd, setuid, mount)."""
    needs(os.geteuid() == 0, f"needs root: {why}")


def make_store(kind: str, tmp_path: Path) -> Store:
    """A new async store of ``kind`` on the test's database (each store of one test
    opens the same database: one per thread or process of a race)."""
    if kind == "sqlite":
        return AsyncSQLiteStore(tmp_path / "corral.db")
    if kind == "postgresql":  # the test's own database (the pg_server fixture is up)
        from corral.store.postgres import PostgresStore

        return PostgresStore(pg.database_url(tmp_path))
    raise AssertionError(kind)


def is_sqlite(store: object) -> bool:
    return sqlite_path(store) is not None


def sqlite_path(store: object) -> Path | None:
    """The SQLite file under ``store`` (a ``BlockingStore``, an async or a synchronous
    SQLite store), or None for another database."""
    inner = store.inner if isinstance(store, BlockingStore) else store
    if isinstance(inner, AsyncSQLiteStore | SQLiteStore):
        return inner.path
    return None


def on_write_connections(store: BlockingStore, work: Callable[[sqlite3.Connection], Any]) -> None:
    """Run ``work`` with each connection the SQLite store writes through: its loop's
    (inline writes) and its writer thread's (so a per-connection setting,
    ``max_page_count`` say, applies to every write)."""
    inner = store.inner
    assert isinstance(inner, AsyncSQLiteStore), type(inner)

    async def on_both() -> None:
        work(inner.sync._conn(no_wait=True))
        await inner._writer.call(lambda: work(inner.sync._conn()))

    store.run(on_both())


async def add_key_async(store: Store, user: str, *, admin: bool = False) -> str:
    """``add_key`` for an async store."""
    key = new_key()
    await store.create_api_key(user=user, admin=admin, key_sha256=key_digest(key))
    return key


class Refusal:
    """A trigger that makes the database refuse some writes, until ``drop()``: on
    SQLite ``RAISE(ABORT)`` (the store raises ``sqlite3.IntegrityError``), on
    PostgreSQL ``RAISE EXCEPTION`` (``DatabaseError``), each with ``message``."""

    def __init__(self, store: object, name: str, on: str, when: str, message: str) -> None:
        self.name = name
        self._conn: Any = None
        path = sqlite_path(store)
        if path is not None:
            self._conn = sqlite3.connect(path, isolation_level=None)
            self._conn.execute(
                f"CREATE TRIGGER {name} BEFORE {on} WHEN {when}"
                f" BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
            self._drop = f"DROP TRIGGER {name}"
            return
        import psycopg

        self._conn = psycopg.connect(store.url, autocommit=True)  # type: ignore[attr-defined]
        operation, _, table = on.partition(" ON ")
        self._conn.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql"
            f" AS $$ BEGIN RAISE EXCEPTION '{message}'; END $$"
        )
        self._conn.execute(
            f"CREATE TRIGGER {name} BEFORE {operation} ON {table} FOR EACH ROW"
            f" WHEN ({'true' if when == '1' else when}) EXECUTE FUNCTION {name}()"
        )
        self._drop = f"DROP TRIGGER {name} ON {table}; DROP FUNCTION {name}()"

    def drop(self) -> None:
        """From now on the database accepts these writes again (idempotent)."""
        if self._conn is not None:
            self._conn.execute(self._drop)
            self._conn.close()
            self._conn = None


def query(target: object, statement: str) -> list[tuple[Any, ...]]:
    """``statement``'s rows, read in a session of its own from the database of
    ``target``: a store of either kind (``BlockingStore`` or not), or a SQLite file."""
    path = target if isinstance(target, Path) else sqlite_path(target)
    if path is not None:
        with closing(sqlite3.connect(path)) as conn:
            return conn.execute(statement).fetchall()
    import psycopg

    with psycopg.connect(target.url) as pg_conn:  # type: ignore[attr-defined]
        return pg_conn.execute(statement).fetchall()  # type: ignore[arg-type]


class FullDatabase:
    """Fills the test's database up for real, until not even the smallest create
    fits: SQLite's file is capped at the pages it has (``max_page_count`` on each
    connection the store writes through: a real ``SQLITE_FULL``); PostgreSQL's tables
    move to a tablespace on a 2 MiB tmpfs (a real ``disk_full``; mounting it needs
    root). ``make_room()`` lifts the limit; the fixture's end lifts it too."""

    TMPFS = "2m"

    def __init__(self, store: BlockingStore) -> None:
        self.store = store
        self._mount: Path | None = None
        self._tablespace = ""

    def fill(self) -> None:
        if is_sqlite(self.store):

            def cap(conn: sqlite3.Connection) -> None:
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {pages}")

            on_write_connections(self.store, cap)  # the cap is per connection
        else:
            self._small_tablespace()
        # Creates of shrinking sizes (random text: PostgreSQL compresses nothing of
        # it), each until one no longer fits; the last ones are the smallest creates.
        for size, rounds in ((400_000, 50), (8_000, 500), (500, 2_000), (0, 2_000)):
            text = [secrets.token_hex(min(size - n, 100_000) // 2) for n in range(0, size, 100_000)]
            for _ in range(rounds):
                spec = WorkloadCreate(command=["echo", *text] if size else ["true"])
                try:
                    self.store.create_workload(owner="alice", spec=spec)
                except StorageFullError:
                    break
            else:
                raise AssertionError(f"the database never filled up with creates of {size} bytes")

    def make_room(self) -> None:
        """The database takes writes again (idempotent)."""
        if is_sqlite(self.store):
            on_write_connections(self.store, lambda c: c.execute("PRAGMA max_page_count = 1000000"))
            return
        if self._mount is None:
            return
        import psycopg

        assert pg.current is not None
        with psycopg.connect(self.store.url, autocommit=True) as conn:
            conn.execute(
                f"ALTER TABLE ALL IN TABLESPACE {self._tablespace} SET TABLESPACE pg_default"
            )  # type: ignore[arg-type]
        with psycopg.connect(pg.current.url, autocommit=True) as conn:
            conn.execute(f"DROP TABLESPACE {self._tablespace}")  # type: ignore[arg-type]
        subprocess.run(["umount", "--lazy", str(self._mount)], check=False)
        self._mount = None

    def _small_tablespace(self) -> None:
        needs_root("mounting a small tmpfs for PostgreSQL's tables, to fill it up")
        import psycopg

        cluster = pg.current
        assert cluster is not None and self._mount is None
        server = cluster.server
        self._tablespace = f"small_{secrets.token_hex(4)}"
        mount = server.root / self._tablespace
        mount.mkdir()
        uid, gid = server.run_as_ids()
        options = f"size={self.TMPFS},mode=0700,uid={uid},gid={gid}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
        self._mount = mount
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLESPACE {self._tablespace} LOCATION '{mount}'")  # type: ignore[arg-type]
        with psycopg.connect(self.store.url, autocommit=True) as conn:
            conn.execute(
                f"ALTER TABLE ALL IN TABLESPACE pg_default SET TABLESPACE {self._tablespace}"
            )  # type: ignore[arg-type]


@pytest.fixture
def full_database(store: BlockingStore) -> Iterator[FullDatabase]:
    """Fills the test's database on ``fill()`` (see ``FullDatabase``)."""
    full = FullDatabase(store)
    yield full
    full.make_room()


@contextmanager
def writes_refused(
    store: object, *, on: str, when: str = "1", message: str = "write refused by the test"
) -> Iterator[Refusal]:
    """While inside, or until ``drop()`` on what it yields, the database itself refuses
    ``on`` (``"INSERT ON events"``) for rows where ``when`` holds (a trigger), as a
    full disk would."""
    refusal = Refusal(store, f"refuse_{abs(hash((on, when)))}", on, when, message)
    try:
        yield refusal
    finally:
        refusal.drop()


@contextmanager
def event_inserts_fail(store: object, *, to: Sequence[str] | None = None) -> Iterator[Refusal]:
    """While inside (or until ``drop()``), the database refuses every transition event
    row (or those to the statuses ``to``), as a full disk or a crash between two
    statements would."""
    when = "NEW.type = 'transition'"
    if to is not None:
        when += " AND NEW.to_status IN (" + ", ".join(f"'{s}'" for s in to) + ")"
    message = "event refused by the test"
    with writes_refused(store, on="INSERT ON events", when=when, message=message) as refusal:
        yield refusal


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """The database a test's stores use (a module may override it with
    ``ALL_STORE_KINDS``)."""
    return str(request.param)


@pytest.fixture
def store_factory(
    store_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], BlockingStore]]:
    """Opens stores of one kind on one shared database (one per thread or process),
    each behind a ``BlockingStore``."""
    if store_kind == "postgresql":
        request.getfixturevalue("pg_server")
    opened: list[BlockingStore] = []

    def factory() -> BlockingStore:
        s = BlockingStore(make_store(store_kind, tmp_path))
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()
    if store_kind == "postgresql" and pg.current is not None:
        pg.current.drop(tmp_path)


@pytest.fixture
def serve_db(
    store_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[list[str]]:
    """The ``corral serve`` flags for a live server on the test's database: none on
    SQLite (the data dir's own file), ``--db URL`` on PostgreSQL (the database of
    ``make_store(store_kind, tmp_path)``, so a test may open a store on it too)."""
    if store_kind == "sqlite":
        yield []
        return
    request.getfixturevalue("pg_server")
    yield ["--db", pg.database_url(tmp_path)]
    if pg.current is not None:
        pg.current.drop(tmp_path)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The session's throw-away PostgreSQL (tests/pg.py), started at first use: its
    maintenance database's URL. Skips (fails under ``CI=true``) when it cannot run."""
    try:
        cluster = pg.start_cluster()
    except pg.PgUnavailableError as exc:
        needs(False, str(exc))
        raise
    pg.current = cluster
    try:
        yield cluster.url
    finally:
        pg.current = None
        cluster.stop()


@pytest.fixture
def own_pg(pg_server: str) -> Iterator[PgServer]:
    """A PostgreSQL of the test's own, which it may stop and start again (a
    database outage), with a migrated database ``corral``; started only by the tests
    that ask for it (the session's ``pg_server`` is shared)."""
    from corral.store import migrate

    server = pg_start()
    try:
        migrate.upgrade(server.create_database("corral"))
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(store_factory: Callable[[], BlockingStore]) -> BlockingStore:
    return store_factory()


def add_key(
    store: BlockingStore | SQLiteStore, user: str, *, admin: bool = False, role: str | None = None
) -> str:
    """A new API key of ``user`` (an admin's, or of ``role``), stored; returns the key."""
    key = new_key()
    store.create_api_key(
        user=user,
        admin=admin,
        role=None if role is None else KeyRole(role),
        key_sha256=key_digest(key),
    )
    return key


ADMIN = "admin"


@pytest.fixture
def admin_key(store: BlockingStore) -> str:
    return add_key(store, ADMIN, admin=True)


def app_client(
    store: BlockingStore,
    tmp_path: Path,
    *,
    token: str | None = None,
    raise_app_exceptions: bool = True,
    **app_options: Any,
) -> SyncASGIClient:
    """A client of the real app over ``store``'s async store, driven in process on
    the loop that store serves (``create_app`` options as keywords)."""
    app = create_app(store.inner, data_dir=tmp_path, **app_options)
    return SyncASGIClient(
        app, token=token, raise_app_exceptions=raise_app_exceptions, run=store.run
    )


@pytest.fixture
def api(store: BlockingStore, tmp_path: Path, admin_key: str) -> Iterator[SyncASGIClient]:
    """The real app over a real store, driven in process (``--executor none``), with
    an admin key."""
    client = app_client(store, tmp_path, token=admin_key)
    yield client
    client.close()


# --- a Ray cluster on this machine, for the Ray executor's tests ---------------------

RAY_NODE_CPUS = 2
RAY_NODE_MEMORY = 2 << 30


@dataclass(frozen=True)
class RayCluster:
    """A running ``ray.cluster_utils.Cluster``: a head and one more node, each of
    ``RAY_NODE_CPUS`` CPUs and ``RAY_NODE_MEMORY`` bytes of memory, token auth on."""

    cluster: Any
    """The ``ray.cluster_utils.Cluster`` (``add_node``, ``remove_node``)."""
    node_dir: Path
    """The agents' ``node_dir`` (one directory per node below it)."""
    namespace: str = "corral-tests"

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def run_dirs(self) -> list[Path]:
        return sorted(self.node_dir.glob("*/run"))


def _descendants(pid: int) -> set[int]:
    """Live processes below ``pid`` (its children, theirs, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and is_alive(child):
                found.add(child)
                todo.append(child)
    return found


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """One 2-node Ray cluster for the whole session (started at first use), with
    token auth (``RAY_AUTH_TOKEN`` must be set before it starts, or its GCS never
    does), torn down at the end with every process of it gone: Ray's, the agents',
    and whatever their workloads left."""
    needs(importlib.util.find_spec("ray") is not None, "needs Ray: pip install 'corral[ray]'")
    # Ray reads RAY_AUTH_MODE once, when ``ray._raylet`` loads: a test module that
    # imports Ray at collection would leave this process without token auth.
    assert "ray._raylet" not in sys.modules, "Ray was imported before the cluster's env was set"
    src = str(Path(corral.__file__).parents[1])  # the agents import this corral
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "token")
        env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        # The README's tuning for a node that vanishes (a crash, not a clean removal):
        # declared dead after ~1.5 s instead of ~15 s.
        env.setenv("RAY_health_check_period_ms", "500")
        env.setenv("RAY_health_check_failure_threshold", "3")
        env.setenv("RAY_health_check_initial_delay_ms", "0")  # nodes added by tests are new
        env.setenv("RAY_raylet_report_resources_period_milliseconds", "50")  # as ray_head
        factory = logging.getLogRecordFactory()
        from ray.cluster_utils import Cluster

        logging.setLogRecordFactory(factory)  # as corral.executors.ray does: no Ray fields
        node = {
            "num_cpus": RAY_NODE_CPUS,
            "memory": RAY_NODE_MEMORY,
            "object_store_memory": 80 << 20,
        }
        node_dir = tmp_path_factory.mktemp("ray-nodes")
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        try:
            cluster.add_node(**node)
            cluster.wait_for_nodes()
            yield RayCluster(cluster, node_dir)
        finally:
            for run_dir in node_dir.glob("*/run"):
                kill_all(run_dir)  # what a failed test left running
            ours = _ray_processes(cluster)
            cluster.shutdown()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(is_alive(p) for p in ours):
                time.sleep(0.05)
            left = {p: _cmdline(p) for p in sorted(ours) if is_alive(p)}
            assert not left, f"processes of the Ray cluster left running: {left}"


def _ray_processes(cluster: Any) -> set[int]:
    """The processes a ``Cluster`` started (GCS, raylets, ...) and all below them
    (workers, agents, their launchers and shims)."""
    found: set[int] = set()
    for node in cluster.list_all_nodes():
        for infos in node.all_processes.values():
            for info in infos:
                found.add(info.process.pid)
                found |= _descendants(info.process.pid)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs, unmounted afterwards."""
    needs_root("mounting a small tmpfs, to fill it up")
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"cannot mount a tmpfs: {done.stderr.strip()}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)
