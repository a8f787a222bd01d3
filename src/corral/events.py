"""The live event feed (``GET /v1/events``; docs/operations.md, "Events, live").

Every transition is a row of the events table with a global serial id. A reader
pages through the table after a cursor (the last id it was given), so a reconnect,
or a server restart, resumes with ``Last-Event-ID`` and loses nothing.

- **Gaps.** On PostgreSQL a serial id is taken at insert, not at commit: a reader
  may see id 11 committed while id 10 is still in an open transaction. A cursor
  moved past 10 would skip it for ever, so a reader goes only up to the *horizon*:
  the id before the first gap in the ids of every event (``Store.event_ids_after``,
  unfiltered: another user's event fills a gap as well as one's own). A gap is
  waited for at most ``GAP_WAIT_SECONDS`` (a rolled-back transaction leaves one for
  ever): it is settled once the event after it is that old by its time (``at``, the
  writing server's clock), or once this follower has waited that long for it by its
  own clock. SQLite has one writer and its rollbacks take their ids back, so there
  it meets no gaps but those retention leaves, which are old and settled at once.
- **Wake-ups.** Each stream is its own task reading from its own cursor in pages of
  up to ``EVENTS_LIMIT_MAX``; it sleeps until the server's ``Broadcast`` fires
  (``BroadcastingStore`` fires it after each write this server makes) or
  ``POLL_SECONDS`` pass (which covers writes by other servers of a PostgreSQL
  database). A slow consumer only makes its own task wait on its socket: no buffer
  is shared.
- **Since a time.** ``since_seconds`` starts a reader at the first event of the last
  N seconds (``cursor_since``): a binary search over the ids, whose times rise with
  them, of one indexed row a step (the dashboard's plot of the last hour).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from corral.model import Status, TransitionEvent
from corral.store.base import EVENTS_LIMIT_MAX, Store
from corral.store.sqlite import EVENT_ID_MAX

GAP_WAIT_SECONDS = 5.0
POLL_SECONDS = 1.0
KEEP_ALIVE_SECONDS = 15.0

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


def _age_seconds(at: str, now: float) -> float:
    return now - datetime.fromisoformat(at).replace(tzinfo=UTC).timestamp()


def horizon(
    cursor: int,
    ids: Sequence[tuple[int, str]],
    *,
    now: float,
    waited: dict[int, float] | None = None,
    clock: float = 0.0,
) -> int:
    """The highest id up to which every id after ``cursor`` is known: ``ids`` (those
    of every event after ``cursor``, lowest first, with their times) up to the first
    gap not settled. A gap is settled when the event after it is ``GAP_WAIT_SECONDS``
    old by ``now`` (wall clock), or, for a follower (``waited``: the gap's first id ->
    when it first saw it on its monotonic ``clock``), when it has waited that long."""
    expected = cursor + 1
    for event_id, at in ids:
        if event_id != expected and _age_seconds(at, now) < GAP_WAIT_SECONDS:
            if waited is None:
                return expected - 1
            since = waited.setdefault(expected, clock)
            if clock - since < GAP_WAIT_SECONDS:
                return expected - 1
        expected = event_id + 1
    return expected - 1


async def cursor_since(store: Store, seconds: float, *, now: float | None = None) -> int:
    """The cursor before the first event of the last ``seconds`` (by ``now``, this
    server's clock; the events' times are their writing servers'): 0 when every event
    kept is that recent, else the id of the newest older one.

    A binary search over the ids, each step the first event after an id
    (``event_ids_after(x, limit=1)``, one row by the primary key): about 2 log2 of the
    newest id in steps, whatever the table holds. It assumes times rise with ids,
    which holds but for writes racing in the same instant (or servers' clocks apart):
    an event a little out of order at the edge may be in or out."""
    cutoff = (time.time() if now is None else now) - seconds

    async def recent_after(cursor: int) -> bool:
        """True when no event after ``cursor`` is older than the cutoff (so none is,
        if times rise with ids)."""
        found = await store.event_ids_after(cursor, limit=1)
        return not found or _age_seconds(found[0][1], cutoff) <= 0

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


async def read_page(
    store: Store,
    cursor: int,
    *,
    owner: str | None,
    workload_ids: Sequence[str] = (),
    labels: Sequence[tuple[str, str]] = (),
    statuses: Sequence[Status] = (),
    limit: int = EVENTS_LIMIT_MAX,
    waited: dict[int, float] | None = None,
) -> tuple[list[TransitionEvent], int]:
    """The events after ``cursor`` that match, up to the horizon, and the cursor to
    read from next (past events that do not match, never past a gap not settled)."""
    ids = await store.event_ids_after(cursor, limit=EVENTS_LIMIT_MAX)
    until = horizon(cursor, ids, now=time.time(), waited=waited, clock=time.monotonic())
    if until == cursor:
        return [], cursor
    items = await store.list_events_after(
        cursor,
        owner=owner,
        workload_ids=workload_ids,
        labels=labels,
        statuses=statuses,
        limit=limit,
        until_id=until,
    )
    return items, (items[-1].id if len(items) == limit else until)


async def follow(
    store: Store,
    broadcast: Broadcast,
    cursor: int,
    *,
    owner: str | None,
    workload_ids: Sequence[str] = (),
    labels: Sequence[tuple[str, str]] = (),
    statuses: Sequence[Status] = (),
    keep_alive: float = KEEP_ALIVE_SECONDS,
) -> AsyncIterator[TransitionEvent | None]:
    """Every matching event after ``cursor``, in id order, until the broadcast is
    closed; ``None`` after ``keep_alive`` seconds without one (the stream's
    keep-alive comment)."""
    waited: dict[int, float] = {}
    quiet_since = time.monotonic()
    while not broadcast.closed:
        waiter = broadcast.waiter()
        items, next_cursor = await read_page(
            store,
            cursor,
            owner=owner,
            workload_ids=workload_ids,
            labels=labels,
            statuses=statuses,
            waited=waited,
        )
        for item in items:
            yield item
        if items:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= keep_alive:
            yield None
            quiet_since = time.monotonic()
        moved = next_cursor != cursor
        cursor = next_cursor
        for gap in [g for g in waited if g <= cursor]:
            del waited[gap]
        if moved:
            continue  # perhaps more to read now
        until_keep_alive = keep_alive - (time.monotonic() - quiet_since)
        await broadcast.wait(waiter, max(0.0, min(POLL_SECONDS, until_keep_alive)))


def sse_message(event: TransitionEvent) -> bytes:
    """One ``text/event-stream`` message."""
    return f"id: {event.id}\nevent: transition\ndata: {event.model_dump_json()}\n\n".encode()


KEEP_ALIVE_MESSAGE = b": keep-alive\n\n"
