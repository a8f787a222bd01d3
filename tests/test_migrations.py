"""The Alembic migrations go up and down cleanly on a real database file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from corral.model import Status, WorkloadCreate
from corral.store import migrate
from corral.store.sqlite import SQLiteStore


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows} - {"sqlite_sequence"}


def test_up_down_up(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()
    assert {"workloads", "events", "workload_labels", "idempotency_keys"} <= tables(path)
    migrate.downgrade(url, "base")
    assert migrate.current_revision(url) is None
    assert tables(path) == {"alembic_version"}
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()


def test_store_opening_migrates_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    SQLiteStore(path).close()
    SQLiteStore(path).close()  # a second start on a current schema changes nothing
    assert migrate.current_revision(f"sqlite:///{path}") == migrate.head_revision()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_data_from_before_keys_belongs_to_the_first_admin(tmp_path: Path) -> None:
    """A database of 0001 (no owners) upgrades in place: its workloads, events and
    idempotency keys stay readable, owned by the OS user who will be the first admin."""
    from corral.keys import default_admin

    path = tmp_path / "corral.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url, "0001")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO workloads (id, name, command, env, cwd, cpus, memory_mb, gpus, labels,"
            " priority, status, created_at, updated_at) VALUES ('01m8old0000000000000000000',"
            " 'old', '[\"true\"]', '{}', NULL, 1, 0, 0, '{}', 0, 'pending', '2026-01-01T00:00:00Z',"
            " '2026-01-01T00:00:00Z')"
        )
        conn.execute(
            "INSERT INTO events (workload_id, seq, type, to_status, at, actor) VALUES"
            " ('01m8old0000000000000000000', 1, 'created', 'pending', '2026-01-01T00:00:00Z',"
            " 'api')"
        )
        spec = WorkloadCreate(command=["true"], name="old")
        from corral.store.sqlite import spec_digest

        conn.execute(
            "INSERT INTO idempotency_keys (key, body_sha256, workload_id, response, created_at)"
            " VALUES ('nightly', ?, '01m8old0000000000000000000', '{}', '2026-01-01T00:00:00Z')",
            (spec_digest(spec),),
        )
    store = SQLiteStore(path)  # migrates to head
    try:
        admin = default_admin()
        old = store.get_workload("01m8old0000000000000000000", owner=admin)
        assert old.owner == admin and old.name == "old"
        assert [e.to_status for e in store.list_events(old.id, owner=admin)] == ["pending"]
        again, replayed = store.create_workload(spec, owner=admin, idempotency_key="nightly")
        assert replayed and again.id == old.id
        other, replayed = store.create_workload(spec, owner="bob", idempotency_key="nightly")
        assert not replayed and other.id != old.id
        assert store.list_workloads(owner="bob").items == [other]
    finally:
        store.close()
    migrate.downgrade(url, "0001")  # and back: the owner column goes, the rows stay
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM workloads").fetchone()[0] == 2


def test_a_development_0002_with_its_second_owner_index_goes_down(tmp_path: Path) -> None:
    """An early build of 0002 also made ``(owner, id)``; the downgrade drops it first."""
    path = tmp_path / "corral.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE INDEX ix_workloads_owner_id ON workloads (owner, id)")
    migrate.downgrade(url, "0001")
    assert migrate.current_revision(url) == "0001"


def test_data_from_before_dependencies_reads_with_defaults(tmp_path: Path) -> None:
    """A database of 0002 upgrades in place: its workloads have no dependencies, no
    batch, and an idempotency key stored then still replays the same body (its digest
    is the one 0002's code computed, written out here)."""
    import hashlib

    path = tmp_path / "corral.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url, "0002")
    old_body = (
        '{"command":["true"],"name":"old","env":{},"cwd":null,'
        '"resources":{"cpus":1.0,"memory_mb":0,"gpus":0},"labels":{},"priority":0,'
        '"timeout_seconds":null}'
    )
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO workloads (id, name, command, env, cwd, cpus, memory_mb, gpus, labels,"
            " priority, status, created_at, updated_at, owner) VALUES"
            " ('01m8a1d0000000000000000000', 'old', '[\"true\"]', '{}', NULL, 1, 0, 0, '{}', 0,"
            " 'pending', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 'alice')"
        )
        conn.execute(
            "INSERT INTO events (workload_id, seq, type, to_status, at, actor) VALUES"
            " ('01m8a1d0000000000000000000', 1, 'created', 'pending', '2026-01-01T00:00:00Z',"
            " 'alice')"
        )
        conn.execute(
            "INSERT INTO idempotency_keys (owner, key, body_sha256, workload_id, created_at)"
            " VALUES ('alice', 'nightly', ?, '01m8a1d0000000000000000000',"
            " '2026-01-01T00:00:00Z')",
            (hashlib.sha256(old_body.encode()).hexdigest(),),
        )
    store = SQLiteStore(path)  # migrates to head
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
    migrate.downgrade(url, "0002")  # and back: the columns and the table go, the rows stay
    assert "workload_dependencies" not in tables(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM workloads").fetchone()[0] == 2


def test_node_is_recorded_by_the_claim_and_survives_down_and_up(tmp_path: Path) -> None:
    """0004: ``node`` is set by pending→running only, kept by later transitions, and
    the column goes and comes back with the rows kept."""
    path = tmp_path / "corral.db"
    url = f"sqlite:///{path}"
    store = SQLiteStore(path)
    try:
        created = store.create_workload(WorkloadCreate(command=["true"]), owner="alice")[0]
        assert created.node is None
        running = store.update_workload_status(created.id, Status.RUNNING, node="n1")
        assert running.node == "n1"
        done = store.update_workload_status(created.id, Status.COMPLETED, exit_code=0)
        assert done.node == "n1" and store.get_workload(created.id).node == "n1"
    finally:
        store.close()
    migrate.downgrade(url, "0003")
    with sqlite3.connect(path) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(workloads)")}
        assert "node" not in columns
        assert conn.execute("SELECT COUNT(*) FROM workloads").fetchone()[0] == 1
    migrate.upgrade(url)
    store = SQLiteStore(path)
    try:
        assert store.get_workload(created.id).node is None  # not kept by the round trip
    finally:
        store.close()
