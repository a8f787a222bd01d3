"""``PostgresStore``: the ``Store`` on PostgreSQL, for several servers sharing one
database (docs/postgres.md).

psycopg 3's ``AsyncConnectionPool`` (``pool_size`` connections at most, 2 kept open;
opened at the first call, on the caller's event loop). Every method is ``async`` and
has exactly the semantics of ``SQLiteStore`` (the same contract suite runs on both);
what differs is how they are had:

- **Round trips.** A transaction runs in pipeline mode: its statements, with ``BEGIN``
  and ``COMMIT``, go to the server together and the client waits only where it must
  read a result before going on. A create with an idempotency key or dependencies is
  two round trips (the lookups, then the writes); a transition two (the row lock and
  status, then the update, the event, the commit). A group commit
  (``create_workloads``) writes all its items in those, each table's rows by one
  statement (``unnest`` of an array per column). Creates with neither keys nor
  dependencies, the common case, are one statement (``_CREATE_PLAIN``: the rows of
  every table and the notification), run on its own: a statement is its own
  transaction, so no ``BEGIN``, ``COMMIT`` or pipeline (what those cost the event
  loop is measured in docs/benchmarks.md, "Issue 11: PostgreSQL").
- **Transitions** read the status with ``SELECT … FOR UPDATE`` (the row lock), check
  ``valid_transition``, take the time (under the lock, so events' times follow their
  ``seq``, as SQLite's write lock gives) and write the status and its event in the
  same transaction. Of concurrent callers leaving the same status, the first to lock
  wins and the others see the status it wrote.
- **Idempotency keys** are checked by a lookup, then written last, after the
  workload, under the ``(owner, key)`` primary key: of two transactions racing on
  one key, the second waits for the first, fails on the key, and is run again from
  the start, where its lookup now finds the key (a replay, or
  ``IdempotencyKeyReusedError``). Deadlocks and serialization failures also rerun
  the transaction (``ATTEMPTS`` times, then ``StoreBusyError``).
- **Batches** write every workload row before any dependency row: an item may name a
  later item (SQLite defers its foreign keys to the commit instead).
- **Timestamps** are ``timestamptz`` and JSON is ``jsonb`` (the migrations'
  PostgreSQL variants). Sessions run in UTC, and a loader turns each ``timestamptz``
  back into the RFC 3339 string SQLite stores (``2026-11-28T15:18:27.123456Z``), so
  ``Workload`` is the same from both. ``jsonb`` keeps no key order: ``env`` and
  ``labels`` come back with their keys in PostgreSQL's order (shorter keys first),
  equal as dicts to what was stored.
- **Several servers** (``store/postgres_cluster.py``): servers, the scheduler lease
  and its fence by the database's clock; ``claim_workloads`` claims many workloads
  in one statement (the lease row locked ``FOR SHARE`` when fenced, the workloads
  ``FOR UPDATE SKIP LOCKED``: one a kill holds is left pending, the events written
  by the same statement); a transition's fence is read in its first round trip.
  Creates ``NOTIFY corral_wake`` and kills ``corral_kill`` in their transactions.
- **Faults are domain errors**, never a psycopg error, decided by SQLSTATE:
  ``disk_full`` is ``StorageFullError``; a lock or statement timeout, too many
  connections, or a transaction that kept meeting conflicts is ``StoreBusyError``; a
  refused or lost connection, a server shutting down, or no connection free within
  ``timeout`` seconds, is ``DatabaseUnreachableError`` (a ``StoreBusyError``: 503);
  anything else is ``DatabaseError`` (500). A transaction that fails is rolled back
  whole.
- **NUL.** PostgreSQL's text cannot hold one; the API refuses it in every text it
  takes, on both databases (``model.NUL_FREE``). One that reaches the store anyway
  (not through the API) is refused here: in a workload's ``name`` a ``FieldError`` of
  its own (``name``), anywhere else ``InvalidInputError``.

The schema is migrated on open (Alembic, under a transaction-scoped advisory lock so
that servers starting together migrate once).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, AsyncCursor, errors, pq
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from corral.errors import CorralError, FieldError, InvalidInputError
from corral.ids import new_id, now_rfc3339
from corral.keys import same_digest
from corral.model import (
    TERMINAL,
    Event,
    KeyRole,
    Status,
    Token,
    TransitionEvent,
    Workload,
    WorkloadBatchItem,
    WorkloadCreate,
    WorkloadSpec,
    check_batch_references,
    default_reason,
    role_of,
    valid_transition,
    workload_from_row,
)
from corral.store import migrate
from corral.store.base import (
    CLAIM_ACTOR,
    DELETE_BATCH_MAX,
    EVENTS_LIMIT_MAX,
    EVERY_EVENT,
    Account,
    BatchCreated,
    Created,
    EventFilter,
    NewWorkload,
    Page,
    Principal,
    WritesInFlight,
)
from corral.store.cluster import Fence, FencedError
from corral.store.errors import (
    DatabaseError,
    DatabaseRefusedError,
    DatabaseUnreachableError,
    IdempotencyKeyReusedError,
    InvalidTransitionError,
    NotFoundError,
    StorageFullError,
    StoreBusyError,
    TokenNotFoundError,
    UnixUserConflictError,
)
from corral.store.postgres_cluster import (
    FENCE_SQL,
    KILL,
    WAKE,
    PostgresCluster,
    fence_params,
    notify,
    wake_payload,
)
from corral.store.sqlite import (
    _COLUMNS,
    EVENT_IDS_QUERY,
    NEWEST_EVENTS_WORKLOAD,
    QUEUED_WHERE,
    _json_text,
    batch_digest,
    check_events_limit,
    checked_count_query,
    deletable_params,
    deletable_query,
    events_query,
    page_query,
    pending_ids_query,
    row_to_transition,
    spec_digest,
)

T = TypeVar("T")
Conn = AsyncConnection[tuple[Any, ...]]

DEFAULT_POOL_SIZE = 10
"""Connections at most per store (``CORRAL_DB_POOL_SIZE``); 2 are kept open."""
POOL_MIN_SIZE = 2
POOL_TIMEOUT_SECONDS = 5.0
"""How long a call waits for a connection before it is ``DatabaseUnreachableError``."""
POOL_RECONNECT_SECONDS = 2.0
"""How long the pool retries one lost connection (psycopg's backoff doubles from 1 s)
before it gives it up; the next call that waits for a connection starts a new one.
psycopg's default (5 min) lets the backoff grow with an outage: after 20 s of a
database down the pool would try again only ~10 s after it is back, every call a 503
meanwhile."""
ATTEMPTS = 5
"""Runs of a transaction that hit a deadlock, a serialization failure or an
idempotency key another transaction took meanwhile, before ``StoreBusyError``."""
MIGRATION_LOCK = 0x636F7272616C  # "corral": pg_advisory_xact_lock's key for migrating

_IDEMPOTENCY_KEY_INDEX = "idempotency_keys_pkey"
_DEPENDENCY_KEY = "workload_dependencies_depends_on_fkey"
"""The foreign key of a dependency row to the workload it names: a create that names
a workload being deleted (``delete_finished``) waits for that delete's row lock and
then fails on this key; it is run again, and its lookup finds no workload."""
NUL_REFUSED = "must not contain a NUL character (PostgreSQL cannot store one in text)"


def _sql(sqlite_sql: str) -> str:
    """A listing's statement built for SQLite (``list_query``, ``count_query``), for
    PostgreSQL: psycopg's ``%s`` parameters for ``?``, and an inner join for SQLite's
    ``CROSS JOIN … ON`` (which there only fixes the join order)."""
    return sqlite_sql.replace("?", "%s").replace(" CROSS JOIN ", " JOIN ")


_INSERT_WORKLOADS = (
    "INSERT INTO workloads (id, name, command, env, cwd, cpus, memory_mb, gpus, labels,"
    " priority, timeout_seconds, status, created_at, updated_at, owner, depends_on,"
    " dependency_type, array_index, batch_id, max_running)"
    " SELECT i, n, c, e, d, cpus, m, g, l, p, t, 'pending', a, a, o, dep, dt, ai, b, mr"
    " FROM unnest(%b::text[], %b::text[], %b::jsonb[], %b::jsonb[], %b::text[],"
    " %b::float8[], %b::int8[], %b::int4[], %b::jsonb[], %b::int4[], %b::float8[],"
    " %b::timestamptz[], %b::text[], %b::jsonb[], %b::text[], %b::int4[], %b::text[],"
    " %b::int4[]) AS r(i, n, c, e, d, cpus, m, g, l, p, t, a, o, dep, dt, ai, b, mr)"
)
"""New pending workloads in one statement whatever their number: one array per column
(``_insert_rows``), sent in binary (``%b``: a text array would have psycopg escape
every element with a regular expression). Against one ``INSERT … VALUES`` per row
(psycopg's ``executemany``, a statement per row), measured over HTTP with batches of
~13: 14 % less of the server's CPU per create and 33 % less of PostgreSQL's
(docs/benchmarks.md, "Issue 11: PostgreSQL")."""
_INSERT_LABELS = (
    "INSERT INTO workload_labels (key, value, workload_id)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[])"
)
_INSERT_DEPENDENCIES = (
    "INSERT INTO workload_dependencies (workload_id, depends_on)"
    " SELECT * FROM unnest(%b::text[], %b::text[])"
)
_INSERT_CREATED_EVENTS = (
    "INSERT INTO events (workload_id, seq, type, from_status, to_status, at, reason, actor)"
    " SELECT w, 1, 'created', NULL, 'pending', a, NULL, actor"
    " FROM unnest(%b::text[], %b::timestamptz[], %b::text[]) AS e(w, a, actor)"
)
"""The ``created`` events of new workloads (ids, times, actors)."""
_CREATE_PLAIN = (
    f"WITH w AS ({_INSERT_WORKLOADS}), l AS ({_INSERT_LABELS}), e AS ({_INSERT_CREATED_EVENTS})"
    " SELECT pg_notify(%s, %s)"
)
"""Workloads without keys or dependencies, their labels (empty arrays: none), their
``created`` events and the ``corral_wake`` notification, in one statement. A
data-modifying ``WITH`` runs to completion whatever the outer query reads, and the
foreign keys of the labels and events are checked at the end of the statement, when
the workloads are there."""
_INSERT_NEXT_EVENT = (
    "INSERT INTO events (workload_id, seq, type, from_status, to_status, at, reason, actor)"
    " VALUES (%s, (SELECT MAX(seq) + 1 FROM events WHERE workload_id = %s), %s, %s, %s, %s,"
    " %s, %s)"
)
_INSERT_KEY = (
    "INSERT INTO idempotency_keys (owner, key, body_sha256, workload_id, created_at)"
    " VALUES (%s, %s, %s, %s, %s)"
)
_LOCK_STATUS = "SELECT status, owner FROM workloads WHERE id = %s FOR UPDATE"
_WRITES_IN_FLIGHT = (  # this database's only: a cluster's snapshot has every database's
    "SELECT backend_xid::text::bigint FROM pg_stat_activity"
    " WHERE datname = current_database() AND backend_xid IS NOT NULL"
)
_UPDATE_STATUS = (
    "UPDATE workloads SET status = %s, exit_code = %s, signal = %s, reason = %s,"
    " updated_at = %s, started_at = COALESCE(%s, started_at),"
    " finished_at = COALESCE(%s, finished_at), node = COALESCE(%s, node)"
    f" WHERE id = %s RETURNING {_COLUMNS}"
)
_SELECT_WORKLOAD = f"SELECT {_COLUMNS} FROM workloads WHERE id = %s"
_CLAIM_BODY = (
    "claimed AS (UPDATE workloads SET status = 'running', exit_code = NULL, signal = NULL,"
    " reason = %(reason)s, updated_at = %(now)s, started_at = %(now)s, node = %(node)s"
    " WHERE {gate}id IN (SELECT id FROM workloads WHERE id = ANY(%(ids)s)"
    " AND status = 'pending' FOR UPDATE SKIP LOCKED)"
    f" RETURNING {_COLUMNS}),"
    " logged AS (INSERT INTO events"
    " (workload_id, seq, type, from_status, to_status, at, reason, actor)"
    " SELECT c.id, (SELECT MAX(e.seq) + 1 FROM events AS e WHERE e.workload_id = c.id),"
    " 'transition', 'pending', 'running', %(now)s, %(reason)s, %(actor)s FROM claimed AS c)"
    " SELECT {held}, c.* FROM (VALUES (1)) AS one LEFT JOIN claimed AS c ON true"
)
_CLAIM = "WITH " + _CLAIM_BODY.format(gate="", held="true")
"""Claim ``ids`` still pending: one statement, the events too. The first column of
every row says the claim was allowed; the workloads follow (none: NULLs)."""
_FENCED_CLAIM = (
    "WITH fence AS MATERIALIZED (SELECT 1 FROM leases WHERE name = %(lease)s"
    " AND instance = %(instance)s AND epoch = %(epoch)s AND expires_at > clock_timestamp()"
    " FOR SHARE), "
    + _CLAIM_BODY.format(gate="EXISTS (SELECT FROM fence) AND ", held="EXISTS (SELECT FROM fence)")
)
"""``_CLAIM`` under the fence (``FENCE_SQL``, evaluated once): the lease row locked
shared before any workload, and nothing claimed when the fence no longer holds."""


def _lock_deletable(*, owner: bool) -> str:
    sql = _sql(deletable_query(owner=owner)).replace(
        "finished_at < %s", "finished_at < %s::timestamptz"
    )
    return sql + " FOR UPDATE OF w SKIP LOCKED"


_LOCK_DELETABLE = {owner: _lock_deletable(owner=owner) for owner in (False, True)}
"""``delete_finished``'s first statement (by whether an owner is given): the workloads
due, locked."""
_DELETE_UNNEEDED = (
    "DELETE FROM workloads AS w WHERE w.id = ANY(%s) AND NOT EXISTS (SELECT 1 FROM"
    " workload_dependencies AS d JOIN workloads AS a ON a.id = d.workload_id"
    " WHERE d.depends_on = w.id AND a.status IN ('pending', 'running')) RETURNING w.id"
)
"""``delete_finished``'s second statement: of the workloads locked, those still needed
by no pending or running workload, deleted (their rows elsewhere by cascade)."""
_LISTING = False
"""``prepare`` of listings and counts: never prepared. Their best plan depends on the
values (a rare status walks its index, a common one walks the ids), and a statement
psycopg has prepared (after 5 runs) gets PostgreSQL's generic plan after 5 more: at
10^6 workloads, 5-7 ms with plans made for the values, up to 55 ms with the generic one
(docs/benchmarks.md, "Issue 11: PostgreSQL"). Planning each time costs 0.4-0.7 ms
(EXPLAIN ANALYZE's planning time at that size)."""
_TOKENS = (
    'SELECT k.id, k."user", k.role, u.unix_user, k.description, k.created_at, k.revoked_at'
    ' FROM api_keys AS k JOIN users AS u ON u.name = k."user"'
)


class _Rfc3339Loader(Loader):
    """``timestamptz`` as the RFC 3339 text corral stores everywhere.

    PostgreSQL writes ``2026-11-28 15:18:27.123456+00`` (DateStyle ISO, TimeZone UTC:
    the session's settings), dropping trailing zeros of the fraction, or the whole
    fraction; this gives ``2026-11-28T15:18:27.123456Z``.
    """

    def load(self, data: Buffer) -> str:
        text = bytes(data).decode()
        if not text.endswith("+00"):
            raise ValueError(f"timestamptz {text!r} is not in UTC")
        seconds, _, fraction = text[:-3].partition(".")
        return f"{seconds[:10]}T{seconds[11:]}.{fraction:0<6}Z"


def _row_to_workload(row: Sequence[Any]) -> Workload:
    return workload_from_row(
        {
            "id": row[0],
            "name": row[1],
            "command": row[2],
            "env": row[3],
            "cwd": row[4],
            "resources": {"cpus": float(row[5]), "memory_mb": row[6], "gpus": row[7]},
            "labels": row[8],
            "priority": row[9],
            "timeout_seconds": row[10],
            "status": row[11],
            "exit_code": row[12],
            "signal": row[13],
            "reason": row[14],
            "created_at": row[15],
            "updated_at": row[16],
            "started_at": row[17],
            "finished_at": row[18],
            "owner": row[19],
            "depends_on": row[20],
            "dependency_type": row[21],
            "array_index": row[22],
            "batch_id": row[23],
            "max_running": row[24],
            "node": row[25],
        }
    )


def _token(row: Sequence[Any]) -> Token:
    return Token(
        id=row[0],
        user=row[1],
        admin=row[2] == KeyRole.ADMIN,
        role=row[2],
        unix_user=row[3],
        description=row[4],
        created_at=row[5],
        revoked_at=row[6],
    )


_BUSY_STATES = ("40", "53", "55P03", "57014")
"""SQLSTATEs (classes or codes) of a database that is there but cannot serve now: a
transaction rolled back by a conflict (40: deadlock, serialization), insufficient
resources (53: too many connections, out of memory; but 53100, a full disk),
``lock_not_available`` (a ``lock_timeout``), ``query_canceled`` (a
``statement_timeout``)."""
_UNREACHABLE_STATES = ("08", "57P")
"""Connection exceptions (08) and a server shutting down or starting (57P01-57P05)."""


_REFUSED_STATES = ("28", "3D000")
"""Invalid authorization (28: a wrong password, an unknown role, no ``pg_hba`` entry)
and an unknown database (3D000): the server is there and says no until an operator
changes something."""
_REFUSED_TEXT = re.compile(
    r"FATAL:\s+(?:password authentication failed|role \S+ does not exist|database \S+"
    r" does not exist|no pg_hba\.conf entry|permission denied)|no password supplied"
)
"""The same refusals as libpq reports them when connecting: a connection failure
carries no SQLSTATE in psycopg, only libpq's message."""


def _refusal(message: str) -> str:
    """The server's own words of a refused connection (after ``FATAL:``), else ''."""
    for line in message.splitlines():
        found = re.search(r"FATAL:\s+(.*)", line)
        if found:
            return found.group(1).strip()
        if "no password supplied" in line:
            return "no password supplied"
    return ""


def _domain_error(exc: psycopg.Error) -> CorralError:
    """The domain error for a psycopg error (see the module docstring). psycopg's
    error classes do not nest by SQLSTATE class, so the code decides."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    state = exc.sqlstate or ""
    if isinstance(exc, psycopg.DataError) and "NUL (0x00)" in detail:
        return InvalidInputError(NUL_REFUSED)  # psycopg's own check, before sending
    if state == "53100":
        return StorageFullError(detail)
    if isinstance(exc, PoolTimeout):
        return DatabaseUnreachableError(
            f"{detail}: it refuses connections, or every connection stayed busy"
        )
    if state.startswith(_BUSY_STATES):
        return StoreBusyError(detail)
    if isinstance(exc, psycopg.OperationalError) and (
        state.startswith(_REFUSED_STATES) or _REFUSED_TEXT.search(str(exc))
    ):
        return DatabaseRefusedError(_refusal(str(exc)) or detail)
    if state.startswith(_UNREACHABLE_STATES) or (
        not state and isinstance(exc, psycopg.OperationalError)  # no connection, a lost one
    ):
        return DatabaseUnreachableError(detail)
    return DatabaseError(detail)


@dataclass(frozen=True, slots=True)
class _Row:
    """A workload to insert, with its ``created`` event."""

    spec: WorkloadSpec
    owner: str
    actor: str | None
    now: str
    workload_id: str
    depends_on: list[str]
    batch_id: str | None = None
    max_running: int | None = None

    def workload(self) -> Workload:
        return workload_from_row(
            {
                **self.spec.model_dump(),
                "id": self.workload_id,
                "owner": self.owner,
                "depends_on": self.depends_on,
                "batch_id": self.batch_id,
                "max_running": self.max_running,
                "status": Status.PENDING,
                "exit_code": None,
                "signal": None,
                "reason": None,
                "created_at": self.now,
                "updated_at": self.now,
                "started_at": None,
                "finished_at": None,
            }
        )


async def _insert_rows(conn: Conn, rows: Sequence[_Row]) -> None:
    """Queue the inserts of ``rows``: every workload before any dependency (a row of
    a batch may name a later one), their labels and ``created`` events: one statement
    per table whatever the number of rows (see ``_INSERT_WORKLOADS``)."""
    await conn.execute(_INSERT_WORKLOADS, _workload_columns(rows))
    labels = [(k, v, r.workload_id) for r in rows for k, v in r.spec.labels.items()]
    if labels:
        await conn.execute(_INSERT_LABELS, _columns(labels))
    dependencies = [(r.workload_id, d) for r in rows for d in r.depends_on]
    if dependencies:
        await conn.execute(_INSERT_DEPENDENCIES, _columns(dependencies))
    await conn.execute(_INSERT_CREATED_EVENTS, _event_columns(rows))


def _workload_columns(rows: Sequence[_Row]) -> list[list[Any]]:
    """The parameters of ``_INSERT_WORKLOADS`` for ``rows``."""
    return _columns(
        [
            (
                r.workload_id,
                r.spec.name,
                _json_text(r.spec.command),
                _json_text(r.spec.env),
                r.spec.cwd,
                r.spec.resources.cpus,
                r.spec.resources.memory_mb,
                r.spec.resources.gpus,
                _json_text(r.spec.labels),
                r.spec.priority,
                r.spec.timeout_seconds,
                r.now,
                r.owner,
                _json_text(r.depends_on),
                r.spec.dependency_type,
                r.spec.array_index,
                r.batch_id,
                r.max_running,
            )
            for r in rows
        ]
    )


def _event_columns(rows: Sequence[_Row]) -> list[list[Any]]:
    """The parameters of ``_INSERT_CREATED_EVENTS`` for ``rows``."""
    return _columns([(r.workload_id, r.now, r.actor) for r in rows])


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """``rows`` as one list per column (each sent as an array)."""
    return [list(column) for column in zip(*rows, strict=True)]


async def _owned(conn: Conn, ids: Sequence[str]) -> dict[str, str]:
    """Each of ``ids`` that is a workload, with its owner (one query)."""
    if not ids:
        return {}
    cur = await conn.execute("SELECT id, owner FROM workloads WHERE id = ANY(%s)", (list(ids),))
    return {r[0]: r[1] for r in await cur.fetchall()}


def _check_text(spec: WorkloadSpec, at: tuple[str | int, ...]) -> None:
    """``FieldError`` for a NUL in the spec's one free text, its name (the API's model
    refuses it too; a caller of the store may not have gone through it)."""
    if spec.name is not None and "\x00" in spec.name:
        raise FieldError((*at, "name"), NUL_REFUSED)


def _check_dependencies(
    owners: dict[str, str], owner: str, refs: Sequence[tuple[tuple[str | int, ...], str]]
) -> None:
    """``FieldError`` at the first of ``refs`` (path, id) that is not a workload of
    ``owner`` (another user's workload does not exist for them)."""
    for loc, ref in refs:
        if owners.get(ref) != owner:
            raise FieldError(loc, f"no workload has id {ref!r}")


_SET_REASONS = (
    "UPDATE workloads AS w SET reason = r.reason"
    " FROM unnest(%s::text[], %s::text[]) AS r(id, reason)"
    " WHERE w.id = r.id AND w.id IN (SELECT id FROM workloads"
    " WHERE id = ANY(%s::text[]) AND status = 'pending' FOR UPDATE SKIP LOCKED)"
)


class PostgresStore(PostgresCluster):
    """The ``Store`` on one PostgreSQL database; see the module docstring (and
    ``store/postgres_cluster.py`` for servers, the lease and notifications)."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        timeout: float = POOL_TIMEOUT_SECONDS,
        migrate_schema: bool = True,
        session_name: str = "corral",
    ) -> None:
        """``session_name``: the ``application_name`` of its sessions; a server names
        them ``SESSION_PREFIX`` and its instance (``postgres_cluster``: a takeover
        ends a stalled leader's sessions by it)."""
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {pool_size}")
        self._url = url
        self._closed = False
        self._session_name = session_name
        if migrate_schema:
            self._migrate()
        self._pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            _conninfo(url),
            min_size=min(POOL_MIN_SIZE, pool_size),
            max_size=pool_size,
            kwargs={"autocommit": True},
            configure=self._configure,
            timeout=timeout,
            reconnect_timeout=POOL_RECONNECT_SECONDS,
            open=False,
            name="corral-store",
        )
        self._opened = False
        self._opening = asyncio.Lock()

    @property
    def url(self) -> str:
        return self._url

    starts_at_create = False
    """``NewWorkload.start`` is not honoured yet: ``_CREATE_PLAIN`` writes a create in
    one statement, and the claim would be a second (issue 13's next step)."""

    def _listen_conninfo(self) -> str:
        return _conninfo(self._url)

    async def _configure(self, conn: Conn) -> None:
        """Each new connection: UTC and ISO dates, read back as RFC 3339 strings; the
        server's session name."""
        conn.adapters.register_loader("timestamptz", _Rfc3339Loader)
        await conn.execute(
            "SELECT set_config('TimeZone', 'UTC', false), set_config('DateStyle', 'ISO', false),"
            " set_config('application_name', %s, false)",
            (self._session_name,),
        )

    def _migrate(self) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        engine = create_engine(migrate.sqlalchemy_url(self._url), poolclass=NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                migrate.upgrade_on(conn)
        except Exception as exc:
            cause = getattr(exc, "orig", None)
            if isinstance(cause, psycopg.Error):
                raise _domain_error(cause) from exc
            raise
        finally:
            engine.dispose()

    async def _ready(self) -> AsyncConnectionPool[Conn]:
        if self._closed:
            raise RuntimeError("store is closed")
        if not self._opened:
            async with self._opening:
                if not self._opened:
                    await self._pool.open(wait=False)
                    self._opened = True
        return self._pool

    # --- how statements run ------------------------------------------------------

    async def _transaction(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        """``body``'s statements in one pipelined transaction, run again on a deadlock,
        a serialization failure or an idempotency key another transaction wrote since
        ``body`` looked; psycopg errors become domain errors.

        Statements queue until a result is read or the transaction ends, so ``body``
        may return cursors of the last statements, read once the commit is through.
        """
        pool = await self._ready()
        conflict: psycopg.Error | None = None
        for _ in range(ATTEMPTS):
            try:
                async with pool.connection() as conn:
                    try:
                        async with conn.pipeline(), conn.transaction():
                            return await body(conn)
                    except psycopg.Error:
                        await _rollback(conn)
                        raise
            except (errors.SerializationFailure, errors.DeadlockDetected) as exc:
                conflict = exc
            except errors.UniqueViolation as exc:
                if exc.diag.constraint_name != _IDEMPOTENCY_KEY_INDEX:
                    raise _domain_error(exc) from exc
                conflict = exc
            except errors.ForeignKeyViolation as exc:
                if exc.diag.constraint_name != _DEPENDENCY_KEY:
                    raise _domain_error(exc) from exc
                conflict = exc
            except psycopg.Error as exc:
                raise _domain_error(exc) from exc
        raise StoreBusyError(
            f"{ATTEMPTS} runs of the transaction each met a conflicting one: {conflict}"
        ) from conflict

    async def _fetch(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] = (),
        *,
        prepare: bool | None = None,
    ) -> list[tuple[Any, ...]]:
        """The rows of one statement, run on its own (autocommit). ``prepare=False``:
        never as a prepared statement (see ``_LISTING``)."""
        pool = await self._ready()
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(sql, params, prepare=prepare)
                return await cur.fetchall()
        except psycopg.Error as exc:
            raise _domain_error(exc) from exc

    # --- writes ------------------------------------------------------------------

    async def create_workload(
        self,
        spec: WorkloadCreate,
        *,
        owner: str,
        idempotency_key: str | None = None,
        actor: str | None = None,
    ) -> Created:
        result = (await self.create_workloads([NewWorkload(spec, owner, idempotency_key, actor)]))[
            0
        ]
        if isinstance(result, CorralError):
            raise result
        return result

    async def create_workloads(self, items: Sequence[NewWorkload]) -> list[Created | CorralError]:
        if not any(i.idempotency_key is not None or i.spec.depends_on for i in items):
            return await self._create_plain(items)

        async def body(conn: Conn) -> list[Created | CorralError]:
            keys = [(i.owner, i.idempotency_key) for i in items if i.idempotency_key is not None]
            stored: dict[tuple[str, str], tuple[str, str]] = {}
            if keys:
                cur = await conn.execute(
                    "SELECT k.owner, k.key, k.body_sha256, k.workload_id FROM idempotency_keys"
                    " AS k JOIN unnest(%s::text[], %s::text[]) AS q(owner, key)"
                    " ON k.owner = q.owner AND k.key = q.key",
                    ([o for o, _ in keys], [k for _, k in keys]),
                )
                stored = {(r[0], r[1]): (r[2], r[3]) for r in await cur.fetchall()}
            owners = await _owned(
                conn, list(dict.fromkeys(d for i in items for d in i.spec.depends_on))
            )
            plan = _plan_creates(items, stored, owners)
            rows = [p for p in plan if isinstance(p, _Row)]
            if rows:
                await _insert_rows(conn, rows)
                keyed = [
                    (r.owner, key, spec_digest(item.spec), r.workload_id, r.now)
                    for item, r in zip(items, plan, strict=True)
                    if isinstance(r, _Row) and (key := item.idempotency_key) is not None
                ]
                if keyed:  # last: a key another transaction holds fails this one here
                    await conn.cursor().executemany(_INSERT_KEY, keyed)
                await notify(conn, WAKE, wake_payload([r.workload_id for r in rows]))
            replayed = [p for p in plan if isinstance(p, str)]
            now = {w.id: w for w in await _workloads(conn, replayed)} if replayed else {}
            made = {r.workload_id: r.workload() for r in rows}
            results: list[Created | CorralError] = []
            for p in plan:
                if isinstance(p, _Row):
                    results.append((made[p.workload_id], False))
                elif isinstance(p, _Replay):
                    results.append((made[p.workload_id], True))
                elif isinstance(p, str):
                    results.append((now[p], True))
                else:
                    results.append(p)
            return results

        return await self._transaction(body)

    async def _create_plain(self, items: Sequence[NewWorkload]) -> list[Created | CorralError]:
        """``create_workloads`` of items without idempotency keys or dependencies: no
        lookups, so one statement writes them all (``_CREATE_PLAIN``)."""
        plan = _plan_creates(items, {}, {})
        rows = [p for p in plan if isinstance(p, _Row)]
        if rows:
            labels = [(k, v, r.workload_id) for r in rows for k, v in r.spec.labels.items()]
            await self._fetch(
                _CREATE_PLAIN,
                [
                    *_workload_columns(rows),
                    *(_columns(labels) if labels else [[], [], []]),
                    *_event_columns(rows),
                    WAKE,
                    wake_payload([r.workload_id for r in rows]),
                ],
            )
        results: list[Created | CorralError] = []
        for p in plan:
            assert not isinstance(p, _Replay | str)  # (no keys: nothing is replayed)
            results.append((p.workload(), False) if isinstance(p, _Row) else p)
        return results

    async def create_batch(
        self,
        specs: Sequence[WorkloadBatchItem],
        *,
        owner: str,
        max_running: int | None = None,
        idempotency_key: str | None = None,
        actor: str | None = None,
    ) -> BatchCreated:
        if not specs:
            raise InvalidInputError("a batch needs at least one workload")
        check_batch_references(specs)
        for i, spec in enumerate(specs):
            _check_text(spec, ("items", i))
        digest = batch_digest(specs, max_running)

        async def body(conn: Conn) -> BatchCreated:
            if idempotency_key is not None:
                cur = await conn.execute(
                    "SELECT body_sha256, workload_id FROM idempotency_keys"
                    " WHERE owner = %s AND key = %s",
                    (owner, idempotency_key),
                )
                row = await cur.fetchone()
                if row is not None:
                    if row[0] != digest:
                        raise IdempotencyKeyReusedError(idempotency_key, row[1])
                    cur = await conn.execute(
                        f"SELECT {_COLUMNS} FROM workloads WHERE batch_id ="
                        " (SELECT batch_id FROM workloads WHERE id = %s) ORDER BY id",
                        (row[1],),
                    )
                    return [_row_to_workload(r) for r in await cur.fetchall()], True
            refs = [
                (("items", i, "depends_on", j), ref)
                for i, spec in enumerate(specs)
                for j, ref in enumerate(spec.depends_on)
                if isinstance(ref, str)
            ]
            if refs:
                _check_dependencies(await _owned(conn, [r for _, r in refs]), owner, refs)
            batch_id = new_id()
            ids = [new_id() for _ in specs]  # increasing: the batch's order is id order
            now = now_rfc3339()
            rows = [
                _Row(
                    spec,
                    owner,
                    actor,
                    now,
                    workload_id,
                    list(
                        dict.fromkeys(ids[r] if isinstance(r, int) else r for r in spec.depends_on)
                    ),
                    batch_id,
                    max_running,
                )
                for spec, workload_id in zip(specs, ids, strict=True)
            ]
            await _insert_rows(conn, rows)
            if idempotency_key is not None:
                await conn.execute(_INSERT_KEY, (owner, idempotency_key, digest, ids[0], now))
            await notify(conn, WAKE, wake_payload(ids))
            return [r.workload() for r in rows], False

        return await self._transaction(body)

    async def update_workload_status(
        self,
        workload_id: str,
        status: Status,
        *,
        exit_code: int | None = None,
        reason: str | None = None,
        signal: str | None = None,
        actor: str | None = None,
        owner: str | None = None,
        node: str | None = None,
        fence: Fence | None = None,
    ) -> Workload:
        status = Status(status)
        if reason is None:
            reason = default_reason(status, exit_code)

        async def body(conn: Conn) -> AsyncCursor[tuple[Any, ...]] | CorralError:
            if fence is None:
                cur = await conn.execute(_LOCK_STATUS, (workload_id,))
            else:  # the lease row first (as claims lock it), in the same round trip
                fenced = await conn.execute(FENCE_SQL, fence_params(fence))
                cur = await conn.execute(_LOCK_STATUS, (workload_id,))
                if await fenced.fetchone() is None:
                    return FencedError(fence)
            row = await cur.fetchone()
            if row is None or (owner is not None and row[1] != owner):
                return NotFoundError(workload_id)
            current = Status(row[0])
            if not valid_transition(current, status):
                # Returned, not raised: the transaction commits (having written nothing)
                # instead of rolling back, which would drop the prepared statements.
                return InvalidTransitionError(workload_id, current, status)
            now = now_rfc3339()  # under the row lock: events' times follow their seq
            updated = await conn.execute(
                _UPDATE_STATUS,
                (
                    status.value,
                    exit_code,
                    signal,
                    reason,
                    now,
                    now if status is Status.RUNNING else None,
                    now if status in TERMINAL else None,
                    node,
                    workload_id,
                ),
            )
            await conn.execute(
                _INSERT_NEXT_EVENT,
                (
                    workload_id,
                    workload_id,
                    "transition",
                    current.value,
                    status.value,
                    now,
                    reason,
                    actor,
                ),
            )
            if status is Status.KILLED:
                await notify(conn, KILL, workload_id)
            return updated

        result = await self._transaction(body)
        if isinstance(result, CorralError):
            raise result
        row = await result.fetchone()  # read by the commit's round trip already
        assert row is not None
        return _row_to_workload(row)

    async def set_pending_reasons(self, reasons: Sequence[tuple[str, str]]) -> None:
        """As the protocol says, except that a workload another transaction has locked
        (a claim, a kill, a server stalled inside a transaction) keeps its reason: a
        reason is advice, never worth waiting for a lock (the scheduler would wait
        with it)."""
        latest = dict(reasons)  # an id given twice: its last reason, as SQLite's loop
        if not latest:
            return

        async def body(conn: Conn) -> None:
            ids = list(latest)
            await conn.execute(_SET_REASONS, (ids, list(latest.values()), ids))

        await self._transaction(body)

    async def claim_workloads(
        self, workload_ids: Sequence[str], *, node: str, fence: Fence | None = None
    ) -> list[Workload]:
        """pending→running for each of ``workload_ids`` still pending, on ``node``, in
        one statement (with ``fence`` checked first); the claimed ones, in the order
        given. Those no longer pending, or locked by a transition under way (a kill),
        are left alone."""
        ids = list(dict.fromkeys(workload_ids))
        if not ids and fence is None:
            return []
        reason = default_reason(Status.RUNNING, None)
        params: dict[str, Any] = {
            "ids": ids,
            "node": node,
            "reason": reason,
            "now": now_rfc3339(),
            "actor": CLAIM_ACTOR,
        }
        if fence is not None:
            params.update(zip(("lease", "instance", "epoch"), fence_params(fence), strict=True))
        rows = await self._fetch(_CLAIM if fence is None else _FENCED_CLAIM, params)
        if not rows[0][0]:
            assert fence is not None
            raise FencedError(fence)
        claimed = {w.id: w for w in (_row_to_workload(r[1:]) for r in rows if r[1] is not None)}
        return [claimed[i] for i in ids if i in claimed]

    async def delete_finished(
        self,
        older_than_seconds: float,
        *,
        owner: str | None = None,
        limit: int = DELETE_BATCH_MAX,
    ) -> list[str]:
        """See ``Store.delete_finished``. One transaction: the database's time (and
        the newest event's workload, which SQLite must keep: kept here too, for one
        contract); the workloads due, locked (``FOR UPDATE SKIP LOCKED``: one another
        transaction holds is left for the next call); then, in a statement whose
        snapshot is taken once they are locked, those of them no pending or running
        workload depends on, deleted. A create naming one of them either committed
        before the lock (the second statement sees its dependency and keeps it) or
        waits for the delete and fails on the foreign key (``_DEPENDENCY_KEY``: run
        again, it finds no such workload).

        The cutoff is by the earlier of this server's clock and the database's:
        ``finished_at`` and ids are stamped by the server that writes them
        (``now_rfc3339``, ``new_id``), so the database's clock alone, ahead of a
        server's, would delete what that server just ended; the server's alone,
        ahead of the database's, what the others did."""
        deletable_params(0.0, None, older_than_seconds, owner, limit)  # checked first

        async def body(conn: Conn) -> list[str]:
            cur = await conn.execute(
                f"SELECT extract(epoch FROM clock_timestamp())::float8, ({NEWEST_EVENTS_WORKLOAD})"
            )
            row = await cur.fetchone()
            assert row is not None
            now = min(time.time(), float(row[0]))
            params = deletable_params(now, row[1], older_than_seconds, owner, limit)
            cur = await conn.execute(_LOCK_DELETABLE[owner is not None], params)
            ids = [r[0] for r in await cur.fetchall()]
            if not ids:
                return []
            cur = await conn.execute(_DELETE_UNNEEDED, (ids,))
            return [r[0] for r in await cur.fetchall()]

        return await self._transaction(body)

    async def pending_ids(self, *, after: str | None = None, limit: int | None = None) -> list[str]:
        """The ids of pending workloads, in id order (the scheduler's cache check;
        ``after`` and ``limit`` as ``Store.pending_ids``)."""
        rows = await self._fetch(*pending_ids_query("%s", after, limit))
        return [r[0] for r in rows]

    async def queue_head(
        self, limit: int, *, owner: str | None = None
    ) -> tuple[list[Workload], int]:
        where, params = QUEUED_WHERE, []
        if owner is not None:
            where, params = f"{where} AND owner = %s", [owner]
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM workloads WHERE {where} ORDER BY priority DESC, id LIMIT %s",
            [*params, limit],
        )
        count = await self._fetch(f"SELECT COUNT(*) FROM workloads WHERE {where}", params)
        return [_row_to_workload(r) for r in rows], int(count[0][0])

    async def get_workloads(self, workload_ids: Sequence[str]) -> list[Workload]:
        """The workloads of ``workload_ids`` that exist, in id order."""
        ids = list(dict.fromkeys(workload_ids))
        if not ids:
            return []
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM workloads WHERE id = ANY(%s) ORDER BY id", (ids,)
        )
        return [_row_to_workload(r) for r in rows]

    # --- reads -------------------------------------------------------------------

    async def statuses(self, workload_ids: Sequence[str]) -> dict[str, Status]:
        ids = list(dict.fromkeys(workload_ids))
        if not ids:
            return {}
        rows = await self._fetch("SELECT id, status FROM workloads WHERE id = ANY(%s)", (ids,))
        return {r[0]: Status(r[1]) for r in rows}

    async def get_workload(self, workload_id: str, *, owner: str | None = None) -> Workload:
        rows = await self._fetch(_SELECT_WORKLOAD, (workload_id,))
        if not rows or (owner is not None and rows[0][19] != owner):
            raise NotFoundError(workload_id)
        return _row_to_workload(rows[0])

    async def list_workloads(
        self,
        *,
        statuses: Sequence[Status] = (),
        labels: Sequence[tuple[str, str]] = (),
        limit: int = 50,
        cursor: str | None = None,
        owner: str | None = None,
        id_prefix: str | None = None,
        name: str | None = None,
    ) -> Page:
        sql, params = page_query(
            statuses=statuses,
            labels=labels,
            limit=limit,
            cursor=cursor,
            owner=owner,
            id_prefix=id_prefix,
            name=name,
        )
        rows = await self._fetch(_sql(sql), params, prepare=_LISTING)
        items = [_row_to_workload(r) for r in rows[:limit]]
        next_cursor = items[-1].id if len(rows) > limit else None
        return Page(items=items, next_cursor=next_cursor)

    async def count_workloads(
        self,
        *,
        statuses: Sequence[Status] = (),
        labels: Sequence[tuple[str, str]] = (),
        owner: str | None = None,
        id_prefix: str | None = None,
        name: str | None = None,
    ) -> int:
        sql, params = checked_count_query(
            statuses=statuses, labels=labels, owner=owner, id_prefix=id_prefix, name=name
        )
        rows = await self._fetch(_sql(sql), params, prepare=_LISTING)
        return int(rows[0][0])

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def count_by_status(self, *, owner: str | None = None) -> dict[Status, int]:
        sql = "SELECT status, COUNT(*) FROM workloads"
        sql += " WHERE owner = %s GROUP BY status" if owner is not None else " GROUP BY status"
        rows = await self._fetch(sql, () if owner is None else (owner,))
        counts = dict.fromkeys(Status, 0)
        counts.update((Status(status), int(n)) for status, n in rows)
        return counts

    async def list_events(self, workload_id: str, *, owner: str | None = None) -> list[Event]:
        sql = (
            "SELECT e.seq, e.type, e.from_status, e.to_status, e.at, e.reason, e.actor"
            " FROM events AS e"
        )
        if owner is None:
            rows = await self._fetch(
                f"{sql} WHERE e.workload_id = %s ORDER BY e.seq", (workload_id,)
            )
        else:
            rows = await self._fetch(
                f"{sql} JOIN workloads AS w ON w.id = e.workload_id"
                " WHERE e.workload_id = %s AND w.owner = %s ORDER BY e.seq",
                (workload_id, owner),
            )
        if not rows:
            # Every workload has its 'created' event: no rows means none (of theirs).
            raise NotFoundError(workload_id)
        return [
            Event.model_validate(
                {
                    "seq": r[0],
                    "type": r[1],
                    "from_status": r[2],
                    "to_status": r[3],
                    "at": r[4],
                    "reason": r[5],
                    "actor": r[6],
                }
            )
            for r in rows
        ]

    async def list_events_after(
        self,
        after_id: int,
        matching: EventFilter = EVERY_EVENT,
        *,
        limit: int = EVENTS_LIMIT_MAX,
        until_id: int | None = None,
    ) -> list[TransitionEvent]:
        sql, params = events_query(after_id, matching, limit=limit, until_id=until_id)
        rows = await self._fetch(_sql(sql), params, prepare=_LISTING)
        return [row_to_transition(r) for r in rows]

    async def event_ids_after(self, after_id: int, *, limit: int = EVENTS_LIMIT_MAX) -> list[int]:
        check_events_limit(after_id, limit)
        rows = await self._fetch(_sql(EVENT_IDS_QUERY), (after_id, limit))
        return [int(r[0]) for r in rows]

    async def writes_in_flight(self) -> WritesInFlight | None:
        rows = await self._fetch(_WRITES_IN_FLIGHT, ())
        return frozenset(int(r[0]) for r in rows)

    # --- users and API keys ------------------------------------------------------

    async def create_api_key(
        self,
        *,
        user: str,
        key_sha256: str,
        admin: bool = False,
        role: KeyRole | None = None,
        unix_user: str | None = None,
        description: str | None = None,
    ) -> Token:
        key_role = role_of(admin, role).value
        key_id = new_id()

        async def body(conn: Conn) -> AsyncCursor[tuple[Any, ...]]:
            now = now_rfc3339()
            cur = await conn.execute(
                "INSERT INTO users (name, unix_user, created_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING RETURNING name",
                (user, unix_user, now),
            )
            if await cur.fetchone() is None:  # an existing user: its row is locked now
                cur = await conn.execute(
                    "SELECT unix_user FROM users WHERE name = %s FOR UPDATE", (user,)
                )
                row = await cur.fetchone()
                assert row is not None
                if unix_user is not None and row[0] is None:  # a first mapping, given now
                    await conn.execute(
                        "UPDATE users SET unix_user = %s WHERE name = %s", (unix_user, user)
                    )
                elif unix_user is not None and row[0] != unix_user:
                    raise UnixUserConflictError(user, row[0], unix_user)
            await conn.execute(
                'INSERT INTO api_keys (id, "user", role, key_sha256, description, created_at)'
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (key_id, user, key_role, key_sha256, description, now),
            )
            return await conn.execute(f"{_TOKENS} WHERE k.id = %s", (key_id,))

        found = await (await self._transaction(body)).fetchone()
        assert found is not None
        return _token(found)

    async def find_api_key(self, key_sha256: str) -> Principal | None:
        rows = await self._fetch(
            'SELECT id, "user", role, key_sha256 FROM api_keys'
            " WHERE key_sha256 = %s AND revoked_at IS NULL",
            (key_sha256,),
        )
        if not rows or not same_digest(rows[0][3], key_sha256):
            return None
        return Principal.of(rows[0][0], rows[0][1], rows[0][2])

    async def list_api_keys(self) -> list[Token]:
        return [_token(r) for r in await self._fetch(f"{_TOKENS} ORDER BY k.id DESC")]

    async def revoke_api_key(self, key_id: str) -> Token:
        async def body(conn: Conn) -> AsyncCursor[tuple[Any, ...]]:
            await conn.execute(
                "UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (now_rfc3339(), key_id),
            )
            return await conn.execute(f"{_TOKENS} WHERE k.id = %s", (key_id,))

        row = await (await self._transaction(body)).fetchone()
        if row is None:
            raise TokenNotFoundError(key_id)
        return _token(row)

    async def account_of(self, user: str) -> Account:
        rows = await self._fetch(
            'SELECT unix_user, EXISTS (SELECT 1 FROM api_keys WHERE "user" = %s'
            " AND role = 'admin' AND revoked_at IS NULL) FROM users WHERE name = %s",
            (user, user),
        )
        return Account(None, False) if not rows else Account(rows[0][0], bool(rows[0][1]))

    async def close(self) -> None:
        self._closed = True
        if self._opened:
            await self._pool.close()


@dataclass(frozen=True, slots=True)
class _Replay:
    """An item whose idempotency key an earlier item of the same call wrote."""

    workload_id: str


_Plan = _Row | _Replay | str | CorralError
"""What to do with one item of ``create_workloads``: insert a row; replay a workload
made by this call, or (an id) one stored before; or refuse it."""


def _plan_creates(
    items: Sequence[NewWorkload],
    stored: dict[tuple[str, str], tuple[str, str]],
    owners: dict[str, str],
) -> list[_Plan]:
    """Each item's fate, as ``SQLiteStore.create_workloads`` decides it item by item:
    ``stored`` has the idempotency keys found (``(owner, key)`` → ``(digest, id)``),
    ``owners`` the owner of each dependency found."""
    keys = dict(stored)
    made: set[str] = set()
    plan: list[_Plan] = []
    for item in items:
        key = item.idempotency_key
        digest = spec_digest(item.spec) if key is not None else ""
        if key is not None and (found := keys.get((item.owner, key))) is not None:
            if found[0] != digest:
                plan.append(IdempotencyKeyReusedError(key, found[1]))
            else:
                plan.append(_Replay(found[1]) if found[1] in made else found[1])
            continue
        refs = [(("depends_on", j), ref) for j, ref in enumerate(item.spec.depends_on)]
        try:
            _check_text(item.spec, ())
            _check_dependencies(owners, item.owner, refs)
        except FieldError as exc:
            plan.append(exc)
            continue
        row = _Row(
            item.spec,
            item.owner,
            item.actor,
            now_rfc3339(),
            new_id(),
            list(dict.fromkeys(item.spec.depends_on)),
        )
        made.add(row.workload_id)
        if key is not None:
            keys[(item.owner, key)] = (digest, row.workload_id)
        plan.append(row)
    return plan


async def _workloads(conn: Conn, ids: Sequence[str]) -> list[Workload]:
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM workloads WHERE id = ANY(%s)", (list(ids),))
    return [_row_to_workload(r) for r in await cur.fetchall()]


async def _rollback(conn: Conn) -> None:
    """Leave ``conn`` outside a transaction after a failure (a statement that failed in
    pipeline mode leaves the transaction aborted, its COMMIT skipped)."""
    if conn.broken or conn.info.transaction_status == pq.TransactionStatus.IDLE:
        return
    with suppress(psycopg.Error):  # the pool discards a connection it cannot reset
        await conn.rollback()


def _conninfo(url: str) -> str:
    """A libpq URL (SQLAlchemy's driver suffix, if any, dropped)."""
    for scheme in ("postgresql+psycopg://", "postgres+psycopg://"):
        if url.startswith(scheme):
            return "postgresql://" + url.removeprefix(scheme)
    return url


def pool_size_from_env(default: int = DEFAULT_POOL_SIZE) -> int:
    """``CORRAL_DB_POOL_SIZE`` when set (a positive integer), else ``default``."""
    text = os.environ.get("CORRAL_DB_POOL_SIZE", "").strip()
    if not text:
        return default
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"CORRAL_DB_POOL_SIZE must be a positive integer, not {text!r}")
    return size
