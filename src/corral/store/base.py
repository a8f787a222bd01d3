"""The ``Store`` protocol: what every backend guarantees.

The protocol is async: every method is a coroutine, awaited on the event loop of the
server (routes, the create batcher, the keys cache, the scheduler). ``SQLiteStore``
(``store/sqlite.py``) is the synchronous SQLite code underneath, for offline paths and
migrations; ``AsyncSQLiteStore`` (``store/sqlite_async.py``) serves this protocol over
it on threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from corral.errors import CorralError
from corral.model import (
    Event,
    KeyRole,
    Status,
    Token,
    TransitionEvent,
    Workload,
    WorkloadBatchItem,
    WorkloadCreate,
)
from corral.store.cluster import Fence, Lease, ServerInfo
from corral.units import AGE_MAX_SECONDS

LIST_LIMIT_MAX = 1000
EVENTS_LIMIT_MAX = 500
"""The most events ``list_events_after`` returns at once (one page of the live feed)."""
DELETE_BATCH_MAX = 500
"""The most workloads ``delete_finished`` deletes in one transaction."""
OLDER_THAN_MAX_SECONDS = AGE_MAX_SECONDS
"""The largest age ``delete_finished`` takes (100 years): a cutoff before 1926."""
CLAIM_ACTOR = "scheduler"
"""The actor of every claim's event (pending→running): the scheduler, as in its other writes."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a reader of the live feed gets (``list_events_after``): every
    condition given must hold; an empty one holds for all."""

    owner: str | None = None
    """Of this user's workloads only (None: everyone's)."""
    workload_ids: Sequence[str] = ()
    """Of one of these workloads."""
    labels: Sequence[tuple[str, str]] = ()
    """Of workloads carrying every one of these labels."""
    statuses: Sequence[Status] = ()
    """Moving to one of these statuses."""


EVERY_EVENT = EventFilter()


WritesInFlight = frozenset[int]
"""The ids of the transactions in progress that have written (PostgreSQL's
``backend_xid``), in this database, at one moment."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing; ``next_cursor`` is None on the last page."""

    items: list[Workload]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class StartNow:
    """A create that starts at once (``Store.create_workloads``): the scheduler found
    the queue empty and room for it, took its resources and chose its id."""

    workload_id: str
    node: str
    fence: Fence | None = None


@dataclass(frozen=True, slots=True)
class NewWorkload:
    """One item of ``Store.create_workloads``."""

    spec: WorkloadCreate
    owner: str
    idempotency_key: str | None = None
    actor: str | None = None
    start: StartNow | None = None
    """Create it with ``start.workload_id`` as its id and claim it at once (see
    ``Store.create_workloads``)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request speaks for: a user, through one key (``key_id`` None without
    keys, with ``--no-auth``)."""

    key_id: str | None
    user: str
    admin: bool
    metrics: bool = False
    """A metrics key: it may only ``GET /metrics`` (never with ``admin``)."""

    @classmethod
    def of(cls, key_id: str | None, user: str, role: KeyRole | str) -> Principal:
        """The principal of a key of ``role`` (the stores' ``role`` column)."""
        role = KeyRole(role)
        return cls(key_id, user, role is KeyRole.ADMIN, role is KeyRole.METRICS)

    @property
    def role(self) -> KeyRole:
        if self.metrics:
            return KeyRole.METRICS
        return KeyRole.ADMIN if self.admin else KeyRole.USER


@dataclass(frozen=True, slots=True)
class Account:
    """What a user's workloads run as: ``unix_user`` (None: the server's own account),
    and ``admin``: the user holds an active admin key."""

    unix_user: str | None
    admin: bool


Created = tuple[Workload, bool]
"""A workload and whether it was replayed for an idempotency key."""
BatchCreated = tuple[list[Workload], bool]
"""A batch's workloads, in order, and whether they were replayed for an idempotency key."""


class Store(Protocol):
    """Persistence of workloads and their events.

    Every method is a coroutine, safe to await from several tasks at once (and from
    several processes on one database).
    """

    @property
    def url(self) -> str:
        """The database URL, for ``open_store`` in another process."""
        ...

    @property
    def starts_at_create(self) -> bool:
        """True when ``create_workloads`` honours ``NewWorkload.start`` (else such an
        item is created pending, under an id of the store's own)."""
        ...

    async def create_workload(
        self,
        spec: WorkloadCreate,
        *,
        owner: str,
        idempotency_key: str | None = None,
        actor: str | None = None,
    ) -> Created:
        """Store a new pending workload of ``owner`` and its ``created`` event,
        atomically.

        Each id in ``spec.depends_on`` must be a workload of ``owner``, else
        ``FieldError`` (``depends_on[j]``); the stored workload lists each once.

        With ``idempotency_key`` (scoped to the owner: another owner's equal key is
        another key), a key already stored with the same spec returns that workload as
        it is now and ``True`` (replayed) instead of creating another; with a
        different spec it raises ``IdempotencyKeyReusedError``.
        """
        ...

    async def create_workloads(self, items: Sequence[NewWorkload]) -> list[Created | CorralError]:
        """``create_workload`` for several, in one transaction (a group commit). Each
        item is atomic on its own: an item's domain error takes its place in the result
        and the others are still stored.

        An item with ``start`` (only where ``starts_at_create``) that is created, not
        replayed, takes ``start.workload_id`` as its id and is claimed in the same
        transaction, as ``claim_workloads`` would (pending→running on ``start.node``,
        by the scheduler: both events recorded), unless ``start.fence`` is no longer
        the live lease: then it is created pending, and no error is raised."""
        ...

    async def create_batch(
        self,
        specs: Sequence[WorkloadBatchItem],
        *,
        owner: str,
        max_running: int | None = None,
        idempotency_key: str | None = None,
        actor: str | None = None,
    ) -> BatchCreated:
        """Store the pending workloads of one batch request, all or none, in one
        transaction: they share a new ``batch_id`` and ``max_running``, and an
        integer in an item's ``depends_on`` becomes the id of the item it names.

        Refused whole (``FieldError`` at ``items[i]…``): an integer reference outside
        the batch, to the item itself, or in a cycle (``check_batch_references``);
        an id that is not a workload of ``owner``. ``idempotency_key`` works as for
        ``create_workload``, for the whole batch (a replay returns its workloads as
        they are now).
        """
        ...

    async def get_workload(self, workload_id: str, *, owner: str | None = None) -> Workload:
        """The workload, or ``NotFoundError`` (also when ``owner`` is given and the
        workload is someone else's: for them it does not exist)."""
        ...

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
        """Newest first; a workload matches when its status is any of ``statuses`` (all
        when empty), it carries every one of ``labels``, it is ``owner``'s (anyone's
        when None), its id starts with ``id_prefix`` (4 to 26 characters of the id
        alphabet, else ``InvalidInputError``) and its name is ``name`` (when given).
        Keyset pagination: a cursor continues strictly after the last item of the
        previous page, so concurrent inserts never duplicate or skip an existing row."""
        ...

    async def count_workloads(
        self,
        *,
        statuses: Sequence[Status] = (),
        labels: Sequence[tuple[str, str]] = (),
        owner: str | None = None,
        id_prefix: str | None = None,
        name: str | None = None,
    ) -> int:
        """How many workloads ``list_workloads`` with these filters would list over all
        its pages."""
        ...

    async def ping(self) -> None:
        """Ask the database the cheapest question there is (``SELECT 1``), for
        ``/readyz``: returns once it answers, raises (a ``StoreError``) if it cannot."""
        ...

    async def count_by_status(self, *, owner: str | None = None) -> dict[Status, int]:
        """The number of workloads (``owner``'s, or everyone's when None) in each
        status, every status present (0 when none)."""
        ...

    async def statuses(self, workload_ids: Sequence[str]) -> dict[str, Status]:
        """The status of each of ``workload_ids`` that exists (one query per few
        hundred ids)."""
        ...

    async def list_events(self, workload_id: str, *, owner: str | None = None) -> list[Event]:
        """The workload's events, oldest first (the first is ``created``);
        ``NotFoundError`` as ``get_workload``."""
        ...

    async def list_events_after(
        self,
        after_id: int,
        matching: EventFilter = EVERY_EVENT,
        *,
        limit: int = EVENTS_LIMIT_MAX,
        until_id: int | None = None,
    ) -> list[TransitionEvent]:
        """Up to ``limit`` (1 to ``EVENTS_LIMIT_MAX``, else ``InvalidInputError``)
        events with a global id above ``after_id``, oldest (lowest id) first, each
        with its workload's name and labels, ``matching`` the filter, with an id of at
        most ``until_id`` (when given).

        Ids only grow, but on PostgreSQL not in commit order: a later read may find a
        lower id than one already returned (``corral.events`` waits for such gaps)."""
        ...

    async def event_ids_after(self, after_id: int, *, limit: int = EVENTS_LIMIT_MAX) -> list[int]:
        """The ids of up to ``limit`` events above ``after_id``, lowest first, of every
        workload: what a follower reads to find the gaps of ids not committed yet
        (``corral.events``)."""
        ...

    async def writes_in_flight(self) -> WritesInFlight | None:
        """The transactions in flight now, read after ``event_ids_after`` met a gap
        (``corral.events``: the gap settles once they have ended); None where no write
        in flight can hold an event id below a committed one (SQLite: one writer)."""
        ...

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
        """The only way a status changes. Atomically: read the current status, check
        ``valid_transition``, write the status, timestamps, exit code, signal,
        reason and (when given: the claim) the ``node`` it runs on, and append the
        event (stamped under the same lock, so events' times follow their order) --
        or change nothing and raise ``InvalidTransitionError``
        / ``NotFoundError`` (also when ``owner`` is given and it is not theirs). Of
        concurrent callers leaving the same status, exactly one succeeds."""
        ...

    async def claim_workloads(
        self, workload_ids: Sequence[str], *, node: str, fence: Fence | None = None
    ) -> list[Workload]:
        """pending→running on ``node`` for each of ``workload_ids`` still pending (one
        transaction, few round trips; with ``fence`` checked first, else
        ``FencedError`` and nothing written): the claimed ones, in the order given.
        One no longer pending, or locked by a kill under way, is left alone. Each
        claim's event names ``CLAIM_ACTOR`` as its actor: only the scheduler claims."""
        ...

    async def pending_ids(self, *, after: str | None = None, limit: int | None = None) -> list[str]:
        """The id of every pending workload, in id order: with ``after``, those past
        that id; with ``limit``, the first ``limit`` of them (a page)."""
        ...

    async def queue_head(
        self, limit: int, *, owner: str | None = None
    ) -> tuple[list[Workload], int]:
        """The first ``limit`` pending workloads without dependencies (``owner``'s,
        when given) in the order the scheduler takes them (higher priority first, then
        the oldest), and how many such there are: the queue as a server that does not
        schedule shows it (a standby, ``--executor none``)."""
        ...

    async def get_workloads(self, workload_ids: Sequence[str]) -> list[Workload]:
        """The workloads of ``workload_ids`` that exist, in id order."""
        ...

    async def set_pending_reasons(self, reasons: Sequence[tuple[str, str]]) -> None:
        """Set the ``reason`` of each ``(id, reason)`` whose workload is still pending,
        in one transaction; not a status change, so no event."""
        ...

    async def delete_finished(
        self,
        older_than_seconds: float,
        *,
        owner: str | None = None,
        limit: int = DELETE_BATCH_MAX,
    ) -> list[str]:
        """Delete, in one transaction, up to ``limit`` (1 to ``DELETE_BATCH_MAX``)
        terminal workloads (completed, failed, killed) of ``owner`` (everyone's when
        None) whose ``finished_at`` is more than ``older_than_seconds`` (0 to
        ``OLDER_THAN_MAX_SECONDS``) before now by this server's clock, which stamps
        the ``finished_at`` it writes (on PostgreSQL, by the earlier of it and the
        database's clock: a server's clock ahead of the database's does not hasten
        the deletion of what the others ended); else ``InvalidInputError``. Their
        labels, events, idempotency keys and dependency rows go with them (``ON
        DELETE CASCADE``). Returns the ids deleted: fewer than ``limit`` once no
        more are due (call again while it returns ``limit``).

        Never a pending or running workload, nor one that a pending or running
        workload depends on (the scheduler kills a dependant whose dependency does
        not exist): that one is kept until its last such dependant has ended. Nor
        the workload of the newest event, until another event is written: on SQLite
        the next event would otherwise reuse a deleted event's id
        (``sqlite.deletable_query``), and a follower of the feed miss it. A
        workload is found by the time its id starts with (``ids.id_ceiling``), so a
        call costs the rows it deletes, not the table."""
        ...

    # --- users and API keys ---------------------------------------------------------

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
        """Store a key (its hash only) for ``user``, creating the user on its first
        key. Its role is ``role``, else from ``admin`` (``admin`` with another role
        is a ``ValueError``). A user's ``unix_user``, once given, is fixed: a later
        key naming another raises ``UnixUserConflictError`` and stores nothing (a key
        naming none keeps it; an unmapped user may be mapped by a later key)."""
        ...

    async def find_api_key(self, key_sha256: str) -> Principal | None:
        """The active (not revoked) key with this hash, as who it speaks for."""
        ...

    async def list_api_keys(self) -> list[Token]:
        """Every key, newest first, revoked ones included (never the keys)."""
        ...

    async def revoke_api_key(self, key_id: str) -> Token:
        """Mark the key revoked (once: a second call returns it unchanged), or
        ``TokenNotFoundError``."""
        ...

    async def account_of(self, user: str) -> Account:
        """The Unix account ``user``'s workloads run as, and whether the user holds
        an active admin key."""
        ...

    # --- servers, the scheduler lease, notifications (store/cluster.py) ----------------

    async def register_server(
        self, info: ServerInfo, *, live_seconds: float, replace_instance: str | None = None
    ) -> ServerInfo | None:
        """Take ``info.name`` for ``info.instance``; the live server holding it instead
        (seen within ``live_seconds`` and not ``replace_instance``), else None."""
        ...

    async def heartbeat(
        self, name: str, instance: str, *, capacity: dict[str, Any] | None = None
    ) -> bool:
        """Refresh ``last_seen`` (and the capacity, when given); False when another
        instance has taken the name."""
        ...

    async def list_servers(self) -> list[ServerInfo]: ...

    async def get_lease(self) -> Lease: ...

    async def acquire_lease(
        self,
        holder: str,
        instance: str,
        ttl_seconds: float,
        *,
        replace_instance: str | None = None,
    ) -> tuple[Fence, Lease] | None:
        """Take the scheduler lease when expired, this instance's or
        ``replace_instance``'s: a new epoch and the lease as it was; None while
        another instance holds it."""
        ...

    async def renew_lease(self, fence: Fence, ttl_seconds: float) -> bool:
        """Extend it from the database's now; False when it is no longer ``fence``'s."""
        ...

    async def release_lease(self, fence: Fence) -> None: ...

    async def meta_value(self, key: str, default: str) -> str:
        """The value under ``key``, ``default`` stored by the first caller."""
        ...

    async def listen(
        self, on_wake: Callable[[list[str] | None], None], on_kill: Callable[[str], None]
    ) -> None:
        """Until cancelled: ``on_wake(ids)`` for workloads created by any server
        (``None``: read every pending one; also after each (re)connection),
        ``on_kill(id)`` for each workload killed. SQLite: returns at once."""
        ...

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...
