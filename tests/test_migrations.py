"""The Alembic migrations go up and down cleanly on a real database file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
