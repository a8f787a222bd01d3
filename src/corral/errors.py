"""corral's domain errors, under one root so the API maps them in one place.

::

    CorralError
    ├── store.InvalidTransitionError   (409)  the state machine forbids the change
    ├── store.NotFoundError            (404)  no such workload
    ├── store.IdempotencyKeyReusedError (422) same key, different body
    ├── store.TokenNotFoundError       (404)  no such API key
    ├── store.UnixUserConflictError    (409)  the user already runs as another account
    ├── ForbiddenError                 (403)  the key may not do this (not an admin)
    ├── store.StorageFullError         (507)  the database's disk is full; nothing stored
    ├── store.StoreBusyError           (503)  locked by another writer beyond the busy
    │                                         timeout; ``Retry-After: 1``
    │   └── store.DatabaseUnreachableError (503) PostgreSQL refused or lost the
    │                                         connection, or none came free in time
    ├── store.DatabaseError            (500)  PostgreSQL refused a statement unexpectedly
    ├── ExceedsCapacityError           (422)  asks for more than the whole machine
    ├── UnsupportedMediaTypeError      (415)  a body not declared application/json
    └── InvalidInputError              (422)  a bad filter, cursor or limit
        └── FieldError                 (422)  one field of the body, by its path
"""

from __future__ import annotations

from collections.abc import Sequence


class CorralError(Exception):
    """Root of corral's domain errors; the docstring is the default message."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])


class ExceedsCapacityError(CorralError):
    """The workload asks for more than the executor's whole capacity."""


class InvalidInputError(CorralError):
    """The request's parameters are invalid."""


class ForbiddenError(CorralError):
    """This key may not do that; an admin key may."""


class UnsupportedMediaTypeError(CorralError):
    """The request body is not declared as ``application/json``."""


def format_loc(loc: Sequence[str | int]) -> str:
    """A path in a request body as users write it: ``items[3].depends_on[0]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class FieldError(InvalidInputError):
    """One field of the request body is invalid, found past its schema (an unknown
    dependency, a cycle): ``loc`` is its path in the body, ``msg`` what is wrong."""

    def __init__(self, loc: Sequence[str | int], msg: str) -> None:
        self.loc = tuple(loc)
        self.msg = msg
        super().__init__(f"{format_loc(self.loc)}: {msg}")

    def within(self, *prefix: str | int) -> FieldError:
        """The same error, for a body that holds this one at ``prefix``."""
        return FieldError((*prefix, *self.loc), self.msg)
