"""What travels on the wire, as the client sees it; standard library only.

This module states the workload state machine (``Status``, ``TRANSITIONS``,
``TERMINAL``) and the syntax of names, labels and environment names; ``model.py``
(the server's pydantic models) imports them from here, so each is stated once.

::

    pending ──▶ running ──▶ completed
       │           ├──────▶ failed
       └───────────┴──────▶ killed

The rest are frozen records for the server's answers (``@record``: typed as
dataclasses, built without the ``dataclasses`` module, whose import and class
building cost every CLI call ~18 ms), each built by
``from_json(data)``: fields the server does not send take their defaults (an old
server), fields this module does not know are ignored (a new server), and a field of
the wrong type raises ``WireError`` naming it (``workload.resources.cpus: expected a
number, got 'x'``). Each ``from_json`` is written out by hand, without reflection, so
that reading a page of a thousand workloads costs little.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from functools import cache

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing costs milliseconds
if TYPE_CHECKING:
    from typing import Any, Self, TypeVar, dataclass_transform

    _T = TypeVar("_T")

__all__ = [
    "ENV_NAME_RE",
    "LABEL_KEY_RE",
    "LABEL_SELECTOR_RE",
    "LABEL_VALUE_RE",
    "TERMINAL",
    "TRANSITIONS",
    "UNIX_USER_RE",
    "USER_NAME_RE",
    "Capacity",
    "Event",
    "KeyRole",
    "KillResult",
    "NewToken",
    "NotKilled",
    "Page",
    "QueueEntry",
    "Resources",
    "ServerStatus",
    "Status",
    "Token",
    "WireError",
    "Workload",
    "check_label",
    "sources_of",
    "valid_transition",
]


class Status(StrEnum):
    """The status of a workload; only ``store.update_workload_status`` changes it."""

    PENDING = "pending"
    """Stored and waiting for resources; ``reason`` says what it waits for."""
    RUNNING = "running"
    """Claimed by an executor; its process has been started."""
    COMPLETED = "completed"
    """The process exited with status 0."""
    FAILED = "failed"
    """Non-zero exit, a foreign signal, a spawn error, a timeout, or lost."""
    KILLED = "killed"
    """Stopped on request (DELETE), whatever the process did afterwards."""


class KeyRole(StrEnum):
    """What an API key may do (its ``role``)."""

    USER = "user"
    """Its user's own workloads."""
    ADMIN = "admin"
    """Everything: every user's workloads, the keys, the metrics."""
    METRICS = "metrics"
    """``GET /metrics`` only (a scraper's key)."""


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.RUNNING, Status.KILLED}),
    Status.RUNNING: frozenset({Status.COMPLETED, Status.FAILED, Status.KILLED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.KILLED: frozenset(),
}
"""The state machine: status -> statuses it may move to. Nothing else restates it."""

TERMINAL: frozenset[Status] = frozenset(s for s, targets in TRANSITIONS.items() if not targets)
"""Statuses with no way out."""


def valid_transition(from_status: Status | str, to_status: Status | str) -> bool:
    """True when the table allows ``from_status -> to_status``; unknown names are False."""
    try:
        return Status(to_status) in TRANSITIONS[Status(from_status)]
    except ValueError:
        return False


@cache
def sources_of(to_status: Status) -> frozenset[Status]:
    """The statuses from which ``to_status`` may be reached (read off ``TRANSITIONS``)."""
    return frozenset(s for s, targets in TRANSITIONS.items() if to_status in targets)


# --- names, labels, environment names ------------------------------------------------

LABEL_KEY_MAX_CHARS = 253
LABEL_VALUE_MAX_CHARS = 63

# Kubernetes label keys: optional DNS-subdomain prefix and '/', then a name of at most
# 63 characters: alphanumerics, '-', '_', '.', starting and ending alphanumeric.
_LABEL_NAME = r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_LABEL_PREFIX = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
LABEL_KEY_RE = re.compile(rf"^({_LABEL_PREFIX}/)?{_LABEL_NAME}$")
LABEL_VALUE_RE = re.compile(rf"^({_LABEL_NAME})?$")
LABEL_SELECTOR_RE = re.compile(rf"^({_LABEL_PREFIX}/)?{_LABEL_NAME}=({_LABEL_NAME})?$")
"""``key=value``, as in ``GET /v1/workloads?label=team=ml``."""
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
USER_NAME_RE = re.compile(r"^[a-z_][a-z0-9_.@-]{0,63}$")
"""A corral user name: lower case, as Unix account names (plus ``.`` and ``@``)."""
UNIX_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
"""A Unix account name, as ``useradd`` accepts it."""


def check_label(key: str, value: str) -> None:
    """Raise ``ValueError`` unless ``key=value`` is a valid Kubernetes-style label."""
    if len(key) > LABEL_KEY_MAX_CHARS or not LABEL_KEY_RE.fullmatch(key):
        raise ValueError(
            f"label key {key!r} is invalid: use an optional DNS prefix and '/', then up to"
            " 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        )
    if len(value) > LABEL_VALUE_MAX_CHARS or not LABEL_VALUE_RE.fullmatch(value):
        raise ValueError(
            f"label value {value!r} of {key!r} is invalid: up to 63 alphanumerics, '-', '_'"
            " or '.', starting and ending alphanumeric, or empty"
        )


# --- reading JSON ----------------------------------------------------------------------


class WireError(ValueError):
    """An answer that does not have the shape this client expects; the message names
    the field (``workload.status: 'sleeping' is not a status``)."""


_MISSING: Any = object()
_STATUSES: dict[str, Status] = {s.value: s for s in Status}


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(where: str, name: str, expected: str, value: object) -> WireError:
    if value is _MISSING:
        return WireError(f"{where}.{name}: missing")
    return WireError(f"{where}.{name}: expected {expected}, got {_show(value)}")


def _object(data: object, where: str) -> Mapping[str, Any]:
    if type(data) is dict or isinstance(data, Mapping):
        return data
    if data is _MISSING:
        raise WireError(f"{where}: missing")
    raise WireError(f"{where}: expected an object, got {_show(data)}")


def _str(data: Mapping[str, Any], name: str, where: str) -> str:
    value = data.get(name, _MISSING)
    if type(value) is not str:
        raise _bad(where, name, "a string", value)
    return value


def _str_or(data: Mapping[str, Any], name: str, where: str, default: str) -> str:
    value = data.get(name)
    if value is None:
        return default
    if type(value) is str:
        return value
    raise _bad(where, name, "a string", value)


def _opt_str(data: Mapping[str, Any], name: str, where: str) -> str | None:
    value = data.get(name)
    if value is None or type(value) is str:
        return value
    raise _bad(where, name, "a string or null", value)


def _int(data: Mapping[str, Any], name: str, where: str, default: int = _MISSING) -> int:
    value = data.get(name, default)
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():  # JSON Schema's integer: 3.0 too
        return int(value)
    raise _bad(where, name, "an integer", value)


def _opt_int(data: Mapping[str, Any], name: str, where: str) -> int | None:
    value = data.get(name)
    return None if value is None else _int(data, name, where)


def _float(data: Mapping[str, Any], name: str, where: str, default: float = _MISSING) -> float:
    value = data.get(name, default)
    if type(value) is float or type(value) is int:
        return float(value)
    raise _bad(where, name, "a number", value)


def _opt_float(data: Mapping[str, Any], name: str, where: str) -> float | None:
    value = data.get(name)
    return None if value is None else _float(data, name, where)


def _bool(data: Mapping[str, Any], name: str, where: str, default: bool = _MISSING) -> bool:
    value = data.get(name, default)
    if type(value) is bool:
        return value
    raise _bad(where, name, "true or false", value)


def _status(data: Mapping[str, Any], name: str, where: str) -> Status:
    value = data.get(name, _MISSING)
    status = _STATUSES.get(value) if type(value) is str else None
    if status is None:
        raise _bad(where, name, "a status (" + ", ".join(_STATUSES) + ")", value)
    return status


def _opt_status(data: Mapping[str, Any], name: str, where: str) -> Status | None:
    return None if data.get(name) is None else _status(data, name, where)


def _str_list(
    data: Mapping[str, Any], name: str, where: str, *, required: bool = True
) -> list[str]:
    value = data.get(name, _MISSING if required else [])
    if type(value) is list and all(type(item) is str for item in value):
        return value
    raise _bad(where, name, "a list of strings", value)


def _str_dict(data: Mapping[str, Any], name: str, where: str) -> dict[str, str]:
    value = data.get(name, _MISSING)
    if type(value) is dict and all(type(v) is str for v in value.values()):
        return value
    raise _bad(where, name, "an object of strings", value)


def _list(data: Mapping[str, Any], name: str, where: str) -> list[Any]:
    value = data.get(name, _MISSING)
    if type(value) is not list:
        raise _bad(where, name, "a list", value)
    return value


# --- the answers -----------------------------------------------------------------------


class _Record:
    """The behaviour of a ``@record``: keyword or positional construction in field
    order, defaults (a list or dict default is copied), frozen attributes, ``==``,
    ``repr`` and ``as_dict``."""

    _fields: tuple[str, ...] = ()
    _defaults: dict[str, Any] = {}  # noqa: RUF012 (per class, set by @record)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes {len(fields)} fields")
        values = dict(zip(fields, args, strict=False))
        for name, value in kwargs.items():
            if name not in fields or name in values:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated {name!r}")
            values[name] = value
        for name in fields[len(args) :]:
            if name not in values:
                if name not in self._defaults:
                    raise TypeError(f"{type(self).__name__}: missing {name!r}")
                default = self._defaults[name]
                values[name] = default.copy() if isinstance(default, list | dict) else default
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f) for f in self._fields))

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"

    def as_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready data (records, lists and statuses too)."""
        return {f: _plain(getattr(self, f)) for f in self._fields}


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.as_dict()
    if isinstance(value, Status):
        return value.value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


if TYPE_CHECKING:

    @dataclass_transform(frozen_default=True)
    def record(cls: type[_T]) -> type[_T]: ...

else:

    def record(cls):
        """Make ``cls`` (a ``_Record``) a record of its annotated fields, in the order
        they are declared, base classes first."""
        fields: list[str] = []
        for klass in reversed(cls.__mro__):
            own = vars(klass)  # (Python 3.14 keeps a class's annotations in __annotate__)
            names = (
                klass.__annotations__ if {"__annotations__", "__annotate__"} & own.keys() else {}
            )
            fields += [n for n in names if not n.startswith("_") and n not in fields]
        cls._fields = tuple(fields)
        cls._defaults = {n: getattr(cls, n) for n in fields if hasattr(cls, n)}
        return cls


@record
class Resources(_Record):
    """What a workload needs while it runs."""

    cpus: float = 1.0
    memory_mb: int = 0
    gpus: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "resources") -> Self:
        data = _object(data, where)
        return cls(
            _float(data, "cpus", where, 1.0),
            _int(data, "memory_mb", where, 0),
            _int(data, "gpus", where, 0),
        )


@record
class Workload(_Record):
    """A stored workload: the user's spec plus what corral knows about it.

    The fields after ``finished_at`` came with issue 9; a server without them gives
    their defaults."""

    id: str
    owner: str
    """The user whose key submitted it; only they and admins see it."""
    name: str | None
    command: list[str]
    env: dict[str, str]
    cwd: str | None
    resources: Resources
    labels: dict[str, str]
    priority: int
    timeout_seconds: float | None
    status: Status
    exit_code: int | None
    signal: str | None
    reason: str | None
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    depends_on: list[str] = []  # noqa: RUF012 (copied for each record)
    """Ids of the workloads it waits for."""
    dependency_type: str = "afterok"
    """``afterok``: start when every dependency completed; ``afterany``: when each ended."""
    array_index: int | None = None
    """Its index in an array (``CORRAL_ARRAY_INDEX``), for array tasks."""
    batch_id: str | None = None
    """The batch request that created it, if one did."""
    max_running: int | None = None
    """At most this many of its batch run at once (None: no limit)."""
    node: str | None = None
    """The machine it runs (or ran) on: the server's host, or a Ray node id."""
    stopping: bool = False
    """The status is terminal but the process is still exiting."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "workload") -> Self:
        d = _object(data, where)
        return cls(
            _str(d, "id", where),
            _str(d, "owner", where),
            _opt_str(d, "name", where),
            _str_list(d, "command", where),
            _str_dict(d, "env", where),
            _opt_str(d, "cwd", where),
            Resources.from_json(d.get("resources", _MISSING), where + ".resources"),
            _str_dict(d, "labels", where),
            _int(d, "priority", where),
            _opt_float(d, "timeout_seconds", where),
            _status(d, "status", where),
            _opt_int(d, "exit_code", where),
            _opt_str(d, "signal", where),
            _opt_str(d, "reason", where),
            _str(d, "created_at", where),
            _str(d, "updated_at", where),
            _opt_str(d, "started_at", where),
            _opt_str(d, "finished_at", where),
            _str_list(d, "depends_on", where, required=False),
            _str_or(d, "dependency_type", where, "afterok"),
            _opt_int(d, "array_index", where),
            _opt_str(d, "batch_id", where),
            _opt_int(d, "max_running", where),
            _opt_str(d, "node", where),
            _bool(d, "stopping", where, False),
        )


@record
class Event(_Record):
    """One entry of a workload's history: ``created``, then one per status change."""

    seq: int
    type: str
    from_status: Status | None
    to_status: Status
    at: str
    reason: str | None
    actor: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "event") -> Self:
        d = _object(data, where)
        return cls(
            _int(d, "seq", where),
            _str(d, "type", where),
            _opt_status(d, "from_status", where),
            _status(d, "to_status", where),
            _str(d, "at", where),
            _opt_str(d, "reason", where),
            _opt_str(d, "actor", where),
        )


@record
class TransitionEvent(_Record):
    """One event of the live feed (``GET /v1/events``, ``Client.watch``): an
    ``Event`` with its global ``id`` (what a resume continues after), its workload's
    id, name and labels."""

    id: int
    workload_id: str
    seq: int
    type: str
    from_status: Status | None
    to_status: Status
    at: str
    reason: str | None
    actor: str | None
    name: str | None
    labels: dict[str, str]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "event") -> Self:
        d = _object(data, where)
        return cls(
            _int(d, "id", where),
            _str(d, "workload_id", where),
            _int(d, "seq", where),
            _str(d, "type", where),
            _opt_status(d, "from_status", where),
            _status(d, "to_status", where),
            _str(d, "at", where),
            _opt_str(d, "reason", where),
            _opt_str(d, "actor", where),
            _opt_str(d, "name", where),
            _str_dict(d, "labels", where),
        )


@record
class Token(_Record):
    """An API key as listed: never the key itself, which only its creation returns."""

    id: str
    user: str
    admin: bool
    """Derived: ``role == "admin"``."""
    role: str
    """``user``, ``admin`` or ``metrics`` (``KeyRole``; a string, so that a newer
    server's kinds still read; an older server's answer has none: derived from
    ``admin``)."""
    unix_user: str | None
    description: str | None
    created_at: str
    revoked_at: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "token") -> Self:
        d = _object(data, where)
        return cls(**_token_fields(d, where))


def _token_fields(d: Mapping[str, Any], where: str) -> dict[str, Any]:
    admin = _bool(d, "admin", where)
    return {
        "id": _str(d, "id", where),
        "user": _str(d, "user", where),
        "admin": admin,
        "role": _str_or(d, "role", where, (KeyRole.ADMIN if admin else KeyRole.USER).value),
        "unix_user": _opt_str(d, "unix_user", where),
        "description": _opt_str(d, "description", where),
        "created_at": _str(d, "created_at", where),
        "revoked_at": _opt_str(d, "revoked_at", where),
    }


@record
class NewToken(Token):
    """The answer to ``POST /v1/tokens``: the key, shown this once."""

    key: str

    def __repr__(self) -> str:  # the key is a secret: never in a log or traceback
        return f"NewToken(id={self.id!r}, user={self.user!r}, role={self.role!r}, key=...)"

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "token") -> Self:
        d = _object(data, where)
        return cls(**_token_fields(d, where), key=_str(d, "key", where))


@record
class Capacity(_Record):
    """An amount of the executor's resources (``GET /v1/status``)."""

    cpus: float
    memory_mb: int
    gpus: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "capacity") -> Self:
        d = _object(data, where)
        return cls(_float(d, "cpus", where), _int(d, "memory_mb", where), _int(d, "gpus", where))


@record
class QueueEntry(_Record):
    """A pending workload at the head of the queue, in scheduling order."""

    id: str
    name: str | None
    owner: str
    resources: Resources
    priority: int
    reason: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "queue[]") -> Self:
        d = _object(data, where)
        return cls(
            _str(d, "id", where),
            _opt_str(d, "name", where),
            _str(d, "owner", where),
            Resources.from_json(d.get("resources") or {}, where + ".resources"),
            _int(d, "priority", where, 0),
            _opt_str(d, "reason", where),
        )


@record
class ServerStatus(_Record):
    """``GET /v1/status``: the executor's capacity, what is used and free, the caller's
    workloads counted by status (an admin's: everyone's), the head of the queue, this
    server's name and the name of the server that schedules (None: none does now)."""

    executor: str
    capacity: Capacity
    used: Capacity
    free: Capacity
    counts: dict[str, int]
    queue: list[QueueEntry]
    queue_length: int
    server: str | None = None
    leader: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "status") -> Self:
        d = _object(data, where)
        counts = d.get("counts", _MISSING)
        if type(counts) is not dict or not all(type(n) is int for n in counts.values()):
            raise _bad(where, "counts", "an object of integers", counts)
        queue = _list(d, "queue", where) if "queue" in d else []
        return cls(
            _str(d, "executor", where),
            Capacity.from_json(d.get("capacity", _MISSING), where + ".capacity"),
            Capacity.from_json(d.get("used", _MISSING), where + ".used"),
            Capacity.from_json(d.get("free", _MISSING), where + ".free"),
            counts,
            [QueueEntry.from_json(e, f"{where}.queue[{i}]") for i, e in enumerate(queue)],
            _int(d, "queue_length", where, len(queue)),
            _opt_str(d, "server", where),
            _opt_str(d, "leader", where),
        )


@record
class Page(_Record):
    """One page of ``GET /v1/workloads``: ``next_cursor`` fetches the next (None: it
    was the last); ``total`` counts every match of the filter when asked for."""

    items: list[Workload]
    next_cursor: str | None
    total: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "page") -> Self:
        d = _object(data, where)
        items = _list(d, "items", where)
        return cls(
            [Workload.from_json(w, f"{where}.items[{i}]") for i, w in enumerate(items)],
            _opt_str(d, "next_cursor", where) or None,
            _opt_int(d, "total", where),
        )


@record
class NotKilled(_Record):
    """A target of a bulk kill that could not be killed (it had ended), and why."""

    id: str
    status: Status
    detail: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "not_killed[]") -> Self:
        d = _object(data, where)
        return cls(_str(d, "id", where), _status(d, "status", where), _str(d, "detail", where))


@record
class KillResult(_Record):
    """``POST /v1/workloads/kill``: each target is killed, not killed, or not found."""

    killed: list[Workload]
    not_killed: list[NotKilled]
    not_found: list[str]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "kill") -> Self:
        d = _object(data, where)
        killed = _list(d, "killed", where) if "killed" in d else []
        not_killed = _list(d, "not_killed", where) if "not_killed" in d else []
        return cls(
            [Workload.from_json(w, f"{where}.killed[{i}]") for i, w in enumerate(killed)],
            [NotKilled.from_json(n, f"{where}.not_killed[{i}]") for i, n in enumerate(not_killed)],
            _str_list(d, "not_found", where, required=False),
        )
