"""The event feed's order on PostgreSQL, where a serial id is taken at insert and not
at commit: a follower never passes an id still in an open transaction (held open
here on purpose), and gives up on one after ``GAP_WAIT_SECONDS`` (a rollback)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from corral.events import GAP_WAIT_SECONDS, Broadcast, Gaps, follow, horizon, read_page
from corral.model import TransitionEvent, WorkloadCreate
from corral.store.base import EVERY_EVENT
from tests.blocking import BlockingStore
from tests.server import wait_until

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


def test_a_rolled_back_id_is_given_up_on_after_the_gap_wait(
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
    items, next_cursor = wait_until(
        lambda: (page := page_after(store, cursor, gaps))[0] and page,
        timeout=GAP_WAIT_SECONDS + 15,
    )
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


def test_the_horizon_stops_at_the_first_gap_not_settled_by_this_process_clock() -> None:
    gaps = Gaps()
    assert horizon(10, [], gaps, 100.0) == 10
    assert horizon(10, [11, 12], gaps, 100.0) == 12
    assert len(gaps) == 0
    assert horizon(10, [11, 13], gaps, 100.0) == 11  # 12 may yet commit
    assert horizon(10, [12], gaps, 100.0) == 10  # 11 too, met at 100
    assert horizon(10, [11, 13], gaps, 103.0) == 11
    # Met by another page (the memory is shared): settled by when first met.
    assert horizon(10, [12], gaps, 105.0) == 12
    assert horizon(11, [13, 14, 16], gaps, 105.0) == 14  # 12 settled, 15 met now
    assert horizon(11, [13, 14, 16], gaps, 110.0) == 16
    # Bounded: the gap met first is forgotten first, then met (and waited for) again.
    small = Gaps(size=2)
    for gap, clock in ((1, 0.0), (3, 1.0), (5, 2.0)):
        small.settled(gap, clock)
    assert len(small) == 2
    assert small.settled(3, 6.0) and small.settled(5, 7.0)
    assert not small.settled(1, 7.0)
