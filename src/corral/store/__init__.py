"""Persistence and the atomic status transition.

The rest of corral sees the ``Store`` protocol; ``open_store(url)`` picks the
implementation from a database URL (``sqlite:///path``).
"""

from __future__ import annotations

from corral.store.base import Page, Store
from corral.store.errors import IdempotencyKeyReusedError, InvalidTransitionError, NotFoundError


def open_store(url: str, *, server: bool = False) -> Store:
    """Open (and migrate to the latest schema) the store at ``url``; ``server``: tuned
    for a long-lived server process (e.g. SQLite checkpoints in a background thread)."""
    if url.startswith("sqlite:///"):
        from corral.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"), background_checkpoints=server)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH")


__all__ = [
    "IdempotencyKeyReusedError",
    "InvalidTransitionError",
    "NotFoundError",
    "Page",
    "Store",
    "open_store",
]
