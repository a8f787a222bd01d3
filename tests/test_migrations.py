"""The Alembic migrations go up and down cleanly on a real database: a SQLite file,
and a PostgreSQL database of the session's throw-away cluster (tests/pg.py)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from corral.model import Status, WorkloadCreate
from corral.store import Store, migrate
from corral.store.sqlite import SQLiteStore
from tests import pg
from tests.blocking import BlockingStore
from tests.conftest import STORE_KINDS


class Db:
    """One empty database of either kind: raw SQL on it, and stores opened on it."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.url = url

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` parameters) in its own transaction; its rows."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as conn:
                return conn.execute(sql, params).fetchall()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as pg_conn:
            cur = pg_conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def tables(self) -> set[str]:
        if self.kind == "sqlite":
            rows = self.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {r[0] for r in rows} - {"sqlite_sequence"}
        rows = self.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows}

    def columns(self, table: str) -> set[str]:
        if self.kind == "sqlite":
            return {r[1] for r in self.execute(f"PRAGMA table_info({table})")}
        rows = self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,)
        )
        return {r[0] for r in rows}

    def store(self) -> Store:
        """A store on this database (which migrates it to the head)."""
        if self.kind == "sqlite":
            return SQLiteStore(self.url.removeprefix("sqlite:///"))
        from corral.store.postgres import PostgresStore

        return BlockingStore(PostgresStore(self.url))  # type: ignore[return-value]


@pytest.fixture(params=STORE_KINDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    if request.param == "sqlite":
        yield Db("sqlite", f"sqlite:///{tmp_path / 'corral.db'}")
        return
    request.getfixturevalue("pg_server")
    yield Db("postgresql", pg.database_url(tmp_path, migrated=False))
    assert pg.current is not None
    pg.current.drop(tmp_path)


def test_up_down_up(db: Db) -> None:
    migrate.upgrade(db.url)
    assert migrate.current_revision(db.url) == migrate.head_revision()
    assert {"workloads", "events", "workload_labels", "idempotency_keys"} <= db.tables()
    migrate.downgrade(db.url, "base")
    assert migrate.current_revision(db.url) is None
    assert db.tables() == {"alembic_version"}
    migrate.upgrade(db.url)
    assert migrate.current_revision(db.url) == migrate.head_revision()


def test_store_opening_migrates_and_is_idempotent(db: Db) -> None:
    db.store().close()
    db.store().close()  # a second start on a current schema changes nothing
    assert migrate.current_revision(db.url) == migrate.head_revision()
    if db.kind == "sqlite":
        assert db.execute("PRAGMA journal_mode")[0][0] == "wal"


def test_stores_opening_a_new_database_together_migrate_it_once(db: Db) -> None:
    """Servers starting at once on one new database: each migrates under a lock (a
    file lock, an advisory lock), the later ones finding it current. Without the
    lock, two would create each table."""
    code = (
        "import sys\n"
        "from tests.test_migrations import Db\n"
        "Db(sys.argv[1], sys.argv[2]).store().close()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, db.kind, db.url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    assert migrate.current_revision(db.url) == migrate.head_revision()


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_postgresql_columns_are_native_and_ids_compare_bytewise(db: Db) -> None:
    """Timestamps ``timestamptz``, JSON ``jsonb``, and every id in the C collation:
    keyset pagination and id-prefix ranges compare ids byte by byte, whatever the
    database's own collation."""
    migrate.upgrade(db.url)
    rows = db.execute(
        "SELECT table_name || '.' || column_name, data_type, collation_name"
        " FROM information_schema.columns WHERE table_schema = 'public'"
    )
    types = {r[0]: (r[1], r[2]) for r in rows}
    for column in ("workloads.created_at", "workloads.finished_at", "events.at"):
        assert types[column][0] == "timestamp with time zone", column
    for column in ("users.created_at", "api_keys.revoked_at", "idempotency_keys.created_at"):
        assert types[column][0] == "timestamp with time zone", column
    for column in ("command", "env", "labels", "depends_on"):
        assert types[f"workloads.{column}"][0] == "jsonb", column
    ids = [
        "workloads.id",
        "workloads.batch_id",
        "events.workload_id",
        "workload_labels.workload_id",
        "workload_dependencies.workload_id",
        "workload_dependencies.depends_on",
        "idempotency_keys.workload_id",
        "api_keys.id",
    ]
    assert {c: types[c][1] for c in ids} == dict.fromkeys(ids, "C")
    assert types["events.id"][0] == "bigint"
    (index,) = db.execute(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_workloads_batch_id'"
    )
    assert index[0].endswith("WHERE (batch_id IS NOT NULL)")


def test_data_from_before_keys_belongs_to_the_first_admin(db: Db) -> None:
    """A database of 0001 (no owners) upgrades in place: its workloads, events and
    idempotency keys stay readable, owned by the OS user who will be the first admin."""
    from corral.keys import default_admin
    from corral.store.sqlite import spec_digest

    migrate.upgrade(db.url, "0001")
    db.execute(
        "INSERT INTO workloads (id, name, command, env, cwd, cpus, memory_mb, gpus, labels,"
        " priority, status, created_at, updated_at) VALUES ('01m8old0000000000000000000',"
        " 'old', '[\"true\"]', '{}', NULL, 1, 0, 0, '{}', 0, 'pending', '2026-01-01T00:00:00Z',"
        " '2026-01-01T00:00:00Z')"
    )
    db.execute(
        "INSERT INTO events (workload_id, seq, type, to_status, at, actor) VALUES"
        " ('01m8old0000000000000000000', 1, 'created', 'pending', '2026-01-01T00:00:00Z',"
        " 'api')"
    )
    spec = WorkloadCreate(command=["true"], name="old")
    db.execute(
        "INSERT INTO idempotency_keys (key, body_sha256, workload_id, response, created_at)"
        " VALUES ('nightly', ?, '01m8old0000000000000000000', '{}', '2026-01-01T00:00:00Z')",
        (spec_digest(spec),),
    )
    store = db.store()  # migrates to head
    try:
        admin = default_admin()
        old = store.get_workload("01m8old0000000000000000000", owner=admin)
        assert old.owner == admin and old.name == "old"
        if db.kind == "postgresql":  # a timestamptz, read back with its microseconds
            assert old.created_at == "2026-01-01T00:00:00.000000Z"
        assert [e.to_status for e in store.list_events(old.id, owner=admin)] == ["pending"]
        again, replayed = store.create_workload(spec, owner=admin, idempotency_key="nightly")
        assert replayed and again.id == old.id
        other, replayed = store.create_workload(spec, owner="bob", idempotency_key="nightly")
        assert not replayed and other.id != old.id
        assert store.list_workloads(owner="bob").items == [other]
    finally:
        store.close()
    migrate.downgrade(db.url, "0001")  # and back: the owner column goes, the rows stay
    assert db.execute("SELECT COUNT(*) FROM workloads")[0][0] == 2
    assert "owner" not in db.columns("workloads")


def test_a_development_0002_with_its_second_owner_index_goes_down(db: Db) -> None:
    """An early build of 0002 also made ``(owner, id)``; the downgrade drops it first."""
    migrate.upgrade(db.url)
    db.execute("CREATE INDEX ix_workloads_owner_id ON workloads (owner, id)")
    migrate.downgrade(db.url, "0001")
    assert migrate.current_revision(db.url) == "0001"


def test_data_from_before_dependencies_reads_with_defaults(db: Db) -> None:
    """A database of 0002 upgrades in place: its workloads have no dependencies, no
    batch, and an idempotency key stored then still replays the same body (its digest
    is the one 0002's code computed, written out here)."""
    import hashlib

    migrate.upgrade(db.url, "0002")
    old_body = (
        '{"command":["true"],"name":"old","env":{},"cwd":null,'
        '"resources":{"cpus":1.0,"memory_mb":0,"gpus":0},"labels":{},"priority":0,'
        '"timeout_seconds":null}'
    )
    db.execute(
        "INSERT INTO workloads (id, name, command, env, cwd, cpus, memory_mb, gpus, labels,"
        " priority, status, created_at, updated_at, owner) VALUES"
        " ('01m8a1d0000000000000000000', 'old', '[\"true\"]', '{}', NULL, 1, 0, 0, '{}', 0,"
        " 'pending', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 'alice')"
    )
    db.execute(
        "INSERT INTO events (workload_id, seq, type, to_status, at, actor) VALUES"
        " ('01m8a1d0000000000000000000', 1, 'created', 'pending', '2026-01-01T00:00:00Z',"
        " 'alice')"
    )
    db.execute(
        "INSERT INTO idempotency_keys (owner, key, body_sha256, workload_id, created_at)"
        " VALUES ('alice', 'nightly', ?, '01m8a1d0000000000000000000',"
        " '2026-01-01T00:00:00Z')",
        (hashlib.sha256(old_body.encode()).hexdigest(),),
    )
    store = db.store()  # migrates to head
    try:
        old = store.get_workload("01m8a1d0000000000000000000")
        assert (old.depends_on, old.dependency_type, old.array_index) == ([], "afterok", None)
        assert (old.batch_id, old.max_running, old.node) == (None, None, None)
        spec = WorkloadCreate(command=["true"], name="old")
        again, replayed = store.create_workload(spec, owner="alice", idempotency_key="nightly")
        assert replayed and again == old
        later = store.create_workload(
            WorkloadCreate(command=["true"], depends_on=[old.id]), owner="alice"
        )[0]
        assert later.depends_on == [old.id]
    finally:
        store.close()
    migrate.downgrade(db.url, "0002")  # and back: the columns and the table go, the rows stay
    assert "workload_dependencies" not in db.tables()
    assert db.execute("SELECT COUNT(*) FROM workloads")[0][0] == 2


def test_node_is_recorded_by_the_claim_and_survives_down_and_up(db: Db) -> None:
    """0004: ``node`` is set by pending→running only, kept by later transitions, and
    the column goes and comes back with the rows kept."""
    store = db.store()
    try:
        created = store.create_workload(WorkloadCreate(command=["true"]), owner="alice")[0]
        assert created.node is None
        running = store.update_workload_status(created.id, Status.RUNNING, node="n1")
        assert running.node == "n1"
        done = store.update_workload_status(created.id, Status.COMPLETED, exit_code=0)
        assert done.node == "n1" and store.get_workload(created.id).node == "n1"
    finally:
        store.close()
    migrate.downgrade(db.url, "0003")
    assert "node" not in db.columns("workloads")
    assert db.execute("SELECT COUNT(*) FROM workloads")[0][0] == 1
    migrate.upgrade(db.url)
    store = db.store()
    try:
        assert store.get_workload(created.id).node is None  # not kept by the round trip
    finally:
        store.close()


def test_key_roles_come_from_the_admin_flag_and_go_back_to_it(db: Db) -> None:
    """0006: each key of 0005 gets ``admin`` or ``user`` from its flag, which goes;
    down again, the flag comes back from the role, and a metrics key (which 0005
    cannot express: it would be a user key there) is revoked."""
    from corral.model import KeyRole

    migrate.upgrade(db.url, "0005")
    db.execute("INSERT INTO users (name, created_at) VALUES ('root', '2026-01-01T00:00:00Z')")
    db.execute("INSERT INTO users (name, created_at) VALUES ('alice', '2026-01-01T00:00:00Z')")
    for key_id, user, admin in (("k1", "root", True), ("k2", "alice", False)):
        db.execute(
            'INSERT INTO api_keys (id, "user", admin, key_sha256, created_at)'
            " VALUES (?, ?, ?, ?, '2026-01-01T00:00:00Z')",
            (key_id, user, admin, key_id * 32),
        )
    store = db.store()  # migrates to head
    try:
        roles = {t.id: (t.role, t.admin) for t in store.list_api_keys()}
        assert roles == {"k1": (KeyRole.ADMIN, True), "k2": (KeyRole.USER, False)}
        found = store.find_api_key("k1" * 32)
        assert found is not None and found.admin and found.role is KeyRole.ADMIN
        prom = store.create_api_key(user="prom", role=KeyRole.METRICS, key_sha256="k3" * 32)
    finally:
        store.close()
    assert "admin" not in db.columns("api_keys")
    with pytest.raises(Exception, match=r"(?i)check"):  # the column takes the three roles only
        db.execute("UPDATE api_keys SET role = 'boss' WHERE id = 'k2'")
    migrate.downgrade(db.url, "0005")
    assert "role" not in db.columns("api_keys")
    rows = db.execute("SELECT id, admin, revoked_at IS NOT NULL FROM api_keys ORDER BY id")
    assert [(r[0], bool(r[1]), bool(r[2])) for r in rows] == [
        (prom.id, False, True),
        ("k1", True, False),
        ("k2", False, False),
    ]
    migrate.upgrade(db.url)
    store = db.store()
    try:
        assert store.find_api_key("k3" * 32) is None  # revoked by the round trip
        assert {t.id: t.role for t in store.list_api_keys()} == {
            prom.id: KeyRole.USER,
            "k1": KeyRole.ADMIN,
            "k2": KeyRole.USER,
        }
    finally:
        store.close()
