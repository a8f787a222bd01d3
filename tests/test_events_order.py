"""The event feed's order on PostgreSQL, where a serial id is taken at insert and not
at commit: a follower never passes an id still in an open transaction (held open
here on purpose), passes one at once when its transaction has ended (a rollback),
and gives up on one after ``GAP_WAIT_SECONDS`` at most."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from corral.events import GAP_WAIT_SECONDS, Broadcast, Gaps, follow, horizon, read_page
from corral.model import TransitionEvent, WorkloadCreate
from corral.store.base import EVERY_EVENT
from tests.blocking import BlockingStore

SPEC = WorkloadCreate(command=["true"])


@pytest.fixture
def store_kind() -> str:
    return "postgresql"


INSERT_EVENT = (
    "INSERT INTO events (workload_id, seq, type, from_status, to_status, at)"
    " VALUES (%s, %s, 'transition', 'pending', 'running', now() - %s * interval '1 second')"
)


def held_event(store: BlockingStore, workload_id: str, seq: int) -> psycopg.Connection:
    """An event of ``workload_id`` inserted (its id taken) in a transaction left
    open: commit or roll back the connection returned."""
    conn = psycopg.connect(store.url)
    conn.execute(INSERT_EVENT, (workload_id, seq, 0))
    return conn


@pytest.fixture
def gaps() -> Gaps:
    """The test's memory of the gaps met (a server's app has one, for its database)."""
    return Gaps()


def page_after(store: BlockingStore, cursor: int, gaps: Gaps) -> tuple[list[TransitionEvent], int]:
    """A JSON page's read."""
    result: tuple[list[TransitionEvent], int] = store.run(
        read_page(store.inner, cursor, EVERY_EVENT, gaps=gaps)
    )
    return result


def test_a_follower_waits_for_an_open_transactions_id_then_delivers_in_order(
    store: BlockingStore, gaps: Gaps
) -> None:
    first, _ = store.create_workload(SPEC, owner="alice")
    cursor = store.list_events_after(0)[-1].id
    holder = held_event(store, first.id, 2)  # takes cursor + 1, not committed
    try:
        later, _ = store.create_workload(SPEC, owner="bob")  # cursor + 2, committed
        committed = store.list_events_after(cursor)
        assert [(e.id, e.workload_id) for e in committed] == [(cursor + 2, later.id)]
        assert page_after(store, cursor, gaps) == ([], cursor)  # not past the open one

        async def two() -> list[TransitionEvent]:
            got: list[TransitionEvent] = []
            async for page in follow(store.inner, Broadcast(), cursor, EVERY_EVENT, gaps=gaps):
                got += page
                if len(got) == 2:
                    return got
            raise AssertionError("the stream ended")

        following = asyncio.run_coroutine_threadsafe(two(), store.loop)
        holder.commit()
        got = following.result(timeout=30)
        assert [(e.id, e.workload_id, e.seq) for e in got] == [
            (cursor + 1, first.id, 2),
            (cursor + 2, later.id, 1),
        ]
    finally:
        holder.close()


def test_a_rolled_back_id_is_passed_once_its_transaction_has_ended(
    store: BlockingStore, gaps: Gaps
) -> None:
    first, _ = store.create_workload(SPEC, owner="alice")
    cursor = store.list_events_after(0)[-1].id
    holder = held_event(store, first.id, 2)
    try:
        later, _ = store.create_workload(SPEC, owner="alice")
        assert page_after(store, cursor, gaps) == ([], cursor)
        holder.rollback()  # cursor + 1 will never be committed
    finally:
        holder.close()
    began = time.monotonic()
    items, next_cursor = page_after(store, cursor, gaps)  # no wait: nothing holds the gap
    assert time.monotonic() - began < GAP_WAIT_SECONDS
    assert [(e.id, e.workload_id) for e in items] == [(cursor + 2, later.id)]
    assert next_cursor == cursor + 2


def test_an_event_dated_in_the_past_by_its_writer_does_not_settle_the_gap_below_it(
    store: BlockingStore, gaps: Gaps
) -> None:
    """A server whose clock is 6 s behind writes an event after one still in an open
    transaction: the gap is waited for by this server's clock, not passed at once."""
    first, _ = store.create_workload(SPEC, owner="alice")
    cursor = store.list_events_after(0)[-1].id
    holder = held_event(store, first.id, 2)  # cursor + 1, not committed
    try:
        with psycopg.connect(store.url, autocommit=True) as behind:
            behind.execute(INSERT_EVENT, (first.id, 3, GAP_WAIT_SECONDS + 1))  # cursor + 2
        assert page_after(store, cursor, gaps) == ([], cursor)
        holder.commit()
        items, next_cursor = page_after(store, cursor, gaps)
        assert [(e.id, e.seq) for e in items] == [(cursor + 1, 2), (cursor + 2, 3)]
        assert next_cursor == cursor + 2
    finally:
        holder.close()


def test_the_horizon_stops_at_the_first_gap_not_settled() -> None:
    busy = frozenset({5, 8})  # transactions in progress that have written
    gaps = Gaps()
    assert horizon(10, [], gaps, 100.0, busy) == 10
    assert horizon(10, [11, 12], gaps, 100.0, busy) == 12
    assert len(gaps) == 0
    assert horizon(10, [11, 13], gaps, 100.0, busy) == 11  # 12 may yet commit
    assert horizon(10, [12], gaps, 100.0, busy) == 10  # 11 too, met at 100
    assert horizon(10, [11, 13], gaps, 103.0, busy) == 11
    # Met by another page (the memory is shared): settled by when first met, by this
    # process's clock, whatever the database says.
    assert horizon(10, [12], gaps, 105.0, busy) == 12
    assert horizon(11, [13, 14, 16], gaps, 105.0, busy) == 14  # 12 settled, 15 met now
    # every write in flight when 15 was met (5, 8) has ended: settled at once
    assert horizon(11, [13, 14, 16], gaps, 105.1, frozenset({9, 12})) == 16
    # where no write in flight can hold an id (SQLite), a gap is a deleted event
    assert horizon(20, [25, 30], Gaps(), 0.0, None) == 30
    # Bounded: the gap met first is forgotten first, then met (and waited for) again.
    small = Gaps(size=2)
    for gap, clock in ((1, 0.0), (3, 1.0), (5, 2.0)):
        small.settled(gap, clock, busy)
    assert len(small) == 2
    assert small.settled(3, 6.0, busy) and small.settled(5, 7.0, busy)
    assert not small.settled(1, 7.0, busy)
