"""Shared fixtures: real stores on real files, an app over them, a live server."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from corral.api import create_app
from corral.keys import key_digest, new_key
from corral.store import Store
from corral.store.sqlite import SQLiteStore
from tests.asgi import SyncASGIClient

STORE_KINDS = ["sqlite"]


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
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "corral.db")
    raise AssertionError(kind)


class Refusal:
    """A trigger that makes the database refuse some writes, until ``drop()``."""

    def __init__(self, store: Store, name: str, on: str, when: str, message: str) -> None:
        if not isinstance(store, SQLiteStore):
            raise AssertionError(type(store))
        self.name = name
        self._conn: sqlite3.Connection | None = sqlite3.connect(store.path, isolation_level=None)
        self._conn.execute(
            f"CREATE TRIGGER {name} BEFORE {on} WHEN {when}"
            f" BEGIN SELECT RAISE(ABORT, '{message}'); END"
        )

    def drop(self) -> None:
        """From now on the database accepts these writes again (idempotent)."""
        if self._conn is not None:
            self._conn.execute(f"DROP TRIGGER {self.name}")
            self._conn.close()
            self._conn = None


@contextmanager
def writes_refused(
    store: Store, *, on: str, when: str = "1", message: str = "write refused by the test"
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
def event_inserts_fail(store: Store, *, to: Sequence[str] | None = None) -> Iterator[Refusal]:
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
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens stores of one kind on one shared database (one per thread or process)."""
    opened: list[Store] = []

    def factory() -> Store:
        s = make_store(request.param, tmp_path)
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()


@pytest.fixture
def store(store_factory: Callable[[], Store]) -> Store:
    return store_factory()


def add_key(store: Store, user: str, *, admin: bool = False) -> str:
    """A new API key of ``user``, stored; returns the key."""
    key = new_key()
    store.create_api_key(user=user, admin=admin, key_sha256=key_digest(key))
    return key


ADMIN = "admin"


@pytest.fixture
def admin_key(store: Store) -> str:
    return add_key(store, ADMIN, admin=True)


@pytest.fixture
def api(store: Store, tmp_path: Path, admin_key: str) -> Iterator[SyncASGIClient]:
    """The real app over a real store, driven in process (``--executor none``), with
    an admin key."""
    client = SyncASGIClient(create_app(store, data_dir=tmp_path), token=admin_key)
    yield client
    client.close()
