"""``SQLiteStore``: the embedded default store, synchronous (the server serves the
async ``Store`` protocol over it with ``AsyncSQLiteStore``, ``store/sqlite_async.py``;
migrations and offline paths use it as it is).

Built on the standard library's ``sqlite3`` rather than SQLAlchemy Core: the hot
paths (create, get, transition) are one to three short statements, and SQLAlchemy's
per-statement overhead would be most of their cost. Alembic (on SQLAlchemy) owns the
schema; this module owns the queries.

Guarantees:

- One connection per thread (``threading.local``), WAL journal, ``busy_timeout``
  (30 s by default, 1 s in the server: see ``open_store``), ``synchronous=NORMAL``:
  a committed transaction is in the WAL file before the call returns, so it survives
  a crash (``kill -9``) of the process. (It may not survive a power loss;
  ``synchronous=FULL`` buys that at about a fifth of the speed.)
- Every read-then-write runs in ``BEGIN IMMEDIATE``: the write lock is taken before
  the read, so two writers never both see the same old status. A transition whose
  target has one allowed source status is a single conditional ``UPDATE``; see
  ``update_workload_status``.
- With ``background_checkpoints`` (the server's setting), WAL checkpoints -- the only
  step that calls ``fsync`` -- run in a thread of their own every
  ``CHECKPOINT_INTERVAL_SECONDS`` instead of inside whichever commit crosses SQLite's
  1000-page threshold, which on the server is a request on the event loop.
- Faults are domain errors: ``SQLITE_FULL`` (or an I/O error while the file system
  has no room) is ``StorageFullError``; ``SQLITE_BUSY``/``SQLITE_LOCKED`` once the
  busy timeout has passed is ``StoreBusyError``. A write transaction that fails
  rolls back whole: no partial rows. Other ``sqlite3`` errors propagate as they are.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from pydantic_core import to_json

from corral.errors import CorralError, FieldError, InvalidInputError
from corral.ids import (
    check_id_prefix,
    id_ceiling,
    id_prefix_range,
    looks_like_id,
    new_id,
    now_rfc3339,
    rfc3339_at,
)
from corral.model import (
    LABELS_MAX_ENTRIES,
    TERMINAL,
    Event,
    Status,
    TransitionEvent,
    Workload,
    WorkloadBatchItem,
    WorkloadCreate,
    WorkloadSpec,
    check_batch_references,
    default_reason,
    sources_of,
    valid_transition,
    workload_from_row,
)
from corral.store import migrate
from corral.store.base import (
    CLAIM_ACTOR,
    DELETE_BATCH_MAX,
    EVENTS_LIMIT_MAX,
    EVERY_EVENT,
    LIST_LIMIT_MAX,
    OLDER_THAN_MAX_SECONDS,
    BatchCreated,
    Created,
    EventFilter,
    NewWorkload,
    Page,
)
from corral.store.cluster import Fence, FencedError
from corral.store.errors import (
    DatabaseError,
    IdempotencyKeyReusedError,
    InvalidTransitionError,
    NotFoundError,
    StorageFullError,
    StoreBusyError,
)
from corral.store.sqlite_cluster import SQLiteCluster, check_fence
from corral.store.sqlite_keys import SQLiteKeys

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
SERVER_BUSY_TIMEOUT_MS = 1_000
"""The server's: a writer in another process may make a request wait this long at
most before it gets a 503 (and the server's writes queue behind that one on its
writer thread, ``AsyncSQLiteStore``)."""
FULL_BELOW_BYTES = 1 << 20
"""An I/O error while the file system has less room than this counts as a full disk
(``ENOSPC`` surfaces as ``SQLITE_IOERR`` on some paths, e.g. growing the WAL index)."""

# Primary result codes (the low byte of an extended code).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR, _SQLITE_FULL = 5, 6, 10, 13
CHECKPOINT_INTERVAL_SECONDS = 1.0

_COLUMNS = (
    "id, name, command, env, cwd, cpus, memory_mb, gpus, labels, priority, timeout_seconds,"
    " status, exit_code, signal, reason, created_at, updated_at, started_at, finished_at, owner,"
    " depends_on, dependency_type, array_index, batch_id, max_running, node"
)
_INSERT_WORKLOAD = (
    f"INSERT INTO workloads ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
    " NULL, NULL, NULL, ?, ?, NULL, NULL, ?, ?, ?, ?, ?, ?, NULL)"
)
_ID_CHUNK = 500
"""Ids per ``IN (…)`` query (SQLite allows 32,766 parameters; short lists plan better)."""
_INSERT_RUNNING = (  # started at submit: running on a node from the first write
    f"INSERT INTO workloads ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
    " NULL, NULL, NULL, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_EVENT = (
    "INSERT INTO events (workload_id, seq, type, from_status, to_status, at, reason, actor)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_NEXT_EVENT = (
    "INSERT INTO events (workload_id, seq, type, from_status, to_status, at, reason, actor)"
    " VALUES (?, (SELECT MAX(seq) + 1 FROM events WHERE workload_id = ?), ?, ?, ?, ?, ?, ?)"
)
_UPDATE_STATUS = (
    "UPDATE workloads SET status = ?, exit_code = ?, signal = ?, reason = ?, updated_at = ?,"
    " started_at = COALESCE(?, started_at), finished_at = COALESCE(?, finished_at),"
    f" node = COALESCE(?, node) WHERE id = ? AND status = ? RETURNING {_COLUMNS}"
)
_UPDATE_OWNED_STATUS = _UPDATE_STATUS.replace(" RETURNING", " AND owner = ? RETURNING")
_RUNNING_REASON = default_reason(Status.RUNNING, None)


def _json_text(value: object) -> str:
    """Compact JSON text, from Pydantic's Rust serializer (4x ``json.dumps``)."""
    return to_json(value).decode()


def _row_to_workload(row: Sequence[Any]) -> Workload:
    return workload_from_row(
        {
            "id": row[0],
            "name": row[1],
            "command": json.loads(row[2]),
            "env": json.loads(row[3]),
            "cwd": row[4],
            "resources": {"cpus": float(row[5]), "memory_mb": row[6], "gpus": row[7]},
            "labels": json.loads(row[8]),
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
            "depends_on": json.loads(row[20]),
            "dependency_type": row[21],
            "array_index": row[22],
            "batch_id": row[23],
            "max_running": row[24],
            "node": row[25],
        }
    )


_HAS_LABEL = (
    " AND EXISTS (SELECT 1 FROM workload_labels AS l"
    " WHERE l.key = ? AND l.value = ? AND l.workload_id = w.id)"
)


def list_query(
    *,
    statuses: Sequence[Status],
    labels: Sequence[tuple[str, str]],
    cursor: str | None,
    limit: int,
    owner: str | None = None,
    id_prefix: str | None = None,
    name: str | None = None,
) -> tuple[str, list[Any]]:
    """The SQL of ``list_workloads``, shaped so that SQLite walks an index in id order
    and stops after ``limit`` matches, whatever the table's size:

    - with statuses: one ``(status, id)`` index walk per status, each checking labels
      by primary-key probes, merged by ``UNION ALL … ORDER BY id DESC``;
    - with labels only: a walk of the first label's ``(key, value, workload_id)`` index;
    - with neither: a walk of the primary key.

    With an ``owner``, the walks are of the ``(owner, status, id)`` index instead, one
    per status when no status is asked for (the label walk checks the owner of each
    row it meets). An ``id_prefix`` is a range of the id in whichever index is walked;
    a ``name`` is checked on each row met (no index has names).

    A ``status IN (…) ORDER BY id`` over one index would instead sort every matching
    row (250 ms at 10^6 rows). The slow cases left: a label, or a name, that is rare
    within a common status makes that status's walk long.
    """
    cols = ", ".join(f"w.{c.strip()}" for c in _COLUMNS.split(","))
    if owner is not None and not statuses and not labels:
        statuses = list(Status)  # a walk per status of (owner, status, id), merged
    if statuses:
        parts, params = [], []
        for status in dict.fromkeys(Status(s).value for s in statuses):
            where, where_params = _conditions("w.id", cursor, id_prefix, owner, name, labels)
            parts.append(
                f"SELECT * FROM (SELECT {cols} FROM workloads AS w"
                f" WHERE w.status = ?{where} ORDER BY w.id DESC LIMIT ?) AS page"
            )
            params += [status, *where_params, limit]
        return " UNION ALL ".join(parts) + " ORDER BY id DESC LIMIT ?", [*params, limit]
    if labels:
        (key, value), rest = labels[0], labels[1:]
        where, params = _conditions("first.workload_id", cursor, id_prefix, owner, name, rest)
        sql = (
            f"SELECT {cols} FROM workload_labels AS first CROSS JOIN workloads AS w"
            f" ON w.id = first.workload_id WHERE first.key = ? AND first.value = ?{where}"
            " ORDER BY first.workload_id DESC LIMIT ?"
        )
        return sql, [key, value, *params, limit]
    # (an owner took a path above)
    where, params = _conditions("w.id", cursor, id_prefix, None, name, ())
    where = f" WHERE{where.removeprefix(' AND')}" if where else ""
    return f"SELECT {cols} FROM workloads AS w{where} ORDER BY w.id DESC LIMIT ?", [*params, limit]


def count_query(
    *,
    statuses: Sequence[Status],
    labels: Sequence[tuple[str, str]],
    owner: str | None = None,
    id_prefix: str | None = None,
    name: str | None = None,
) -> tuple[str, list[Any]]:
    """The SQL of ``count_workloads``: a walk of the first label's index when there
    are labels (a label is usually rarer than a status), else of ``(owner, status,
    id)`` or ``(status, id)`` for the statuses (every status for an owner without
    labels: an id prefix is then a range within each), else of the primary key; no
    order, no limit."""
    if owner is not None and not statuses and not labels:
        statuses = list(Status)
    status_values = list(dict.fromkeys(Status(s).value for s in statuses))
    in_statuses = f" AND w.status IN ({', '.join('?' * len(status_values))})"
    if not status_values:
        in_statuses = ""
    if labels:
        (key, value), rest = labels[0], labels[1:]
        where, params = _conditions("first.workload_id", None, id_prefix, owner, name, rest)
        sql = (
            "SELECT COUNT(*) FROM workload_labels AS first CROSS JOIN workloads AS w"
            " ON w.id = first.workload_id WHERE first.key = ? AND first.value = ?"
            f"{in_statuses}{where}"
        )
        return sql, [key, value, *status_values, *params]
    where, params = _conditions("w.id", None, id_prefix, owner, name, ())
    where = (in_statuses + where).removeprefix(" AND")
    sql = "SELECT COUNT(*) FROM workloads AS w" + (f" WHERE{where}" if where else "")
    return sql, [*status_values, *params]


def _conditions(
    id_column: str,
    cursor: str | None,
    id_prefix: str | None,
    owner: str | None,
    name: str | None,
    labels: Sequence[tuple[str, str]],
) -> tuple[str, list[Any]]:
    """`` AND …`` terms of a listing's walk, and their parameters; ``id_column`` is
    the id of the index walked, so that the cursor and the prefix are ranges of it."""
    sql, params = "", []
    if cursor is not None:
        sql += f" AND {id_column} < ?"
        params.append(cursor)
    if id_prefix is not None:
        sql += f" AND {id_column} >= ? AND {id_column} < ?"
        params += id_prefix_range(id_prefix)
    if owner is not None:
        sql += " AND w.owner = ?"
        params.append(owner)
    if name is not None:
        sql += " AND w.name = ?"
        params.append(name)
    sql += _HAS_LABEL * len(labels)
    params += [x for pair in labels for x in pair]
    return sql, params


def _checked_filters(
    labels: Sequence[tuple[str, str]], id_prefix: str | None
) -> list[tuple[str, str]]:
    """The label filters without repeats, or ``InvalidInputError`` for too many of
    them or a bad id prefix."""
    labels = list(dict.fromkeys(labels))
    if len(labels) > LABELS_MAX_ENTRIES:
        # Each filter is one more EXISTS term; SQLite caps an expression's depth.
        raise InvalidInputError(
            f"{len(labels)} label filters; at most {LABELS_MAX_ENTRIES} are allowed"
        )
    if id_prefix is not None:
        try:
            check_id_prefix(id_prefix)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
    return labels


EVENT_COLUMNS = (
    "e.id, e.workload_id, e.seq, e.type, e.from_status, e.to_status, e.at, e.reason,"
    " e.actor, w.name, w.labels"
)


def events_query(
    after_id: int, matching: EventFilter, *, limit: int, until_id: int | None = None
) -> tuple[str, list[Any]]:
    """``list_events_after``'s arguments checked (``InvalidInputError``) and its
    statement (SQLite's parameters; ``EVENT_COLUMNS``): a walk of the events' primary
    key from ``after_id``, each event's workload probed by its primary key for the
    filters, so a page costs its rows (and the rows it skips) whatever the table's
    size."""
    check_events_limit(after_id, limit)
    where: list[str] = ["e.id > ?"]
    params: list[Any] = [after_id]
    if until_id is not None:
        where.append("e.id <= ?")
        params.append(until_id)
    if matching.owner is not None:
        where.append("w.owner = ?")
        params.append(matching.owner)
    ids = list(dict.fromkeys(matching.workload_ids))
    if ids:
        if len(ids) > _ID_CHUNK:
            raise InvalidInputError(f"{len(ids)} workloads; at most {_ID_CHUNK} are allowed")
        where.append(f"e.workload_id IN ({', '.join('?' * len(ids))})")
        params += ids
    values = list(dict.fromkeys(Status(s).value for s in matching.statuses))
    if values:
        where.append(f"e.to_status IN ({', '.join('?' * len(values))})")
        params += values
    for key, value in _checked_filters(matching.labels, None):
        where.append(
            "EXISTS (SELECT 1 FROM workload_labels AS l WHERE l.workload_id = e.workload_id"
            " AND l.key = ? AND l.value = ?)"
        )
        params += [key, value]
    sql = (
        f"SELECT {EVENT_COLUMNS} FROM events AS e CROSS JOIN workloads AS w"
        f" ON w.id = e.workload_id WHERE {' AND '.join(where)} ORDER BY e.id LIMIT ?"
    )
    return sql, [*params, limit]


QUEUED_WHERE = (
    "status = 'pending' AND NOT EXISTS"
    " (SELECT 1 FROM workload_dependencies AS d WHERE d.workload_id = workloads.id)"
)
"""The workloads in the queue (``queue_head``): pending, without dependencies."""


def pending_ids_query(
    mark: str, after: str | None, limit: int | None
) -> tuple[str, list[str | int]]:
    """``pending_ids``'s query on either database (``mark``: its placeholder)."""
    sql, params = "SELECT id FROM workloads WHERE status = 'pending'", list[str | int]()
    if after is not None:
        sql, params = f"{sql} AND id > {mark}", [after]
    sql += " ORDER BY id"
    if limit is not None:
        sql, params = f"{sql} LIMIT {mark}", [*params, limit]
    return sql, params


def _file_identity(path: Path) -> tuple[int, int] | None:
    """The file's device and inode (None: not there)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


EVENT_ID_MAX = 2**63 - 1
"""The largest id either database's integer holds."""
EVENT_IDS_QUERY = "SELECT id FROM events WHERE id > ? ORDER BY id LIMIT ?"


def check_events_limit(after_id: int, limit: int) -> None:
    if not 1 <= limit <= EVENTS_LIMIT_MAX:
        raise InvalidInputError(f"limit must be between 1 and {EVENTS_LIMIT_MAX}")
    if not 0 <= after_id <= EVENT_ID_MAX:
        raise InvalidInputError(f"after must be between 0 and {EVENT_ID_MAX}")


def row_to_transition(row: Sequence[Any]) -> TransitionEvent:
    """A row of ``EVENT_COLUMNS`` (labels as JSON text on SQLite, a dict on
    PostgreSQL)."""
    labels = row[10] if isinstance(row[10], dict) else json.loads(row[10])
    return TransitionEvent.model_validate(
        {
            "id": row[0],
            "workload_id": row[1],
            "seq": row[2],
            "type": row[3],
            "from_status": row[4],
            "to_status": row[5],
            "at": row[6],
            "reason": row[7],
            "actor": row[8],
            "name": row[9],
            "labels": labels,
        }
    )


def page_query(
    *,
    statuses: Sequence[Status],
    labels: Sequence[tuple[str, str]],
    limit: int,
    cursor: str | None,
    owner: str | None,
    id_prefix: str | None,
    name: str | None,
) -> tuple[str, list[Any]]:
    """``list_workloads``'s arguments checked (``InvalidInputError``) and its statement
    (``list_query``) for one page and one more row, which says whether a next page
    exists: shared by every store."""
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise InvalidInputError(f"limit must be between 1 and {LIST_LIMIT_MAX}")
    if cursor is not None and not looks_like_id(cursor):
        raise InvalidInputError(f"cursor {cursor!r} is not one returned by this API")
    return list_query(
        statuses=statuses,
        labels=_checked_filters(labels, id_prefix),
        cursor=cursor,
        limit=limit + 1,
        owner=owner,
        id_prefix=id_prefix,
        name=name,
    )


def checked_count_query(
    *,
    statuses: Sequence[Status],
    labels: Sequence[tuple[str, str]],
    owner: str | None,
    id_prefix: str | None,
    name: str | None,
) -> tuple[str, list[Any]]:
    """``count_workloads``'s arguments checked and its statement (``count_query``)."""
    return count_query(
        statuses=statuses,
        labels=_checked_filters(labels, id_prefix),
        owner=owner,
        id_prefix=id_prefix,
        name=name,
    )


def deletable_query(*, owner: bool, among: int = 0) -> str:
    """The ids ``delete_finished`` may delete (SQLite's parameters: those of
    ``deletable_params``, after ``among`` ids when given): terminal, created (by their
    id) and finished before the cutoff, not the workload of the newest event, and no
    dependency of a pending or running workload. A walk of the ``(status, id)`` index
    (``(owner, status, id)`` with an owner) below the ceiling, one range per terminal
    status: it meets the workloads due and those created before the cutoff that
    finished after it, never the younger ones. With ``among``, only those of ``among``
    ids, each probed by its key (``delete_due``'s check): the other terms are written
    ``+w.column``, which SQLite never serves by an index (it chose the walk for 500).

    The newest event's workload stays because SQLite gives a new row the largest id
    of the table plus one: with the newest event deleted, the next one would take an
    id already handed out, and a follower of ``GET /v1/events`` past it would never
    see it. Kept, it keeps every later id above every earlier one."""
    by_key = "+" if among else ""
    return (
        "SELECT w.id FROM workloads AS w WHERE"
        + (f" w.id IN ({', '.join('?' * among)}) AND" if among else "")
        + f" {by_key}w.status IN ('completed', 'failed', 'killed')"
        f" AND {by_key}w.id < ? AND w.finished_at < ? AND w.id <> ?"
        + (f" AND {by_key}w.owner = ?" if owner else "")
        # CROSS JOIN: SQLite walks the dependants by the index on depends_on, then
        # probes each by its primary key (not every active workload, then each).
        + " AND NOT EXISTS (SELECT 1 FROM workload_dependencies AS d"
        " CROSS JOIN workloads AS a ON a.id = d.workload_id"
        " WHERE d.depends_on = w.id AND a.status IN ('pending', 'running'))"
        " LIMIT ?"
    )


NEWEST_EVENTS_WORKLOAD = "SELECT workload_id FROM events ORDER BY id DESC LIMIT 1"


def deletable_params(
    now: float,
    newest: str | None,
    older_than_seconds: float,
    owner: str | None,
    limit: int,
) -> list[Any]:
    """``deletable_query``'s parameters for a store whose clock says ``now`` (seconds
    since the epoch) and whose newest event is ``newest``'s, after checking the
    arguments (``InvalidInputError``)."""
    if not 0 <= older_than_seconds <= OLDER_THAN_MAX_SECONDS:  # (NaN fails both)
        raise InvalidInputError(
            f"older_than_seconds must be between 0 and {OLDER_THAN_MAX_SECONDS}"
        )
    if not 1 <= limit <= DELETE_BATCH_MAX:
        raise InvalidInputError(f"limit must be between 1 and {DELETE_BATCH_MAX}")
    cutoff = now - older_than_seconds
    owned = [owner] if owner is not None else []
    return [id_ceiling(cutoff), rfc3339_at(cutoff), newest or "", *owned, limit]


_LATER_FIELDS = {"depends_on", "dependency_type", "array_index"}
"""Fields added to ``WorkloadCreate`` after idempotency keys were first stored."""


def spec_digest(spec: WorkloadCreate) -> str:
    """A digest of the spec's meaning (defaults filled in), for idempotency checks.
    The fields added later count only when set, so a key stored before them still
    matches its body after an upgrade."""
    later = spec.depends_on or spec.dependency_type != "afterok" or spec.array_index is not None
    text = spec.model_dump_json(exclude=None if later else _LATER_FIELDS)
    return hashlib.sha256(text.encode()).hexdigest()


def batch_digest(specs: Sequence[WorkloadBatchItem], max_running: int | None) -> str:
    """A digest of a batch body's meaning; never equal to a ``spec_digest``."""
    text = _json_text({"items": [s.model_dump() for s in specs], "max_running": max_running})
    return hashlib.sha256(b"batch:" + text.encode()).hexdigest()


class WriteWouldWait(Exception):
    """``SQLiteStore.without_waiting``: the write lock is taken (by another connection
    or process); nothing was done."""


class SQLiteStore(SQLiteKeys, SQLiteCluster):
    """The synchronous store on one SQLite file (``AsyncSQLiteStore`` serves the async
    ``Store`` over it); see the module docstring for guarantees."""

    def __init__(
        self,
        path: str | Path,
        *,
        migrate_schema: bool = True,
        background_checkpoints: bool = False,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._background_checkpoints = background_checkpoints
        if migrate_schema:
            self._migrate()
        self._file_identity = _file_identity(self.path)
        if background_checkpoints:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="corral-wal-checkpoint", daemon=True
            )
            self._checkpointer.start()

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    starts_at_create = True
    """``NewWorkload.start`` is honoured (see ``Store.create_workloads``)."""

    def _migrate(self) -> None:
        # WAL must be set before Alembic opens its own connection; the file lock keeps
        # two processes starting on one new database from migrating it twice.
        self._conn()
        with open(f"{self.path}.migrate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            migrate.upgrade(self.url)

    def _conn(self, *, no_wait: bool = False) -> sqlite3.Connection:
        """This thread's connection; ``no_wait``: its other one, whose busy timeout is 0
        (``without_waiting``'s writes)."""
        attr = "no_wait_conn" if no_wait else "conn"
        conn: sqlite3.Connection | None = getattr(self._local, attr, None)
        if conn is None:
            if self._closed:
                raise RuntimeError("store is closed")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            busy_timeout_ms = 0 if no_wait else int(self.busy_timeout_ms)
            conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            if self._background_checkpoints:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            setattr(self._local, attr, conn)
            with self._lock:
                self._connections.append(conn)
        return conn

    def _raise_fault(self, exc: sqlite3.Error) -> None:
        """Raise the domain error for a full disk or a busy database (from ``exc``);
        return for any other error, which the caller re-raises as it is."""
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return
        primary = code & 0xFF
        if primary == _SQLITE_FULL or (primary == _SQLITE_IOERR and self._no_room()):
            raise StorageFullError(str(exc)) from exc
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
            raise StoreBusyError(str(exc)) from exc

    def _no_room(self) -> bool:
        try:
            fs = os.statvfs(self.path.parent)
        except OSError:
            return False
        return fs.f_bavail * fs.f_frsize < FULL_BELOW_BYTES

    @contextmanager
    def _connection(self, *, no_wait: bool = False) -> Iterator[sqlite3.Connection]:
        """This thread's connection, for statements outside a write transaction (reads,
        and ``BEGIN``): a full disk or a busy database is raised as the domain error."""
        try:
            yield self._conn(no_wait=no_wait)
        except sqlite3.Error as exc:
            self._raise_fault(exc)
            raise

    def without_waiting(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``call(*args, **kwargs)``, a write method of this store, on the calling
        thread, if SQLite's write lock can be taken at once: else ``WriteWouldWait``,
        before anything is done (a write method takes the lock before its first
        statement). It writes through the thread's second connection, whose busy
        timeout is 0; the first keeps the store's, for everything else."""
        self._local.no_wait = True
        try:
            return call(*args, **kwargs)
        finally:
            self._local.no_wait = False

    def write_together(self, calls: Sequence[Callable[[], T]]) -> list[T | Exception]:
        """Run ``calls`` (write methods of this store, bound to their arguments) in one
        transaction, one commit for all: each in a savepoint of its own, so each gets
        what it would have got alone, its result or its error (a refused transition,
        say: rolled back to its savepoint, the others kept). A fault of the database
        itself (``sqlite3.Error``: a full disk, an I/O error) rolls back everything and
        is raised, as the domain error where there is one: the caller runs them one by
        one instead, for each its own answer. Within ``without_waiting``,
        ``WriteWouldWait`` before anything is done, as for one write."""
        results: list[T | Exception] = []
        with self._write() as conn:
            self._local.together = conn
            try:
                for call in calls:
                    try:
                        results.append(call())
                    except sqlite3.Error:
                        raise
                    except Exception as exc:  # its own savepoint is rolled back
                        results.append(exc)
            finally:
                self._local.together = None
        return results

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the write lock from its first statement;
        on any error it is rolled back whole, and faults become domain errors.
        Within ``write_together``: a savepoint of its transaction, rolled back to on
        any error (a database fault is left to ``write_together``)."""
        together = getattr(self._local, "together", None)
        if together is not None:
            together.execute("SAVEPOINT write")
            try:
                yield together
            except sqlite3.Error:
                raise  # the whole transaction is rolled back
            except BaseException:
                together.execute("ROLLBACK TO write")
                together.execute("RELEASE write")
                raise
            together.execute("RELEASE write")
            return
        no_wait = getattr(self._local, "no_wait", False)
        with self._connection(no_wait=no_wait) as conn:
            if no_wait:
                self._begin_now(conn)
            else:
                conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            # SQLite may already have rolled back (an I/O error, a full disk); a failed
            # COMMIT may leave the transaction open. Either way the connection must
            # leave here outside a transaction, and the first error is the one to see.
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                self._raise_fault(exc)
            raise

    @staticmethod
    def _begin_now(conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE`` on a connection that does not wait for the lock:
        ``WriteWouldWait`` when another holds it."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
                raise WriteWouldWait(str(exc)) from None
            raise

    # --- writes ----------------------------------------------------------------

    def create_workload(
        self,
        spec: WorkloadCreate,
        *,
        owner: str,
        idempotency_key: str | None = None,
        actor: str | None = None,
    ) -> Created:
        result = self.create_workloads([NewWorkload(spec, owner, idempotency_key, actor)])[0]
        if isinstance(result, CorralError):
            raise result
        return result

    def create_workloads(self, items: Sequence[NewWorkload]) -> list[Created | CorralError]:
        results: list[Created | CorralError] = []
        with self._write() as conn:
            for item in items:
                if item.idempotency_key is None:  # _insert refuses only before it writes
                    try:
                        results.append(self._insert(conn, item, now_rfc3339()))
                    except CorralError as exc:
                        results.append(exc)
                    continue
                conn.execute("SAVEPOINT item")
                try:
                    results.append(self._insert(conn, item, now_rfc3339()))
                except CorralError as exc:
                    conn.execute("ROLLBACK TO item")
                    results.append(exc)
                conn.execute("RELEASE item")
        return results

    def _insert(self, conn: sqlite3.Connection, item: NewWorkload, now: str) -> Created:
        spec, key = item.spec, item.idempotency_key
        if key is not None:
            digest = spec_digest(spec)
            row = conn.execute(
                "SELECT body_sha256, workload_id FROM idempotency_keys WHERE owner = ? AND key = ?",
                (item.owner, key),
            ).fetchone()
            if row is not None:
                if row[0] != digest:
                    raise IdempotencyKeyReusedError(key, row[1])
                return self._get(conn, row[1], None), True
        if spec.depends_on:
            refs = [(("depends_on", j), ref) for j, ref in enumerate(spec.depends_on)]
            self._check_dependencies(conn, item.owner, refs)
        depends_on = list(dict.fromkeys(spec.depends_on))
        start, node = item.start, None
        if start is not None:
            try:
                check_fence(conn, start.fence, now)
                node = start.node
            except FencedError:
                pass  # no longer the leader's: it waits, pending
        wid = new_id() if start is None else start.workload_id
        workload = self._insert_row(
            conn, spec, item.owner, item.actor, now, wid, depends_on, node=node
        )
        if key is not None:
            conn.execute(
                "INSERT INTO idempotency_keys (owner, key, body_sha256, workload_id, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (item.owner, key, digest, workload.id, now),
            )
        return workload, False

    @staticmethod
    def _check_dependencies(
        conn: sqlite3.Connection, owner: str, refs: Sequence[tuple[tuple[str | int, ...], str]]
    ) -> None:
        """``FieldError`` at the first of ``refs`` (path, id) that is not a workload of
        ``owner`` (another user's workload does not exist for them)."""
        ids = list(dict.fromkeys(r for _, r in refs))
        found: set[str] = set()
        for i in range(0, len(ids), _ID_CHUNK):
            chunk = ids[i : i + _ID_CHUNK]
            marks = ", ".join("?" * len(chunk))
            found.update(
                r[0]
                for r in conn.execute(
                    f"SELECT id FROM workloads WHERE owner = ? AND id IN ({marks})",
                    (owner, *chunk),
                )
            )
        for loc, ref in refs:
            if ref not in found:
                raise FieldError(loc, f"no workload has id {ref!r}")

    @staticmethod
    def _insert_row(
        conn: sqlite3.Connection,
        spec: WorkloadSpec,
        owner: str,
        actor: str | None,
        now: str,
        workload_id: str,
        depends_on: list[str],
        batch_id: str | None = None,
        max_running: int | None = None,
        node: str | None = None,
    ) -> Workload:
        """Write a new pending workload (``depends_on`` as ids), its labels,
        dependencies and ``created`` event; with ``node``, claimed at once on it (one
        write of the row: it is running from the start, and its events say pending,
        then running by the scheduler, as a claim's)."""
        res = spec.resources
        status = Status.PENDING if node is None else Status.RUNNING
        started_at = None if node is None else now
        conn.execute(
            _INSERT_WORKLOAD if node is None else _INSERT_RUNNING,
            (
                workload_id,
                spec.name,
                _json_text(spec.command),
                _json_text(spec.env),
                spec.cwd,
                res.cpus,
                res.memory_mb,
                res.gpus,
                _json_text(spec.labels),
                spec.priority,
                spec.timeout_seconds,
                status.value,
                now,
                now,
                *(() if node is None else (started_at,)),
                owner,
                _json_text(depends_on) if depends_on else "[]",
                spec.dependency_type,
                spec.array_index,
                batch_id,
                max_running,
                *(() if node is None else (node,)),
            ),
        )
        if spec.labels:
            conn.executemany(
                "INSERT INTO workload_labels (key, value, workload_id) VALUES (?, ?, ?)",
                [(k, v, workload_id) for k, v in spec.labels.items()],
            )
        if depends_on:
            conn.executemany(
                "INSERT INTO workload_dependencies (workload_id, depends_on) VALUES (?, ?)",
                [(workload_id, d) for d in depends_on],
            )
        conn.execute(
            _INSERT_EVENT,
            (workload_id, 1, "created", None, Status.PENDING.value, now, None, actor),
        )
        if node is not None:
            conn.execute(
                _INSERT_EVENT,
                (
                    workload_id,
                    2,
                    "transition",
                    "pending",
                    "running",
                    now,
                    _RUNNING_REASON,
                    CLAIM_ACTOR,
                ),
            )
        return workload_from_row(
            {
                **spec.model_dump(),
                "id": workload_id,
                "owner": owner,
                "depends_on": depends_on,
                "batch_id": batch_id,
                "max_running": max_running,
                "status": status,
                "exit_code": None,
                "signal": None,
                "reason": None,
                "created_at": now,
                "updated_at": now,
                "started_at": started_at,
                "finished_at": None,
                "node": node,
            }
        )

    def create_batch(
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
        with self._write() as conn:
            if idempotency_key is not None:
                digest = batch_digest(specs, max_running)
                row = conn.execute(
                    "SELECT body_sha256, workload_id FROM idempotency_keys"
                    " WHERE owner = ? AND key = ?",
                    (owner, idempotency_key),
                ).fetchone()
                if row is not None:
                    if row[0] != digest:
                        raise IdempotencyKeyReusedError(idempotency_key, row[1])
                    return self._batch_of(conn, row[1]), True
            refs = [
                (("items", i, "depends_on", j), ref)
                for i, spec in enumerate(specs)
                for j, ref in enumerate(spec.depends_on)
                if isinstance(ref, str)
            ]
            if refs:
                self._check_dependencies(conn, owner, refs)
            # An item may name a later one, whose row is not written yet: the foreign
            # keys of workload_dependencies are checked at COMMIT (reset after it).
            conn.execute("PRAGMA defer_foreign_keys = ON")
            batch_id = new_id()
            ids = [new_id() for _ in specs]  # increasing: the batch's order is id order
            now = now_rfc3339()
            workloads = []
            for spec, workload_id in zip(specs, ids, strict=True):
                depends_on = [ids[r] if isinstance(r, int) else r for r in spec.depends_on]
                workloads.append(
                    self._insert_row(
                        conn,
                        spec,
                        owner,
                        actor,
                        now,
                        workload_id,
                        list(dict.fromkeys(depends_on)),
                        batch_id,
                        max_running,
                    )
                )
            if idempotency_key is not None:
                conn.execute(
                    "INSERT INTO idempotency_keys (owner, key, body_sha256, workload_id,"
                    " created_at) VALUES (?, ?, ?, ?, ?)",
                    (owner, idempotency_key, digest, ids[0], now),
                )
        return workloads, False

    @staticmethod
    def _batch_of(conn: sqlite3.Connection, first_id: str) -> list[Workload]:
        """The workloads of the batch whose first workload is ``first_id``, in order."""
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM workloads WHERE batch_id ="
            " (SELECT batch_id FROM workloads WHERE id = ?) ORDER BY id",
            (first_id,),
        ).fetchall()
        return [_row_to_workload(r) for r in rows]

    def update_workload_status(
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
        sources = sources_of(status)
        with self._write() as conn:
            now = now_rfc3339()  # under the write lock: events' times follow their seq
            check_fence(conn, fence, now)
            values = (
                status.value,
                exit_code,
                signal,
                reason,
                now,
                now if status is Status.RUNNING else None,
                now if status in TERMINAL else None,
                node,
                workload_id,
            )
            if len(sources) == 1:
                # One status may lead here (running, completed, failed): the conditional
                # UPDATE is the check, and a second look only explains a refusal.
                (current,) = sources
            else:
                current = self._current_status(conn, workload_id, owner)
                if not valid_transition(current, status):
                    raise InvalidTransitionError(workload_id, current, status)
            if owner is None:
                updated = conn.execute(_UPDATE_STATUS, (*values, current.value)).fetchone()
            else:
                updated = conn.execute(
                    _UPDATE_OWNED_STATUS, (*values, current.value, owner)
                ).fetchone()
            if updated is None:
                self._refuse(conn, workload_id, status, owner)
            conn.execute(
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
        return _row_to_workload(updated)

    @staticmethod
    def _current_status(
        conn: sqlite3.Connection, workload_id: str, owner: str | None = None
    ) -> Status:
        """The workload's status; ``NotFoundError`` when there is none, or it is not
        ``owner``'s (another user's workload does not exist for them)."""
        row = conn.execute(
            "SELECT status, owner FROM workloads WHERE id = ?", (workload_id,)
        ).fetchone()
        if row is None or (owner is not None and row[1] != owner):
            raise NotFoundError(workload_id)
        return Status(row[0])

    def _refuse(
        self, conn: sqlite3.Connection, workload_id: str, status: Status, owner: str | None
    ) -> None:
        """The conditional UPDATE matched nothing: say why (no workload, not the
        owner's, or another status than the one the table allows)."""
        current = self._current_status(conn, workload_id, owner)
        assert not valid_transition(current, status), "matched nothing, yet allowed"
        raise InvalidTransitionError(workload_id, current, status)

    def set_pending_reasons(self, reasons: Sequence[tuple[str, str]]) -> None:
        with self._write() as conn:
            conn.executemany(
                "UPDATE workloads SET reason = ? WHERE id = ? AND status = 'pending'",
                [(reason, wid) for wid, reason in reasons],
            )

    def claim_workloads(
        self, workload_ids: Sequence[str], *, node: str, fence: Fence | None = None
    ) -> list[Workload]:
        """pending→running for each of ``workload_ids`` still pending, on ``node``, in
        one transaction (with ``fence`` checked first); the claimed ones, in the
        order given. Those no longer pending are left alone (a kill won)."""
        claimed: list[Workload] = []
        with self._write() as conn:
            now = now_rfc3339()
            check_fence(conn, fence, now)
            for wid in dict.fromkeys(workload_ids):
                running = self._claim_row(conn, wid, node, now)
                if running is not None:
                    claimed.append(running)
        return claimed

    @staticmethod
    def _claim_row(conn: sqlite3.Connection, wid: str, node: str, now: str) -> Workload | None:
        """pending→running on ``node`` by the scheduler, with its event (None: it is
        not pending)."""
        reason = _RUNNING_REASON
        row = conn.execute(
            _UPDATE_STATUS, ("running", None, None, reason, now, now, None, node, wid, "pending")
        ).fetchone()
        if row is None:
            return None
        conn.execute(
            _INSERT_NEXT_EVENT,
            (wid, wid, "transition", "pending", "running", now, reason, CLAIM_ACTOR),
        )
        return _row_to_workload(row)

    def delete_finished(
        self,
        older_than_seconds: float,
        *,
        owner: str | None = None,
        limit: int = DELETE_BATCH_MAX,
    ) -> list[str]:
        """See ``Store.delete_finished``: ``due_ids``, then ``delete_due`` (what
        ``AsyncSQLiteStore`` does, the read on a reader thread)."""
        deletable_params(0.0, None, older_than_seconds, owner, limit)  # checked first
        now = time.time()
        due = self.due_ids(now, older_than_seconds, owner=owner, limit=limit)
        return self.delete_due(due, now, older_than_seconds, owner=owner, limit=limit)

    def due_ids(
        self, now: float, older_than_seconds: float, *, owner: str | None, limit: int
    ) -> list[str]:
        """The first half of ``delete_finished``, a read (no lock: it never holds up
        a writer): up to ``limit`` ids due for deletion at ``now`` by this process's
        clock. The walk may meet many rows that are not due (those created before
        the cutoff that ended after it: 80 ms at 300,000 of them), and with none due
        it is all there is to do."""
        with self._connection() as conn:
            return self._deletable(conn, now, older_than_seconds, owner, limit)

    def delete_due(
        self,
        ids: Sequence[str],
        now: float,
        older_than_seconds: float,
        *,
        owner: str | None,
        limit: int,
    ) -> list[str]:
        """The second half of ``delete_finished``, under the write lock, so that no
        create can add a dependant meanwhile (it reads its dependencies under the same
        lock): of ``ids`` (``due_ids(now, …)``'s), those still deletable, each checked
        again by its key, deleted; their ids. A create since the read may have made
        one a dependency: kept. Should that leave a full batch short, the walk is done
        again here, so that a short batch still means none are left."""
        if not ids:
            return []
        with self._write() as conn:
            due = self._deletable(conn, now, older_than_seconds, owner, len(ids), among=ids)
            if len(due) < len(ids) == limit:
                due = self._deletable(conn, now, older_than_seconds, owner, limit)
            if due:
                marks = ", ".join("?" * len(due))
                conn.execute(f"DELETE FROM workloads WHERE id IN ({marks})", due)
        return due

    @staticmethod
    def _deletable(
        conn: sqlite3.Connection,
        now: float,
        older_than_seconds: float,
        owner: str | None,
        limit: int,
        *,
        among: Sequence[str] = (),
    ) -> list[str]:
        """``deletable_query``'s ids (of ``among`` only, when given)."""
        newest = conn.execute(NEWEST_EVENTS_WORKLOAD).fetchone()
        params = deletable_params(now, newest and newest[0], older_than_seconds, owner, limit)
        sql = deletable_query(owner=owner is not None, among=len(among))
        return [r[0] for r in conn.execute(sql, [*among, *params])]

    def pending_ids(self, *, after: str | None = None, limit: int | None = None) -> list[str]:
        """The ids of pending workloads, in id order (the scheduler's cache check;
        ``after`` and ``limit`` as ``Store.pending_ids``)."""
        sql, params = pending_ids_query("?", after, limit)
        with self._connection() as conn:
            return [r[0] for r in conn.execute(sql, params)]

    def queue_head(self, limit: int, *, owner: str | None = None) -> tuple[list[Workload], int]:
        where, params = QUEUED_WHERE, []
        if owner is not None:
            where, params = f"{where} AND owner = ?", [owner]
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM workloads WHERE {where} ORDER BY priority DESC, id"
                " LIMIT ?",
                [*params, limit],
            ).fetchall()
            counted = f"SELECT COUNT(*) FROM workloads WHERE {where}"
            (count,) = conn.execute(counted, params).fetchone()
        return [_row_to_workload(r) for r in rows], int(count)

    def get_workloads(self, workload_ids: Sequence[str]) -> list[Workload]:
        """The workloads of ``workload_ids`` that exist, in id order."""
        ids = list(dict.fromkeys(workload_ids))
        found: list[Workload] = []
        with self._connection() as conn:
            for i in range(0, len(ids), _ID_CHUNK):
                chunk = ids[i : i + _ID_CHUNK]
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT {_COLUMNS} FROM workloads WHERE id IN ({marks}) ORDER BY id"
                found.extend(_row_to_workload(r) for r in conn.execute(sql, chunk))
        return sorted(found, key=lambda w: w.id)

    # --- reads -----------------------------------------------------------------

    def statuses(self, workload_ids: Sequence[str]) -> dict[str, Status]:
        ids = list(dict.fromkeys(workload_ids))
        found: dict[str, Status] = {}
        with self._connection() as conn:
            for i in range(0, len(ids), _ID_CHUNK):
                chunk = ids[i : i + _ID_CHUNK]
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT id, status FROM workloads WHERE id IN ({marks})"
                found.update((r[0], Status(r[1])) for r in conn.execute(sql, chunk))
        return found

    def get_workload(self, workload_id: str, *, owner: str | None = None) -> Workload:
        with self._connection() as conn:
            return self._get(conn, workload_id, owner)

    @staticmethod
    def _get(conn: sqlite3.Connection, workload_id: str, owner: str | None) -> Workload:
        sql = f"SELECT {_COLUMNS} FROM workloads WHERE id = ?"
        row = conn.execute(sql, (workload_id,)).fetchone()
        if row is None or (owner is not None and row[19] != owner):
            raise NotFoundError(workload_id)
        return _row_to_workload(row)

    def list_workloads(
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
        with self._connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        items = [_row_to_workload(r) for r in rows[:limit]]
        next_cursor = items[-1].id if len(rows) > limit else None
        return Page(items=items, next_cursor=next_cursor)

    def count_workloads(
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
        with self._connection() as conn:
            count: int = conn.execute(sql, params).fetchone()[0]
        return count

    def ping(self) -> None:
        """Raises unless the database answers: ``SELECT 1`` reads no file, so first
        the file must still be the one opened (not removed, nor replaced: the open
        connections would go on writing to a file gone at the next start) and be
        readable and writable by this process."""
        identity = _file_identity(self.path)
        if self._file_identity is None:
            self._file_identity = identity
        if identity is None or identity != self._file_identity:
            raise DatabaseError(f"the database file {self.path} was removed or replaced")
        if not os.access(self.path, os.R_OK | os.W_OK):
            raise DatabaseError(f"the database file {self.path} is not readable and writable")
        with self._connection() as conn:
            conn.execute("SELECT 1").fetchall()

    def count_by_status(self, *, owner: str | None = None) -> dict[Status, int]:
        sql = "SELECT status, COUNT(*) FROM workloads"
        sql += " WHERE owner = ? GROUP BY status" if owner is not None else " GROUP BY status"
        with self._connection() as conn:
            rows = conn.execute(sql, () if owner is None else (owner,)).fetchall()
        counts = dict.fromkeys(Status, 0)
        counts.update((Status(status), n) for status, n in rows)
        return counts

    def list_events(self, workload_id: str, *, owner: str | None = None) -> list[Event]:
        with self._connection() as conn:
            if owner is not None:
                self._current_status(conn, workload_id, owner)  # NotFoundError if not theirs
            rows = conn.execute(
                "SELECT seq, type, from_status, to_status, at, reason, actor FROM events"
                " WHERE workload_id = ? ORDER BY seq",
                (workload_id,),
            ).fetchall()
        if not rows:
            # Every workload has its 'created' event, so no rows means no workload.
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

    def list_events_after(
        self,
        after_id: int,
        matching: EventFilter = EVERY_EVENT,
        *,
        limit: int = EVENTS_LIMIT_MAX,
        until_id: int | None = None,
    ) -> list[TransitionEvent]:
        sql, params = events_query(after_id, matching, limit=limit, until_id=until_id)
        with self._connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [row_to_transition(r) for r in rows]

    def event_ids_after(self, after_id: int, *, limit: int = EVENTS_LIMIT_MAX) -> list[int]:
        check_events_limit(after_id, limit)
        with self._connection() as conn:
            return [r[0] for r in conn.execute(EVENT_IDS_QUERY, (after_id, limit))]

    def _checkpoint_loop(self) -> None:
        conn = self._conn()  # this thread's own connection
        failing = False  # log a failure once, not every second while a disk is full
        while not self._stop.wait(CHECKPOINT_INTERVAL_SECONDS):
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                if not failing:
                    log.error("WAL checkpoint failed (%s); retrying every second", exc)
                failing = True
            else:
                if failing:
                    log.warning("WAL checkpoint works again")
                failing = False

    def close(self) -> None:
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
