"""Servers, the scheduler lease, the fence and notifications on PostgreSQL: the part
of ``PostgresStore`` that lets several servers share one database
(``store/cluster.py``; the SQLite twin is ``store/sqlite_cluster.py``).

**The database's clock decides.** Every time that decides a lease or a server's
liveness is ``clock_timestamp()`` of the database, never a server's: the servers'
clocks may disagree, the database has one. A statement that waits for a lock takes
its instant after the wait: ``acquire_lease`` and ``renew_lease`` first lock the
lease row (``SELECT … FOR UPDATE``), then update it with one instant read under the
lock (``FROM (SELECT clock_timestamp() AS t)``), which both decides and is written.
All of it is pipelined: one round trip.

**The fence** (``FENCE_SQL``): a fenced write first locks the lease row ``FOR SHARE``
where it is still the fence's instance and epoch and not expired, in the writing
transaction; no row, and the write raises ``FencedError`` having written nothing. A
shared lock conflicts with the lock an ``acquire`` takes, so an acquire waits for the
fenced writes in flight and the new leader reads them committed; and a fenced write
waiting for an acquire rechecks the lease row as the acquire left it (PostgreSQL
re-evaluates the condition on the updated row), so it is refused.

**A stalled holder's sessions are ended** (``acquire_lease``). A server stopped in the
middle of a transaction (SIGSTOP, a frozen VM) keeps that transaction's locks for as
long as it is stopped. PostgreSQL's ``idle_in_transaction_session_timeout`` cannot be
relied on: while a pipeline waits for its client between statements the session is
``active``, and after psycopg's flush requests the timer is off even where the
session shows ``idle in transaction`` (tried: a 300 ms limit left such a session
alone for seconds). Its fenced writes hold the lease row ``FOR SHARE`` and its scheduler's
writes hold workload rows, so a standby's acquire would wait on the lease row, and
its scheduler on those rows, until the stalled server woke. So every session of a
server is named ``corral:<instance>`` (``application_name``: ``corral serve`` opens
its store with ``session_name``), and a server about to take an *expired* lease from another
instance first ends that instance's sessions (``pg_terminate_backend``), which rolls
their transactions back and frees their locks. The stalled server finds its
connections broken when it wakes, and its fence gone. Ending another role's
sessions takes that role's membership or ``pg_signal_backend``; without it the
takeover is logged and waits for the locks, as before.

**Notifications** (``WAKE``, ``KILL``) are sent by the store inside its writing
transactions (``pg_notify``: delivered on commit only, never for a rollback; one per
transaction). ``listen`` receives them on one connection of its own (not the pool's:
a pooled connection is not kept, and ``notifies()`` holds its connection), in
autocommit, named ``corral-listen`` in ``pg_stat_activity``; with TCP keepalives so
that a peer gone silently is noticed within ~15 s. It runs until cancelled
(cancelling the task is how it stops: the wait for a notification is idle, so it
ends cleanly, and the connection is closed on the way out). A connection lost
reconnects after a short backoff; after every ``LISTEN`` (the first included) it
calls ``on_wake(None)``, since whatever was committed before, or while it was
disconnected, was not notified to it: the caller reads the tables again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.conninfo import make_conninfo

from corral.errors import CorralError
from corral.store.cluster import LEASE, Fence, Lease, ServerInfo

log = logging.getLogger(__name__)

T = TypeVar("T")
Conn = AsyncConnection[tuple[Any, ...]]

WAKE = "corral_wake"
"""Channel of creates: the new ids joined by ``,`` (``*``: too many; read them all)."""
KILL = "corral_kill"
"""Channel of kills: the id of a workload that went ``killed``."""
NOTIFY_PAYLOAD_MAX_BYTES = 7_900
"""Largest payload sent (PostgreSQL's limit is 8,000 bytes)."""
EVERYTHING = "*"

LISTEN_APPLICATION_NAME = "corral-listen"
LISTEN_BACKOFF_SECONDS = (0.05, 2.0)
"""The first wait before reconnecting the listener, and the longest (doubling)."""
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}

NOTIFY_SQL = "SELECT pg_notify(%s, %s)"
"""A notification on a channel (params: channel, payload), sent when the transaction
commits."""

FENCE_SQL = (
    "SELECT 1 FROM leases WHERE name = %s AND instance = %s AND epoch = %s"
    " AND expires_at > clock_timestamp() FOR SHARE"
)
"""Lock the lease row, shared, if ``fence`` still holds (params: ``fence_params``)."""

SESSION_PREFIX = "corral:"
"""``application_name`` of a server's sessions: this and its instance."""
_END_EXPIRED_HOLDER = (
    "SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid))"
    " FROM leases AS l JOIN pg_stat_activity AS a"
    " ON a.application_name = %s || l.instance AND a.datname = current_database()"
    " WHERE l.name = %s AND l.expires_at <= clock_timestamp() AND l.instance <> %s"
    " AND a.pid <> pg_backend_pid()"
)
"""End the sessions of the instance whose lease has expired (params: prefix, lease,
the taker's instance); how many."""

_SERVER_COLUMNS = "name, instance, host, pid, url, capacity, started_at, last_seen"
_LEASE_COLUMNS = "holder, instance, epoch, renewed_at, expires_at"
_LOCK_LEASE = f"SELECT {_LEASE_COLUMNS} FROM leases WHERE name = %s FOR UPDATE"
_NOW = "(SELECT clock_timestamp() AS t) AS c"
"""One instant of the database's clock, read when the statement runs."""


def fence_params(fence: Fence) -> tuple[str, str, int]:
    return (LEASE, fence.instance, fence.epoch)


def wake_payload(ids: Sequence[str]) -> str:
    """The ``corral_wake`` payload for new ``ids``: them, or ``*`` when too long."""
    text = ",".join(ids)
    return text if len(text.encode()) <= NOTIFY_PAYLOAD_MAX_BYTES else EVERYTHING


async def notify(conn: Conn, channel: str, payload: str) -> None:
    """Queue a notification in ``conn``'s transaction (sent when it commits)."""
    await conn.execute(NOTIFY_SQL, (channel, payload))


def _server(row: Sequence[Any]) -> ServerInfo:
    return ServerInfo(
        name=row[0],
        instance=row[1],
        host=row[2],
        pid=row[3],
        url=row[4],
        capacity=row[5],  # jsonb: loaded by psycopg
        started_at=row[6],
        last_seen=row[7],
    )


def _lease(row: Sequence[Any], expired: bool) -> Lease:
    return Lease(
        holder=row[0],
        instance=row[1],
        epoch=int(row[2]),
        renewed_at=row[3],
        expires_at=row[4],
        expired=expired,
    )


class PostgresCluster:
    """Mixed into ``PostgresStore``: the servers, leases and meta tables, and
    ``listen``."""

    @property
    def url(self) -> str:
        raise NotImplementedError

    async def _transaction(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _fetch(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _listen_conninfo(self) -> str:
        raise NotImplementedError

    # --- servers -----------------------------------------------------------------

    async def register_server(
        self, info: ServerInfo, *, live_seconds: float, replace_instance: str | None = None
    ) -> ServerInfo | None:
        """Take ``info.name`` for ``info.instance``; return the live server that holds
        it instead (seen within ``live_seconds`` by the database's clock, and not
        ``replace_instance``), or None once registered."""

        async def body(conn: Conn) -> tuple[AsyncCursor[tuple[Any, ...]], ...]:
            # ON CONFLICT locks the row it does not update too, so the SELECT after it
            # reads the holder that won.
            taken = await conn.execute(
                f"INSERT INTO servers ({_SERVER_COLUMNS})"
                " SELECT %s, %s, %s, %s, %s, %s::jsonb, t, t FROM clock_timestamp() AS t"
                " ON CONFLICT (name) DO UPDATE SET instance = EXCLUDED.instance,"
                " host = EXCLUDED.host, pid = EXCLUDED.pid, url = EXCLUDED.url,"
                " capacity = EXCLUDED.capacity, started_at = EXCLUDED.started_at,"
                " last_seen = EXCLUDED.last_seen"
                " WHERE servers.last_seen <= EXCLUDED.last_seen - make_interval(secs => %s)"
                " OR servers.instance = %s OR servers.instance = %s"
                " RETURNING 1",
                (
                    info.name,
                    info.instance,
                    info.host,
                    info.pid,
                    info.url,
                    None if info.capacity is None else json.dumps(info.capacity),
                    float(live_seconds),
                    info.instance,
                    replace_instance,
                ),
            )
            held = await conn.execute(
                f"SELECT {_SERVER_COLUMNS} FROM servers WHERE name = %s", (info.name,)
            )
            return taken, held

        taken, held = await self._transaction(body)
        if await taken.fetchone() is not None:
            return None
        row = await held.fetchone()
        assert row is not None
        return _server(row)

    async def heartbeat(
        self, name: str, instance: str, *, capacity: dict[str, Any] | None = None
    ) -> bool:
        """Refresh ``last_seen`` (and the published capacity, when given); False when
        another instance has taken the name."""
        rows = await self._fetch(
            "UPDATE servers SET last_seen = clock_timestamp(),"
            " capacity = COALESCE(%s::jsonb, capacity)"
            " WHERE name = %s AND instance = %s RETURNING 1",
            (None if capacity is None else json.dumps(capacity), name, instance),
        )
        return len(rows) == 1

    async def list_servers(self) -> list[ServerInfo]:
        rows = await self._fetch(f'SELECT {_SERVER_COLUMNS} FROM servers ORDER BY name COLLATE "C"')
        return [_server(r) for r in rows]

    # --- the scheduler lease -----------------------------------------------------

    async def get_lease(self) -> Lease:
        rows = await self._fetch(
            f"SELECT {_LEASE_COLUMNS}, expires_at <= clock_timestamp() FROM leases WHERE name = %s",
            (LEASE,),
        )
        return _lease(rows[0], bool(rows[0][5]))

    async def acquire_lease(
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

        await self._end_expired_holder(instance)

        async def body(conn: Conn) -> tuple[AsyncCursor[tuple[Any, ...]], ...]:
            before = await conn.execute(_LOCK_LEASE, (LEASE,))  # waits for fenced writes
            taken = await conn.execute(
                f"UPDATE leases SET holder = %s, instance = %s, epoch = epoch + 1,"
                f" renewed_at = c.t, expires_at = c.t + make_interval(secs => %s) FROM {_NOW}"
                " WHERE name = %s AND (expires_at <= c.t OR instance = %s OR instance = %s)"
                " RETURNING epoch, c.t",
                (holder, instance, float(ttl_seconds), LEASE, instance, replace_instance),
            )
            return before, taken

        before, taken = await self._transaction(body)
        old = await before.fetchone()
        new = await taken.fetchone()
        assert old is not None
        if new is None:
            return None
        # Both RFC 3339 strings of the database's clock, in one format: they compare.
        return Fence(instance, int(new[0])), _lease(old, old[4] <= new[1])

    async def _end_expired_holder(self, instance: str) -> None:
        """End the sessions of the instance whose lease expired, if any (see the
        module docstring): a stalled holder's locks would hold the takeover up."""
        try:
            rows = await self._fetch(_END_EXPIRED_HOLDER, (SESSION_PREFIX, LEASE, instance))
        except CorralError as exc:  # e.g. another role's sessions, without the right
            log.warning("cannot end the sessions of the expired scheduler: %s", exc)
            return
        if rows and rows[0][0]:
            log.warning(
                "ended %d database session(s) of the server whose lease expired", rows[0][0]
            )

    async def renew_lease(self, fence: Fence, ttl_seconds: float) -> bool:
        """Extend the lease from now; False (nothing changed) when it is no longer
        ``fence``'s or has expired."""

        async def body(conn: Conn) -> AsyncCursor[tuple[Any, ...]]:
            await conn.execute(_LOCK_LEASE, (LEASE,))
            return await conn.execute(
                f"UPDATE leases SET renewed_at = c.t, expires_at = c.t"
                f" + make_interval(secs => %s) FROM {_NOW}"
                " WHERE name = %s AND instance = %s AND epoch = %s AND expires_at > c.t"
                " RETURNING 1",
                (float(ttl_seconds), *fence_params(fence)),
            )

        return await (await self._transaction(body)).fetchone() is not None

    async def release_lease(self, fence: Fence) -> None:
        """Let the lease go at once (a clean stop), if it is still ``fence``'s."""
        await self._fetch(
            "UPDATE leases SET expires_at = LEAST(expires_at, clock_timestamp())"
            " WHERE name = %s AND instance = %s AND epoch = %s RETURNING 1",
            fence_params(fence),
        )

    # --- meta --------------------------------------------------------------------

    async def meta_value(self, key: str, default: str) -> str:
        """The value stored under ``key``; the first caller stores ``default`` and
        every later one gets it back (one value per database, e.g. the Ray namespace)."""

        async def body(conn: Conn) -> AsyncCursor[tuple[Any, ...]]:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                (key, default),
            )
            return await conn.execute("SELECT value FROM meta WHERE key = %s", (key,))

        row = await (await self._transaction(body)).fetchone()
        assert row is not None
        return str(row[0])

    # --- notifications -----------------------------------------------------------

    async def listen(
        self, on_wake: Callable[[list[str] | None], None], on_kill: Callable[[str], None]
    ) -> None:
        """Until cancelled: ``on_wake(ids)`` for each create committed by any server
        (``None``: read every pending id), ``on_kill(id)`` for each kill; see the
        module docstring. An exception of a callback ends it."""
        backoff = LISTEN_BACKOFF_SECONDS[0]
        failing = False
        while True:
            try:
                conn = await AsyncConnection.connect(
                    make_conninfo(
                        self._listen_conninfo(),
                        application_name=LISTEN_APPLICATION_NAME,
                        **_KEEPALIVES,
                    ),
                    autocommit=True,
                )
            except psycopg.Error as exc:
                (log.debug if failing else log.warning)(
                    "cannot listen for other servers' creates and kills: %s", exc
                )
                failing = True
            else:
                try:
                    await conn.execute(f"LISTEN {WAKE}")
                    await conn.execute(f"LISTEN {KILL}")
                    if failing:
                        log.info("listening for other servers' creates and kills again")
                    failing = False
                    backoff = LISTEN_BACKOFF_SECONDS[0]
                    on_wake(None)
                    async with aclosing(conn.notifies()) as received:
                        async for n in received:
                            if n.channel == KILL:
                                on_kill(n.payload)
                            elif n.channel == WAKE:
                                on_wake(None if n.payload == EVERYTHING else n.payload.split(","))
                except psycopg.Error as exc:
                    log.warning(
                        "lost the connection listening for other servers' creates and kills: %s",
                        exc,
                    )
                    failing = True
                finally:
                    await conn.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, LISTEN_BACKOFF_SECONDS[1])
