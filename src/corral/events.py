"""The live event feed (``GET /v1/events``; docs/operations.md, "Events, live").

Every transition is a row of the events table with a global serial id. A reader
pages through the table after a cursor (the last id it was given), so a reconnect,
or a server restart, resumes with ``Last-Event-ID`` and loses nothing.

- **Gaps.** On PostgreSQL a serial id is taken at insert, not at commit: a reader
  may see id 11 committed while id 10 is still in an open transaction. A cursor
  moved past 10 would skip it for ever, so a reader goes only up to the *horizon*:
  the id before the first gap in the ids of every event (``Store.event_ids_after``,
  unfiltered: another user's event fills a gap as well as one's own). Most gaps are
  no write in flight at all: the events of deleted workloads (retention), or a
  rolled-back transaction's id. So when a page meets a gap, the store says which
  writes are in flight (``Store.writes_in_flight``: on PostgreSQL the ids of this
  database's transactions in progress that have written, read after the ids; the
  one holding the gap's id is among them); the gap is settled once every one of
  those first seen with it has ended: at once for a gap nobody holds, within
  milliseconds for a commit under way. (Not the snapshot's ``xmin``: it is the whole
  cluster's, where another database's long transaction would hold every gap.)
  Whatever the snapshot says, a gap is waited for ``GAP_WAIT_SECONDS`` at most, by
  this server's own monotonic clock only, never by an event's ``at`` (the writing
  server's clock, which may be behind). A ``Gaps``, one per server (its app's, for its
  one database) and shared by every page and stream, remembers when, and with which
  writes in flight, the server first met each gap: a JSON page stops at a gap not settled, and
  a later page, or a stream (which looks again every ``GAP_RECHECK_SECONDS``), passes
  it. It is bounded (``GAPS_REMEMBERED``, the first met forgotten first): a forgotten
  gap met again is waited for again, later but never lost. The price: an event whose
  transaction stays open more than ``GAP_WAIT_SECONDS`` after a later one committed
  is not delivered to the readers that passed it (it is in the table: a page read
  from before it has it). corral's transactions are pipelined and take milliseconds,
  and a stalled server's sessions are ended at a takeover, so that is a transaction
  that failed in all but name. SQLite has one writer and its rollbacks take their
  ids back: its gaps are deleted events only, settled as soon as met
  (``writes_in_flight`` is None).
- **Wake-ups.** Each stream is its own task reading from its own cursor in pages of
  up to ``EVENTS_LIMIT_MAX``; it sleeps until the server's ``Broadcast`` fires
  (``BroadcastingStore`` fires it after each write this server makes) or
  ``POLL_SECONDS`` pass (which covers writes by other servers of a PostgreSQL
  database). A slow consumer only makes its own task wait on its socket: no buffer
  is shared.
- **Since a time.** ``since_seconds`` starts a reader at the first event of the last
  N seconds (``cursor_since``): a binary search over the ids, whose times rise with
  them, of one indexed row a step (the dashboard's plot of the last hour).
- **Catching up** on a backlog (``after=0`` on a big table) is paced so that it does
  not crowd out the other requests: a page is one write (its messages joined), the
  task yields to the event loop between pages, and the server's streams read at
  most ``STREAM_READS`` pages at once (a semaphore). A client that does not read
  costs a page or two of memory, and 128 KiB of the kernel's (the listener's
  ``TCP_NOTSENT_LOWAT``, ``corral.server``: else the kernel takes ~4 MB of events
  before the stream's writes block).
- **The database failing** (unreachable, busy, refusing) under a stream does not end
  it: its reads are tried again after ``RETRY_MIN_SECONDS``, doubling up to
  ``RETRY_MAX_SECONDS``, its keep-alive comments go on, one warning is logged per
  outage and stream (no traceback), and the events written once the database is
  back follow. Ending it instead would send every watcher reconnecting, each
  getting a 503 until the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from corral.model import TransitionEvent
from corral.store.base import EVENTS_LIMIT_MAX, EventFilter, Store, WritesInFlight
from corral.store.errors import DatabaseError, StoreBusyError
from corral.store.sqlite import EVENT_ID_MAX

GAP_WAIT_SECONDS = 5.0
GAP_RECHECK_SECONDS = 0.02
"""How soon a stream stopped at a gap not settled looks again."""
POLL_SECONDS = 1.0
KEEP_ALIVE_SECONDS = 15.0
STREAM_READS = 2
"""The most page reads a server's streams make at once."""
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0
"""A stream's reads while the database fails: tried again after 0.5 s, doubling up
to 5 s."""

log = logging.getLogger(__name__)

_WRITES = frozenset(
    {
        "create_workload",
        "create_workloads",
        "create_batch",
        "update_workload_status",
        "claim_workloads",
    }
)
"""The ``Store`` methods that append events."""


class Broadcast:
    """Wakes every task waiting on it; ``fire()`` from the event loop's thread."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False
        """Set by ``close()``: the server is stopping, so every stream ends (a
        client resumes on the next server with ``Last-Event-ID``); else uvicorn
        would wait for streams that never end."""

    def close(self) -> None:
        self.closed = True
        self.fire()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def waiter(self) -> asyncio.Event:
        """Take before reading: a fire after this wakes ``wait(waiter)`` at once."""
        return self._event

    @staticmethod
    async def wait(waiter: asyncio.Event, timeout: float) -> None:
        """Until ``waiter`` fired or ``timeout`` seconds passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.wait(), timeout)


class BroadcastingStore:
    """``store``, firing ``broadcast`` after each of its writes that appends events
    (``_WRITES``) returns or raises; everything else is the store's own."""

    def __init__(self, store: Store, broadcast: Broadcast) -> None:
        self.inner = store
        self.broadcast = broadcast

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in _WRITES:
            return attr

        async def write(*args: Any, **kwargs: Any) -> Any:
            try:
                return await attr(*args, **kwargs)
            finally:
                self.broadcast.fire()

        return write


GAPS_REMEMBERED = 4096
"""The most gaps ``Gaps`` remembers."""


class Gaps:
    """When this server first met each gap (its first missing id), by the monotonic
    clock, and the writes then in flight; at most ``size`` of them, the first met
    forgotten first."""

    def __init__(self, size: int = GAPS_REMEMBERED) -> None:
        self.size = size
        self._first_met: dict[int, tuple[float, WritesInFlight]] = {}  # in the order met

    def settled(self, gap: int, clock: float, writes: WritesInFlight | None = None) -> bool:
        """Whether ``gap`` cannot be filled any more: no write can be in flight
        (``writes`` None: SQLite), every write in flight when it was first met has
        ended (by ``writes``, read now), or it was first met ``GAP_WAIT_SECONDS`` or
        more before ``clock`` (met now if it was not known)."""
        if writes is None:
            return True
        first = self._first_met.get(gap)
        if first is None:
            if len(self._first_met) >= self.size:
                del self._first_met[next(iter(self._first_met))]
            self._first_met[gap] = first = (clock, writes)
        met_at, then = first
        return not (then & writes) or clock - met_at >= GAP_WAIT_SECONDS

    def waiting(self, gap: int) -> bool:
        """Whether ``gap`` was met and may not be settled yet (a stream looks again
        soon instead of waiting for a write)."""
        return gap in self._first_met

    def __len__(self) -> int:
        return len(self._first_met)


def has_gap(cursor: int, ids: Sequence[int]) -> bool:
    """Whether ``ids`` (after ``cursor``, lowest first) skip an id."""
    return bool(ids) and ids[-1] - cursor != len(ids)


def horizon(
    cursor: int,
    ids: Sequence[int],
    gaps: Gaps,
    clock: float,
    writes: WritesInFlight | None = None,
) -> int:
    """The highest id up to which every id after ``cursor`` is known: ``ids`` (those
    of every event after ``cursor``, lowest first) up to the first gap not settled
    (``Gaps.settled`` at ``clock``, the monotonic clock, with ``writes``, the
    database's writes in flight read after ``ids``)."""
    expected = cursor + 1
    for event_id in ids:
        if event_id != expected and not gaps.settled(expected, clock, writes):
            return expected - 1
        expected = event_id + 1
    return expected - 1


async def cursor_since(store: Store, seconds: float, *, now: float | None = None) -> int:
    """The cursor before the first event of the last ``seconds`` (by ``now``, this
    server's clock; the events' times are their writing servers'): 0 when every event
    kept is that recent, else the id of the newest older one.

    A binary search over the ids, each step the first event after an id
    (``list_events_after(x, limit=1)``, one row by the primary key): about 2 log2 of the
    newest id in steps, whatever the table holds. It assumes times rise with ids,
    which holds but for writes racing in the same instant (or servers' clocks apart):
    an event a little out of order at the edge may be in or out."""
    cutoff = (time.time() if now is None else now) - seconds

    async def recent_after(cursor: int) -> bool:
        """True when no event after ``cursor`` is older than the cutoff (so none is,
        if times rise with ids)."""
        found = await store.list_events_after(cursor, limit=1)
        return not found or _epoch_seconds(found[0].at) >= cutoff

    if await recent_after(0):
        return 0
    low, step = 0, 1  # recent_after(low) is False
    while True:
        high = min(low + step, EVENT_ID_MAX)
        if high == low or await recent_after(high):
            break
        low, step = high, step * 2
    while high - low > 1:
        middle = (low + high) // 2
        if await recent_after(middle):
            high = middle
        else:
            low = middle
    return high


def _epoch_seconds(at: str) -> float:
    """An event's ``at`` (RFC 3339, UTC) as seconds since the epoch."""
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


async def read_page(
    store: Store,
    cursor: int,
    matching: EventFilter,
    *,
    gaps: Gaps,
    limit: int = EVENTS_LIMIT_MAX,
) -> tuple[list[TransitionEvent], int]:
    """The events after ``cursor`` that match, up to the horizon, and the cursor to
    read from next (past events that do not match, never past a gap not settled)."""
    ids = await store.event_ids_after(cursor, limit=EVENTS_LIMIT_MAX)
    writes = await store.writes_in_flight() if has_gap(cursor, ids) else None
    until = horizon(cursor, ids, gaps, time.monotonic(), writes)
    if until == cursor:
        return [], cursor
    items = await store.list_events_after(cursor, matching, limit=limit, until_id=until)
    return items, (items[-1].id if len(items) == limit else until)


async def follow(
    store: Store,
    broadcast: Broadcast,
    cursor: int,
    matching: EventFilter,
    *,
    gaps: Gaps,
    reads: asyncio.Semaphore | None = None,
    keep_alive: float = KEEP_ALIVE_SECONDS,
) -> AsyncIterator[list[TransitionEvent]]:
    """Every matching event after ``cursor``, in id order, a page at a time, until
    the broadcast is closed; an empty page after ``keep_alive`` seconds without any
    (the stream's keep-alive comment). ``reads``: taken for each page read, to bound
    the reads of every stream at once (a server's streams share one)."""
    quiet_since = time.monotonic()
    retry = 0.0  # while the database fails: the seconds until the next try
    while not broadcast.closed:
        waiter = broadcast.waiter()
        try:
            async with reads or contextlib.nullcontext():
                items, next_cursor = await read_page(store, cursor, matching, gaps=gaps)
            retry = 0.0
        except (StoreBusyError, DatabaseError) as exc:
            if not retry:
                log.warning("an event stream waits for the database: %s", exc)
            retry = min(max(2 * retry, RETRY_MIN_SECONDS), RETRY_MAX_SECONDS)
            items, next_cursor = [], cursor
        if items or time.monotonic() - quiet_since >= keep_alive:
            yield items
            quiet_since = time.monotonic()
        if next_cursor != cursor:
            cursor = next_cursor
            await asyncio.sleep(0)  # let other requests in between the pages of a catch-up
            continue  # perhaps more to read now
        until_keep_alive = max(0.0, keep_alive - (time.monotonic() - quiet_since))
        if retry:
            await _pause(broadcast, min(retry, until_keep_alive))
        else:
            # stopped at a gap: it settles when the writes in flight end (milliseconds)
            soon = GAP_RECHECK_SECONDS if gaps.waiting(cursor + 1) else POLL_SECONDS
            await broadcast.wait(waiter, min(soon, until_keep_alive))


async def _pause(broadcast: Broadcast, seconds: float) -> None:
    """``seconds``, or until the broadcast closes (not woken by its writes: each write
    tried while the database is down fires it too)."""
    deadline = time.monotonic() + seconds
    while not broadcast.closed and (left := deadline - time.monotonic()) > 0:
        await broadcast.wait(broadcast.waiter(), left)


KEEP_ALIVE_MESSAGE = b": keep-alive\n\n"


def sse_message(event: TransitionEvent) -> bytes:
    """One ``text/event-stream`` message."""
    return f"id: {event.id}\nevent: transition\ndata: {event.model_dump_json()}\n\n".encode()


def sse_messages(page: Sequence[TransitionEvent]) -> bytes:
    """A page of ``follow``, as one write: its messages, or the keep-alive comment."""
    return b"".join(map(sse_message, page)) if page else KEEP_ALIVE_MESSAGE
