"""Persistence and the atomic status transition.

The rest of corral sees the async ``Store`` protocol; ``open_store(url)`` picks the
implementation from a database URL (``sqlite:///path``).
"""

from __future__ import annotations

from corral.store.base import Page, Store
from corral.store.errors import (
    IdempotencyKeyReusedError,
    InvalidTransitionError,
    NotFoundError,
    StorageFullError,
    StoreBusyError,
)


def open_store(url: str, *, server: bool = False, instance: str | None = None) -> Store:
    """Open (and migrate to the latest schema) the store at ``url``; ``server``: tuned
    for a long-lived server process: SQLite checkpoints in a background thread, and a
    short busy timeout (``SERVER_BUSY_TIMEOUT_MS``): a writer in another process makes
    a request wait a second at most, then it gets a 503. Returns the async store; the
    synchronous ``SQLiteStore`` (``store/sqlite.py``) serves offline paths. ``instance``:
    the server process's instance id, which names its PostgreSQL sessions."""
    if url.startswith("sqlite:///"):
        from corral.store.sqlite import BUSY_TIMEOUT_MS, SERVER_BUSY_TIMEOUT_MS
        from corral.store.sqlite_async import AsyncSQLiteStore

        return AsyncSQLiteStore(
            url.removeprefix("sqlite:///"),
            background_checkpoints=server,
            busy_timeout_ms=SERVER_BUSY_TIMEOUT_MS if server else BUSY_TIMEOUT_MS,
        )
    if url.startswith(("postgresql://", "postgres://")):
        from corral.store.postgres import PostgresStore, pool_size_from_env
        from corral.store.postgres_cluster import SESSION_PREFIX

        return PostgresStore(
            url,
            pool_size=pool_size_from_env(),
            session_name=SESSION_PREFIX + instance if instance else "corral",
        )
    raise ValueError(
        f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB"
    )


__all__ = [
    "IdempotencyKeyReusedError",
    "InvalidTransitionError",
    "NotFoundError",
    "Page",
    "StorageFullError",
    "Store",
    "StoreBusyError",
    "open_store",
]
