"""Servers, the scheduler lease and the fence in SQLite: the part of ``SQLiteStore``
that lets several servers share one file safely (``store/cluster.py``).

SQLite has one writer at a time (``BEGIN IMMEDIATE``), so a fence checked inside a
write transaction cannot be overtaken by an ``acquire`` before the commit. Its clock
is this host's, the one every process on the file shares.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from corral.ids import now_rfc3339
from corral.store.cluster import LEASE, Fence, FencedError, Lease, ServerInfo

_SERVER_COLUMNS = "name, instance, host, pid, url, capacity, started_at, last_seen"
_LEASE_COLUMNS = "holder, instance, epoch, renewed_at, expires_at"


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _later(now: str, seconds: float) -> str:
    return rfc3339(parse_rfc3339(now) + timedelta(seconds=seconds))


def _server(row: Sequence[Any]) -> ServerInfo:
    return ServerInfo(
        name=row[0],
        instance=row[1],
        host=row[2],
        pid=row[3],
        url=row[4],
        capacity=None if row[5] is None else json.loads(row[5]),
        started_at=row[6],
        last_seen=row[7],
    )


def _lease(row: Sequence[Any], now: str) -> Lease:
    return Lease(
        holder=row[0],
        instance=row[1],
        epoch=row[2],
        renewed_at=row[3],
        expires_at=row[4],
        expired=row[4] <= now,
    )


def check_fence(conn: sqlite3.Connection, fence: Fence | None, now: str) -> None:
    """Inside a write transaction: raise ``FencedError`` unless ``fence`` (when
    given) is still the live lease."""
    if fence is None:
        return
    row = conn.execute(
        "SELECT 1 FROM leases WHERE name = ? AND instance = ? AND epoch = ? AND expires_at > ?",
        (LEASE, fence.instance, fence.epoch, now),
    ).fetchone()
    if row is None:
        raise FencedError(fence)


class SQLiteCluster:
    """Mixed into ``SQLiteStore``: the servers, leases and meta tables."""

    def _connection(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    # --- servers -----------------------------------------------------------------

    def register_server(
        self, info: ServerInfo, *, live_seconds: float, replace_instance: str | None = None
    ) -> ServerInfo | None:
        """Take ``info.name`` for ``info.instance``; return the live server that holds
        it instead (seen within ``live_seconds``, and not ``replace_instance``), or
        None once registered."""
        with self._write() as conn:
            now = now_rfc3339()
            row = conn.execute(
                f"SELECT {_SERVER_COLUMNS} FROM servers WHERE name = ?", (info.name,)
            ).fetchone()
            if row is not None:
                held = _server(row)
                live = held.last_seen is not None and held.last_seen > _later(now, -live_seconds)
                if live and held.instance not in (info.instance, replace_instance):
                    return held
            conn.execute(
                f"INSERT OR REPLACE INTO servers ({_SERVER_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.name,
                    info.instance,
                    info.host,
                    info.pid,
                    info.url,
                    None if info.capacity is None else json.dumps(info.capacity),
                    now,
                    now,
                ),
            )
        return None

    def heartbeat(
        self, name: str, instance: str, *, capacity: dict[str, Any] | None = None
    ) -> bool:
        """Refresh ``last_seen`` (and the published capacity, when given); False when
        another instance has taken the name."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE servers SET last_seen = ?, capacity = COALESCE(?, capacity)"
                " WHERE name = ? AND instance = ?",
                (
                    now_rfc3339(),
                    None if capacity is None else json.dumps(capacity),
                    name,
                    instance,
                ),
            )
            return cur.rowcount == 1

    def list_servers(self) -> list[ServerInfo]:
        with self._connection() as conn:
            rows = conn.execute(f"SELECT {_SERVER_COLUMNS} FROM servers ORDER BY name")
            return [_server(r) for r in rows]

    # --- the scheduler lease ---------------------------------------------------

    def get_lease(self) -> Lease:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_LEASE_COLUMNS} FROM leases WHERE name = ?", (LEASE,)
            ).fetchone()
            return _lease(row, now_rfc3339())

    def acquire_lease(
        self,
        holder: str,
        instance: str,
        ttl_seconds: float,
        *,
        replace_instance: str | None = None,
    ) -> tuple[Fence, Lease] | None:
        """Take the lease when it expired, is this instance's, or is
        ``replace_instance``'s (a dead one, known to the caller): a new epoch, and the
        lease as it was before; None while another instance holds it."""
        with self._write() as conn:
            now = now_rfc3339()
            row = conn.execute(
                f"SELECT {_LEASE_COLUMNS} FROM leases WHERE name = ?", (LEASE,)
            ).fetchone()
            before = _lease(row, now)
            if not before.expired and before.instance not in (instance, replace_instance):
                return None
            epoch = before.epoch + 1
            conn.execute(
                "UPDATE leases SET holder = ?, instance = ?, epoch = ?, renewed_at = ?,"
                " expires_at = ? WHERE name = ?",
                (holder, instance, epoch, now, _later(now, ttl_seconds), LEASE),
            )
        return Fence(instance, epoch), before

    def renew_lease(self, fence: Fence, ttl_seconds: float) -> bool:
        """Extend the lease from now; False (nothing changed) when it is no longer
        ``fence``'s or has expired."""
        with self._write() as conn:
            now = now_rfc3339()
            cur = conn.execute(
                "UPDATE leases SET renewed_at = ?, expires_at = ? WHERE name = ?"
                " AND instance = ? AND epoch = ? AND expires_at > ?",
                (now, _later(now, ttl_seconds), LEASE, fence.instance, fence.epoch, now),
            )
            return cur.rowcount == 1

    def release_lease(self, fence: Fence) -> None:
        """Let the lease go at once (a clean stop), if it is still ``fence``'s."""
        with self._write() as conn:
            now = now_rfc3339()
            conn.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND instance = ? AND epoch = ?",
                (now, LEASE, fence.instance, fence.epoch),
            )

    # --- meta ------------------------------------------------------------------

    def meta_value(self, key: str, default: str) -> str:
        """The value stored under ``key``; the first caller stores ``default`` and
        every later one gets it back (one value per database, e.g. the Ray namespace)."""
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, default))
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return str(row[0])
