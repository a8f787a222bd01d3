"""``GET /v1/events?since_seconds=N``: the feed from the first event of the last N
seconds (``corral.events.cursor_since``, a binary search over the ids), on each
database; ``after`` and ``Last-Event-ID`` (a reconnect) still come first."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from corral.events import cursor_since
from corral.model import TransitionEvent, WorkloadBatchItem, WorkloadCreate
from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore

SPEC = WorkloadCreate(command=["true"])
ITEM = WorkloadBatchItem(command=["true"])


def seconds_of(at: str) -> float:
    return datetime.fromisoformat(at).replace(tzinfo=UTC).timestamp()


def since(store: BlockingStore, seconds: float, now: float) -> int:
    cursor: int = store.run(cursor_since(store.inner, seconds, now=now))
    return cursor


def all_events(store: BlockingStore) -> list[TransitionEvent]:
    events: list[TransitionEvent] = []
    while page := store.list_events_after(events[-1].id if events else 0, limit=500):
        events += page
    return events


def test_the_cursor_is_the_newest_event_older_than_the_cutoff(store: BlockingStore) -> None:
    assert since(store, 60, time.time()) == 0  # no event at all
    for i in range(70):
        store.create_workload(SPEC, owner=f"user{i % 3}")
        if i % 7 == 0:
            store.create_batch([ITEM, ITEM], owner="batcher")  # events sharing a time
    events = all_events(store)
    assert len(events) == 70 + 10 * 2
    assert since(store, 60, seconds_of(events[-1].at)) == 0  # every one is recent
    assert since(store, 0, seconds_of(events[-1].at) + 1) == events[-1].id  # none is
    for event in events:
        cutoff = seconds_of(event.at)
        older = [e.id for e in events if seconds_of(e.at) < cutoff]
        # The last N seconds before `now`: the same cutoff, said either way.
        assert since(store, 0, cutoff) == (older[-1] if older else 0), event
        assert since(store, 10.0, cutoff + 10.0) == (older[-1] if older else 0), event


def test_since_seconds_starts_the_page_and_the_stream_unless_resuming(
    store: BlockingStore, api: SyncASGIClient
) -> None:
    for _ in range(3):
        assert api.post("/v1/workloads", json={"command": ["true"]}).status_code == 201
    ids = [e.id for e in all_events(store)]
    everything = api.get("/v1/events", params={"since_seconds": 3600}).json()
    assert [e["id"] for e in everything["items"]] == ids
    nothing = api.get("/v1/events", params={"since_seconds": 0}).json()
    assert nothing["items"] == [] and nothing["last_id"] == ids[-1]
    # after= and Last-Event-ID (a reconnect) win over since_seconds.
    resumed = api.get("/v1/events", params={"since_seconds": 0, "after": ids[0]}).json()
    assert [e["id"] for e in resumed["items"]] == ids[1:]
    resumed = api.get(
        "/v1/events", params={"since_seconds": 0}, headers={"Last-Event-ID": str(ids[1])}
    ).json()
    assert [e["id"] for e in resumed["items"]] == ids[2:]
    for bad in ("-1", "nan", "soon", str(10**10)):
        response = api.get("/v1/events", params={"since_seconds": bad})
        assert response.status_code == 422, (bad, response.text)
        assert "since_seconds" in response.text
