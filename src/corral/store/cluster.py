"""What several servers on one database share: who they are, who schedules, and the
fence that keeps a scheduler that lost its lease from writing (docs/postgres.md,
"Phase 2").

- A **server** registers its name (``ServerInfo``) and refreshes ``last_seen`` by
  the database clock; a name held by a live instance is not taken.
- The **lease** (one row, ``scheduler``) says which instance schedules; taking it
  bumps its ``epoch``. A ``Fence`` (instance, epoch) rides on every claim and every
  status write of the scheduler: the store checks, in the writing transaction, that
  the lease is still this instance's, this epoch's and not expired, else it raises
  ``FencedError`` and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from corral.errors import CorralError

LEASE = "scheduler"


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease a scheduler holds: its instance and the epoch it took."""

    instance: str
    epoch: int


@dataclass(frozen=True, slots=True)
class ServerInfo:
    name: str
    instance: str
    host: str
    pid: int
    url: str | None = None
    capacity: dict[str, Any] | None = None
    started_at: str | None = None
    last_seen: str | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """The scheduler lease as stored: ``holder`` is a server name (None: never
    taken), ``expires_at`` RFC 3339 by the database clock; ``expired`` as the
    database judged it when read."""

    holder: str | None
    instance: str | None
    epoch: int
    renewed_at: str | None
    expires_at: str
    expired: bool


class FencedError(CorralError):
    """The write carried a fence that no longer holds: another instance took the
    scheduler lease, or it expired. Nothing was written."""

    def __init__(self, fence: Fence) -> None:
        self.fence = fence
        super().__init__(
            f"this server no longer holds the scheduler lease (epoch {fence.epoch});"
            " nothing was written"
        )
