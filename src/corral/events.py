"""The live event feed (``GET /v1/events``; docs/operations.md, "Events, live").

Every transition is a row of the events table with a global serial id. A reader
pages through the table after a cursor (the last id it was given), so a reconnect,
or a server restart, resumes with ``Last-Event-ID`` and loses nothing.

- **Gaps.** On PostgreSQL a serial id is taken at insert, not at commit: a reader
  may see id 11 committed while id 10 is still in an open transaction. A cursor
  moved past 10 would skip it for ever, so a reader goes only up to the *horizon*:
  the id before the first gap not settled in the ids of every event
  (``Store.event_ids_after``, unfiltered: another user's event fills a gap as well as
  one's own). A gap is settled, by this server's monotonic clock (never by an
  event's ``at``, the writing server's clock, which may be behind):
  1. ``GAP_WAIT_SECONDS`` after this server first met it, whatever else;
  2. at once, when it lies below an id this server saw ``GAP_WAIT_SECONDS`` ago
     (its holder, if any, has been in flight that long: the same rule as 1, for old
     gaps such as the events retention deleted, or a rollback long ago);
  3. at a read that finds none in flight of the writes in flight at the first read
     ``GAP_GRACE_SECONDS`` or more after it was met (its *roster*: a writer may take
     its id a moment before it counts as in flight, but not that long before):
     ``Store.writes_in_flight``, on PostgreSQL this database's
     transactions that have written (``pg_stat_activity.backend_xid``, read after the
     ids; not the snapshot's ``xmin``, which is the whole cluster's, where another
     database's long transaction would hold every gap). A rolled-back id, a fresh
     hole: settled in about ``GAP_GRACE_SECONDS``; a commit under way, when it ends.
  SQLite has one writer and its rollbacks take their ids back: its gaps are deleted
  events only, settled as met (``writes_in_flight`` is None). A ``Gaps``, one per
  server (its app's, for its one database) and shared by every page and stream,
  remembers each gap met, keyed by its first missing id, with where it ended (ids
  missing above that later, events deleted since, are a gap of their own), bounded
  (``GAPS_REMEMBERED``, the first met forgotten first: a forgotten gap met again is
  waited for again, later but never lost), and the highest id seen over the last
  ``GAP_WAIT_SECONDS`` (for 2). A JSON page stops at a gap not settled; a stream
  looks again soon (``Gaps.recheck_in``: from 50 ms, less often as the gap ages).
  The price: an event whose transaction stays open more than ``GAP_WAIT_SECONDS``
  after a later one committed is not delivered to the readers that passed it (it is
  in the table: a page read from before it has it). corral's transactions are
  pipelined and take milliseconds, and a stalled server's sessions are ended at a
  takeover, so that is a transaction that failed in all but name.
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
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from corral.model import TransitionEvent
from corral.store.base import EVENTS_LIMIT_MAX, EventFilter, Store, WritesInFlight
from corral.store.errors import DatabaseError, StoreBusyError
from corral.store.sqlite import EVENT_ID_MAX

GAP_WAIT_SECONDS = 5.0
GAP_GRACE_SECONDS = 0.1
"""A gap met is not settled by the writes in flight before this (a writer may take its
id a moment before it counts as a write in flight: PostgreSQL's ``nextval`` of a
statement whose first row is not written yet)."""
SEEN_STEP_SECONDS = 0.1
"""``Gaps`` keeps the highest id seen at most once per such step (a bounded memory)."""
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


@dataclass
class _Gap:
    met_at: float
    """When this server first met it (the monotonic clock, read after the ids)."""
    end: int
    """The id present just above it then: the gap is ``[its key, end)``; ids missing
    above ``end`` later (events deleted since) are a gap of their own."""
    roster: WritesInFlight | None = None
    """The writes in flight at the first read ``GAP_GRACE_SECONDS`` or more after it
    was met: the gap's holder, if any, has its transaction id by then, so it is among
    them; the gap settles at a later read that finds none of them in flight."""
    settled: bool = False


class Gaps:
    """What this server knows of the gaps in the event ids: when it first met each
    (keyed by its first missing id), with the writes then in flight and where it
    ended, at most ``size`` of them (the first met forgotten first); and the highest
    id it saw over the last ``GAP_WAIT_SECONDS``, so that a gap below an id seen that
    long ago is settled as met (its holder, if any, has been in flight that long)."""

    def __init__(self, size: int = GAPS_REMEMBERED) -> None:
        self.size = size
        self._met: dict[int, _Gap] = {}  # in the order met
        self._seen: deque[tuple[float, int]] = deque()  # (when, highest id), both rising

    def observe(self, highest: int, clock: float) -> None:
        """``highest``, a committed event's id, is seen at ``clock`` (read after it)."""
        seen = self._seen
        if not seen or highest > seen[-1][1]:
            if len(seen) >= 2 and clock - seen[-2][0] < SEEN_STEP_SECONDS:
                seen[-1] = (clock, highest)  # within a step of the one before: moved on
            else:
                seen.append((clock, highest))
        self._forget_seen(clock)

    def _forget_seen(self, clock: float) -> None:
        """Keep one id seen ``GAP_WAIT_SECONDS`` ago or more: the highest."""
        seen = self._seen
        while len(seen) >= 2 and clock - seen[1][0] >= GAP_WAIT_SECONDS:
            seen.popleft()

    def _long_seen(self, clock: float) -> int:
        """The highest id seen ``GAP_WAIT_SECONDS`` or more before ``clock`` (0: none)."""
        self._forget_seen(clock)
        if self._seen and clock - self._seen[0][0] >= GAP_WAIT_SECONDS:
            return self._seen[0][1]
        return 0

    def settle(self, gap: int, end: int, clock: float, writes: WritesInFlight | None) -> int | None:
        """Ids ``gap`` to ``end - 1`` are missing: the first of them (or ``end``) not
        known to be settled yet, past ``gap``; None when ``gap`` itself is not settled.
        Settled: where no write can be in flight (``writes`` None: SQLite), below an
        id seen ``GAP_WAIT_SECONDS`` ago, first met ``GAP_WAIT_SECONDS`` ago or more,
        or none of its roster in flight (``_Gap.roster``; ``writes``, read after
        ``clock``, is the writes in flight now)."""
        if writes is None:
            return end
        long_seen = self._long_seen(clock)
        if gap <= long_seen:
            return min(end, long_seen + 1)
        known = self._met.get(gap)
        if known is None:
            if len(self._met) >= self.size:
                del self._met[next(iter(self._met))]
            self._met[gap] = known = _Gap(clock, end)
        age = clock - known.met_at
        if not known.settled and age >= GAP_WAIT_SECONDS:
            known.settled = True
        elif not known.settled and age >= GAP_GRACE_SECONDS:
            if known.roster is None:
                known.roster = writes  # settled now only if nothing is in flight
            known.settled = not (known.roster & writes)
        return min(end, known.end) if known.settled else None

    def recheck_in(self, gap: int, clock: float) -> float | None:
        """How soon a stream stopped at ``gap`` should look again: soon after it was
        first met (a write under way ends in milliseconds), less often as it ages; at
        once when it has settled meanwhile; None when it is not a gap waited for."""
        known = self._met.get(gap)
        if known is None:
            return None
        if known.settled:
            return 0.0
        age = clock - known.met_at
        return min(POLL_SECONDS, max(GAP_GRACE_SECONDS / 2, age / 4))

    def __len__(self) -> int:
        return len(self._met)


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
    (``Gaps.settle`` at ``clock``, the monotonic clock, with ``writes``, the
    database's writes in flight read after ``ids``)."""
    if ids:
        gaps.observe(ids[-1], clock)
    found: int | None = None  # the horizon, once a gap not settled is met
    expected = cursor + 1
    for event_id in ids:
        gap = expected
        while gap < event_id:
            settled_to = gaps.settle(gap, event_id, clock, writes)
            if settled_to is None:
                if found is None:
                    found = gap - 1  # the rest of the page's gaps are met now all the same,
                break  # so that they settle together (one grace for a page of holes)
            gap = settled_to
        expected = event_id + 1
    return expected - 1 if found is None else found


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
    clock = time.monotonic()  # after the ids (a gap met is no older), before the writes
    writes = await store.writes_in_flight() if has_gap(cursor, ids) else None
    until = horizon(cursor, ids, gaps, clock, writes)
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
            soon = gaps.recheck_in(cursor + 1, time.monotonic())
            soon = POLL_SECONDS if soon is None else soon
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
