"""The event feed past the holes retention leaves (deleted workloads' events), on
each database: no write in flight holds them, so no reader waits for them."""

from __future__ import annotations

import asyncio
import time

from corral.events import GAP_GRACE_SECONDS, GAP_WAIT_SECONDS, Broadcast, Gaps, follow, read_page
from corral.model import Status, TransitionEvent, WorkloadCreate
from corral.store.base import EVERY_EVENT
from tests.blocking import BlockingStore

SPEC = WorkloadCreate(command=["true"])


def test_the_holes_of_deleted_events_are_read_past_at_once(store: BlockingStore) -> None:
    """Retention deletes events: the holes it leaves are no write in flight, so a page,
    and a stream from the start, read past every one of them at once."""
    made = [store.create_workload(SPEC, owner="alice")[0] for _ in range(6)]
    for w in made:
        store.update_workload_status(w.id, Status.RUNNING, actor="scheduler")
        store.update_workload_status(w.id, Status.COMPLETED, exit_code=0, actor="scheduler")
    store.create_workload(SPEC, owner="bob")  # the newest event's workload: kept
    deleted = set(store.delete_finished(0, limit=3))  # three workloads' events: holes
    assert len(deleted) == 3
    kept = [e.id for e in store.list_events_after(0) if e.workload_id not in deleted]
    gaps = Gaps()
    store.run(read_page(store.inner, 0, EVERY_EVENT, gaps=gaps))  # met: PostgreSQL's grace
    time.sleep(GAP_GRACE_SECONDS * 1.5)
    items, next_cursor = store.run(read_page(store.inner, 0, EVERY_EVENT, gaps=gaps))
    assert [e.id for e in items] == kept and next_cursor == kept[-1]

    async def all_of_them() -> list[TransitionEvent]:
        got: list[TransitionEvent] = []
        async for page in follow(store.inner, Broadcast(), 0, EVERY_EVENT, gaps=Gaps()):
            got += page
            if got and got[-1].id == kept[-1]:
                return got
        raise AssertionError("the stream ended")

    began = time.monotonic()
    got = asyncio.run_coroutine_threadsafe(all_of_them(), store.loop).result(timeout=30)
    assert [e.id for e in got] == kept
    assert time.monotonic() - began < GAP_WAIT_SECONDS  # not a wait per hole
