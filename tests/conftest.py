"""Shared fixtures: real stores on real files, an app over them, a live server."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from corral.api import create_app
from corral.keys import key_digest, new_key
from corral.store import Store
from corral.store.sqlite import SQLiteStore
from tests.asgi import SyncASGIClient

STORE_KINDS = ["sqlite"]


def make_store(kind: str, tmp_path: Path) -> Store:
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "corral.db")
    raise AssertionError(kind)


@contextmanager
def event_inserts_fail(store: Store) -> Iterator[None]:
    """While inside, the database itself refuses every transition event row (a
    trigger), as a full disk or a crash between two statements would."""
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path, isolation_level=None)
        conn.execute(
            "CREATE TRIGGER refuse_events BEFORE INSERT ON events WHEN NEW.type = 'transition'"
            " BEGIN SELECT RAISE(ABORT, 'event refused by the test'); END"
        )
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER refuse_events")
            conn.close()
        return
    raise AssertionError(type(store))


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
