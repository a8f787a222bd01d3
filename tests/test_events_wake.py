"""The event feed's wake-up: a write this server makes wakes its followers at once
through the ``Broadcast`` (``BroadcastingStore``), not at their next poll."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from corral import events
from corral.events import Broadcast, BroadcastingStore, Gaps, follow
from corral.model import TransitionEvent, WorkloadCreate
from corral.store.base import EVERY_EVENT
from tests.blocking import BlockingStore


class _Reads:
    """``store``, telling when a follower has read the ids after its cursor."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.read = threading.Event()

    async def event_ids_after(self, *args: Any, **kwargs: Any) -> list[int]:
        ids: list[int] = await self.store.event_ids_after(*args, **kwargs)
        self.read.set()
        return ids

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_write_of_this_server_wakes_its_followers_without_waiting_for_the_poll(
    store: BlockingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "POLL_SECONDS", 3600.0)  # only the broadcast wakes them
    broadcast = Broadcast()
    writer = BroadcastingStore(store.inner, broadcast)
    reads = _Reads(store.inner)

    async def first_page() -> list[TransitionEvent]:
        pages = follow(reads, broadcast, 0, EVERY_EVENT, gaps=Gaps(), keep_alive=3600)  # type: ignore[arg-type]
        async for page in pages:
            if page:
                return page
        raise AssertionError("the stream ended")

    following = asyncio.run_coroutine_threadsafe(first_page(), store.loop)
    assert reads.read.wait(30)  # it found nothing and sleeps on the broadcast
    created, _ = store.run(writer.create_workload(WorkloadCreate(command=["true"]), owner="a"))
    page = following.result(timeout=30)  # not an hour
    assert [(e.workload_id, e.to_status) for e in page] == [(created.id, "pending")]
