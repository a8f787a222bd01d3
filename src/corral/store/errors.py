"""Errors raised by every ``Store`` implementation."""

from __future__ import annotations

from corral.errors import CorralError
from corral.model import TRANSITIONS, Status


class InvalidTransitionError(CorralError):
    """The state machine forbids this status change.

    The store's sentinel error: raised by ``update_workload_status`` when the
    workload's current status may not move to the requested one.
    """

    def __init__(self, workload_id: str, current: Status, requested: Status) -> None:
        self.workload_id = workload_id
        self.current = current
        self.requested = requested
        self.allowed: list[Status] = sorted(TRANSITIONS[current])
        allowed = ", ".join(self.allowed) or "none, it is terminal"
        super().__init__(
            f"workload {workload_id} is {current}; it cannot become {requested}"
            f" (allowed from {current}: {allowed})"
        )


class NotFoundError(CorralError):
    """No workload has this id."""

    def __init__(self, workload_id: str) -> None:
        self.workload_id = workload_id
        super().__init__(f"no workload has id {workload_id!r}")


class IdempotencyKeyReusedError(CorralError):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, key: str, workload_id: str) -> None:
        self.key = key
        self.workload_id = workload_id
        super().__init__(
            f"Idempotency-Key {key!r} was already used for workload {workload_id} with a"
            " different body; use a new key for a new workload"
        )


class TokenNotFoundError(CorralError):
    """No API key has this id."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(f"no API key has id {key_id!r}")


class UnixUserConflictError(CorralError):
    """The user already runs as another Unix account (fixed once given)."""

    def __init__(self, user: str, current: str, requested: str) -> None:
        self.user = user
        super().__init__(
            f"user {user!r} runs workloads as Unix user {current!r}, fixed when it was"
            f" given; a key for it cannot run them as {requested!r} (use another user name)"
        )


class StorageFullError(CorralError):
    """The database's file system is full: nothing of the request was stored.

    Raised for SQLite's ``SQLITE_FULL``, and for an I/O error while the file system
    has no room left (``ENOSPC`` can surface as ``SQLITE_IOERR``)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "the server's storage is full; nothing was stored. Free space and retry"
            + (f" ({detail})" if detail else "")
        )


class StoreBusyError(CorralError):
    """The database stayed locked by another writer for the whole busy timeout:
    nothing was stored; retrying shortly may succeed."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "the database is busy (locked by another writer); nothing was stored, retry shortly"
            + (f" ({detail})" if detail else "")
        )


class DatabaseUnreachableError(StoreBusyError):
    """The database server cannot be reached: the connection was refused or lost, or
    no connection came free in time. A 503 like ``StoreBusyError``: retrying shortly
    may succeed (a request whose connection was lost may or may not have been stored;
    an Idempotency-Key makes its retry safe)."""

    def __init__(self, detail: str = "") -> None:
        CorralError.__init__(
            self,
            "the database is unreachable; retry shortly" + (f" ({detail})" if detail else ""),
        )


class DatabaseRefusedError(DatabaseUnreachableError):
    """The database server answered but refused the connection for a reason that
    lasts: an unknown user or database, a wrong or missing password, no ``pg_hba``
    entry. Still a 503 to API callers (an operator may fix it while the server
    runs), but worded as what to fix, not as a wait."""

    def __init__(self, detail: str = "") -> None:
        CorralError.__init__(
            self,
            f"the database refused the connection ({detail}): check the user, password"
            " and database name of the URL (a password can come from PGPASSWORD or"
            " ~/.pgpass instead of the URL)",
        )


class DatabaseError(CorralError):
    """The database refused a statement for a reason the store does not expect (not a
    full disk, a lock or a lost connection): nothing of the request was stored. Not
    mapped to a status of its own: the API answers 500 and logs it."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the database refused the request: {detail}")
