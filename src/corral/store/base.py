"""The ``Store`` protocol: what every backend guarantees."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from corral.errors import CorralError
from corral.model import Event, Status, Workload, WorkloadCreate

LIST_LIMIT_MAX = 1000


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing; ``next_cursor`` is None on the last page."""

    items: list[Workload]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class NewWorkload:
    """One item of ``Store.create_workloads``."""

    spec: WorkloadCreate
    idempotency_key: str | None = None
    actor: str | None = None


Created = tuple[Workload, bool]
"""A workload and whether it was replayed for an idempotency key."""


class Store(Protocol):
    """Persistence of workloads and their events.

    Every method is safe to call from several threads and processes at once.
    """

    @property
    def url(self) -> str:
        """The database URL, for ``open_store`` in another process."""
        ...

    def create_workload(
        self,
        spec: WorkloadCreate,
        *,
        idempotency_key: str | None = None,
        actor: str | None = None,
    ) -> Created:
        """Store a new pending workload and its ``created`` event, atomically.

        With ``idempotency_key``, a key already stored with the same spec returns the
        original workload and ``True`` (replayed) instead of creating another; with a
        different spec it raises ``IdempotencyKeyReusedError``.
        """
        ...

    def create_workloads(self, items: Sequence[NewWorkload]) -> list[Created | CorralError]:
        """``create_workload`` for several, in one transaction (a group commit). Each
        item is atomic on its own: an item's domain error takes its place in the result
        and the others are still stored."""
        ...

    def get_workload(self, workload_id: str) -> Workload:
        """The workload, or ``NotFoundError``."""
        ...

    def list_workloads(
        self,
        *,
        statuses: Sequence[Status] = (),
        labels: Sequence[tuple[str, str]] = (),
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Newest first; a workload matches when its status is any of ``statuses`` (all
        when empty) and it carries every one of ``labels``. Keyset pagination: a cursor
        continues strictly after the last item of the previous page, so concurrent
        inserts never duplicate or skip an existing row."""
        ...

    def list_events(self, workload_id: str) -> list[Event]:
        """The workload's events, oldest first (the first is ``created``)."""
        ...

    def update_workload_status(
        self,
        workload_id: str,
        status: Status,
        *,
        exit_code: int | None = None,
        reason: str | None = None,
        signal: str | None = None,
        actor: str | None = None,
    ) -> Workload:
        """The only way a status changes. Atomically: read the current status, check
        ``valid_transition``, write the status, timestamps, exit code, signal and
        reason, and append the event -- or change nothing and raise
        ``InvalidTransitionError`` / ``NotFoundError``. Of concurrent callers leaving
        the same status, exactly one succeeds."""
        ...

    def set_pending_reasons(self, reasons: Sequence[tuple[str, str]]) -> None:
        """Set the ``reason`` of each ``(id, reason)`` whose workload is still pending,
        in one transaction; not a status change, so no event."""
        ...

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...
