"""The event feed's order on PostgreSQL, where a serial id is taken at insert and not
at commit: a follower never passes an id still in an open transaction (held open
here on purpose), passes one at once when its transaction has ended (a rollback),
and gives up on one after ``GAP_WAIT_SECONDS`` at most."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from corral.events import (
    GAP_GRACE_SECONDS,
    GAP_WAIT_SECONDS,
    Broadcast,
    Gaps,
    follow,
    horizon,
    read_page,
)
from corral.model import Status, TransitionEvent, WorkloadCreate
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
    time.sleep(GAP_GRACE_SECONDS * 1.5)  # nothing holds the gap: not the whole wait
    items, next_cursor = page_after(store, cursor, gaps)
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
    # A writer may take its id a moment before it counts as in flight: 15's roster is
    # what is in flight at the first read after the grace; it settles once none of it is.
    assert horizon(11, [13, 14, 16], gaps, 105.0 + GAP_GRACE_SECONDS / 2, frozenset()) == 14
    assert gaps.recheck_in(15, 105.05) == GAP_GRACE_SECONDS / 2
    assert horizon(11, [13, 14, 16], gaps, 105.0 + GAP_GRACE_SECONDS + 1e-3, frozenset({9})) == 14
    assert horizon(11, [13, 14, 16], gaps, 105.2, frozenset({9, 10})) == 14  # 9 still there
    assert horizon(11, [13, 14, 16], gaps, 105.3, frozenset({10})) == 16  # 9 has ended
    assert gaps.recheck_in(15, 106.0) == 0.0  # settled: look again at once
    # where no write in flight can hold an id (SQLite), a gap is a deleted event
    assert horizon(20, [25, 30], Gaps(), 0.0, None) == 30


def test_a_settled_gap_covers_only_the_ids_missing_when_it_was_met() -> None:
    """Gap 11 met with 12 present, settled; then 12 is deleted (retention) while 13
    is being written and 14 commits: 12 and 13 are a gap of their own."""
    gaps = Gaps()
    assert horizon(10, [12], gaps, 100.0, frozenset()) == 10
    assert horizon(10, [12], gaps, 100.0 + GAP_GRACE_SECONDS + 1e-3, frozenset()) == 12
    writing = frozenset({7})
    assert horizon(10, [14], gaps, 101.0, writing) == 11  # not up to 14
    assert horizon(10, [14], gaps, 101.0 + GAP_GRACE_SECONDS + 1e-3, writing) == 11
    assert horizon(10, [14], gaps, 101.2, writing) == 11
    assert horizon(10, [13, 14], gaps, 101.3, frozenset()) == 14  # 13 committed


def test_a_holder_counted_in_flight_only_during_the_grace_holds_the_gap() -> None:
    """11's holder took its id before it had a transaction id (a plain submit's
    statement), and has one a moment later: it is in the gap's roster, which the
    writes in flight when the gap was met are not."""
    gaps = Gaps()
    assert horizon(10, [12], gaps, 100.0, frozenset()) == 10  # 11: id taken, no xid yet
    assert horizon(10, [12], gaps, 100.0 + GAP_GRACE_SECONDS / 2, frozenset({9})) == 10
    assert horizon(10, [12], gaps, 100.0 + GAP_GRACE_SECONDS + 1e-3, frozenset({9})) == 10
    assert horizon(10, [12], gaps, 100.5, frozenset({9})) == 10
    assert horizon(10, [11, 12], gaps, 100.6, frozenset()) == 12  # committed: delivered
    # a pager that reads only after the grace: the first read is the roster
    assert horizon(10, [12], Gaps(), 101.0, frozenset({9})) == 10


def test_old_gaps_settle_for_a_lagging_reader_when_no_new_id_arrives() -> None:
    busy, gaps = frozenset({3}), Gaps()  # one long write in flight
    assert horizon(499, [500], gaps, 0.0, busy) == 500
    assert horizon(9999, [10000], gaps, 0.5, busy) == 10000
    assert horizon(600, [700, 702], gaps, 60.0, busy) == 702


def test_a_gap_below_an_id_seen_long_ago_is_settled_as_met() -> None:
    """Old gaps (the events retention deleted) cost nothing once the server has seen
    the ids above them for ``GAP_WAIT_SECONDS``: their holders, if any, would have
    been in flight that long."""
    gaps = Gaps()
    busy = frozenset({3})
    assert horizon(100, [101], gaps, 0.0, busy) == 101  # seen at 0
    assert horizon(0, [5, 9, 60], gaps, 1.0, busy) == 0  # old holes, but not 5 s yet
    assert horizon(0, [5, 9, 60, 150], gaps, GAP_WAIT_SECONDS, busy) == 101  # 102+: not then
    assert horizon(101, [150], gaps, GAP_WAIT_SECONDS, busy) == 101


def test_the_gap_memory_is_bounded() -> None:
    """The gap met first is forgotten first, then met (and waited for) again."""
    busy = frozenset({5})
    small = Gaps(size=2)
    for gap, clock in ((1, 0.0), (3, 1.0), (5, 2.0)):
        small.settle(gap, gap + 1, clock, busy)
    assert len(small) == 2
    assert small.settle(3, 4, 6.0, busy) == 4 and small.settle(5, 6, 7.0, busy) == 6
    assert small.settle(1, 2, 7.0, busy) is None


def test_a_gap_whose_range_grew_by_a_deletion_holds_the_event_still_written(
    store: BlockingStore,
) -> None:
    """Reader A settles a rolled-back id; the events above it are deleted (a clean)
    while another event is being written: reader B, from below, must wait for it."""
    gaps = Gaps()  # the server's, shared by every page and stream
    w0, _ = store.create_workload(SPEC, owner="alice")
    cursor = store.list_events_after(0)[-1].id
    with psycopg.connect(store.url) as rolled_back:
        rolled_back.execute(INSERT_EVENT, (w0.id, 2, 0))
        rolled_back.rollback()
    x, _ = store.create_workload(SPEC, owner="alice")
    store.update_workload_status(x.id, Status.RUNNING, actor="scheduler")
    store.update_workload_status(x.id, Status.COMPLETED, exit_code=0, actor="scheduler")
    page_after(store, cursor, gaps)
    time.sleep(GAP_GRACE_SECONDS * 1.5)
    items, _ = page_after(store, cursor, gaps)  # reader A: the rolled-back id settled
    assert [e.workload_id for e in items] == [x.id] * 3
    holder = held_event(store, w0.id, 2)
    try:
        later, _ = store.create_workload(SPEC, owner="bob")
        assert x.id in store.delete_finished(0)
        items, next_cursor = page_after(store, cursor, gaps)  # reader B, from below
        in_flight = max(e.id for e in store.list_events_after(0)) - 1
        assert next_cursor < in_flight and later.id not in [e.workload_id for e in items]
        holder.commit()
        time.sleep(GAP_GRACE_SECONDS * 1.5)
        items, _ = page_after(store, next_cursor, gaps)
        assert [e.workload_id for e in items] == [w0.id, later.id]
    finally:
        holder.close()
