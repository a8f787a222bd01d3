"""The event feed's order on PostgreSQL, where a serial id is taken at insert and not
at commit: a follower never passes an id still in an open transaction (held open
here on purpose), and gives up on one after ``GAP_WAIT_SECONDS`` (a rollback)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from corral.events import GAP_WAIT_SECONDS, Broadcast, follow, horizon, read_page
from corral.ids import now_rfc3339
from corral.model import TransitionEvent, WorkloadCreate
from tests.blocking import BlockingStore
from tests.server import wait_until

SPEC = WorkloadCreate(command=["true"])


@pytest.fixture
def store_kind() -> str:
    return "postgresql"


def held_event(store: BlockingStore, workload_id: str, seq: int) -> psycopg.Connection:
    """An event of ``workload_id`` inserted (its id taken) in a transaction left
    open: commit or roll back the connection returned."""
    conn = psycopg.connect(store.url)
    conn.execute(
        "INSERT INTO events (workload_id, seq, type, from_status, to_status, at)"
        " VALUES (%s, %s, 'transition', 'pending', 'running', now())",
        (workload_id, seq),
    )
    return conn


def page_after(store: BlockingStore, cursor: int) -> tuple[list[TransitionEvent], int]:
    result: tuple[list[TransitionEvent], int] = store.run(
        read_page(store.inner, cursor, owner=None, waited={})
    )
    return result


def test_a_follower_waits_for_an_open_transactions_id_then_delivers_in_order(
    store: BlockingStore,
) -> None:
    first, _ = store.create_workload(SPEC, owner="alice")
    cursor = store.list_events_after(0)[-1].id
    holder = held_event(store, first.id, 2)  # takes cursor + 1, not committed
    try:
        later, _ = store.create_workload(SPEC, owner="bob")  # cursor + 2, committed
        committed = store.list_events_after(cursor)
        assert [(e.id, e.workload_id) for e in committed] == [(cursor + 2, later.id)]
        assert page_after(store, cursor) == ([], cursor)  # not past the open one

        async def two() -> list[TransitionEvent]:
            got: list[TransitionEvent] = []
            async for event in follow(store.inner, Broadcast(), cursor, owner=None):
                if event is not None:
                    got.append(event)
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


def test_a_rolled_back_id_is_given_up_on_after_the_gap_wait(store: BlockingStore) -> None:
    first, _ = store.create_workload(SPEC, owner="alice")
    cursor = store.list_events_after(0)[-1].id
    holder = held_event(store, first.id, 2)
    try:
        later, _ = store.create_workload(SPEC, owner="alice")
        assert page_after(store, cursor) == ([], cursor)
        holder.rollback()  # cursor + 1 will never be committed
    finally:
        holder.close()
    items, next_cursor = wait_until(
        lambda: (page := page_after(store, cursor))[0] and page,
        timeout=GAP_WAIT_SECONDS + 15,
    )
    assert [(e.id, e.workload_id) for e in items] == [(cursor + 2, later.id)]
    assert next_cursor == cursor + 2


def test_the_horizon_stops_at_the_first_gap_not_settled() -> None:
    now = datetime.now(UTC)
    fresh = now_rfc3339()
    old = (now - timedelta(seconds=GAP_WAIT_SECONDS + 1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    t = now.timestamp()
    assert horizon(10, [], now=t) == 10
    assert horizon(10, [(11, fresh), (12, fresh)], now=t) == 12
    assert horizon(10, [(11, fresh), (13, fresh)], now=t) == 11  # 12 may yet commit
    assert horizon(10, [(12, fresh)], now=t) == 10
    assert horizon(10, [(11, fresh), (13, old), (14, fresh)], now=t) == 14  # settled
    # A follower gives up on a gap it has waited for long enough by its own clock.
    waited: dict[int, float] = {}
    assert horizon(10, [(12, fresh)], now=t, waited=waited, clock=100.0) == 10
    assert waited == {11: 100.0}
    assert horizon(10, [(12, fresh)], now=t, waited=waited, clock=103.0) == 10
    assert horizon(10, [(12, fresh)], now=t, waited=waited, clock=105.0) == 12
