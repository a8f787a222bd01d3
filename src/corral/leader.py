"""Who schedules: one server at a time holds the scheduler lease (docs/postgres.md,
"Phase 2").

``Leadership.run()`` is a task of every server that may schedule
(``--scheduler auto``): while it is not the leader it tries to take the lease every
``ACQUIRE_SECONDS``; once it is, it renews it every ``ttl / 3`` by the database clock.
Taking it calls ``on_lead(fence, before)`` (the scheduler starts: adopts or fails
the running workloads, fills its queue); losing it -- a renewal refused, a fence
refused (``lost()``), or no renewal confirmed before the deadline -- calls
``on_lose()`` (the scheduler stops claiming and launching; processes keep running).

``valid()`` answers from this process's monotonic clock alone: the deadline is the
moment the last confirmed renewal was *sent* plus ``ttl`` minus ``MARGIN_SECONDS``,
which is before the database's own expiry. So a leader stopped past its lease (a
SIGSTOP, a swapped-out host) that wakes up knows at once that it may not start
anything, before any round trip; the database's fence refuses its claims anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from corral.store.cluster import Fence, Lease

log = logging.getLogger(__name__)

ACQUIRE_SECONDS = 1.0
MARGIN_SECONDS = 1.0
DEFAULT_LEASE_SECONDS = 15.0


class Leadership:
    def __init__(
        self,
        store: Any,
        *,
        name: str,
        instance: str,
        ttl_seconds: float = DEFAULT_LEASE_SECONDS,
        on_lead: Callable[[Fence, Lease], Awaitable[None]],
        on_lose: Callable[[], Awaitable[None]],
        replace_instance: str | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.instance = instance
        self.ttl = ttl_seconds
        self._on_lead = on_lead
        self._on_lose = on_lose
        self.replace_instance = replace_instance
        """A dead instance whose lease this one may take at once (a restart)."""
        self.fence: Fence | None = None
        self._deadline = 0.0
        self._changed = asyncio.Event()
        self._stopping = False

    def valid(self) -> bool:
        """This server holds the lease, as far as its own clock can tell."""
        return self.fence is not None and time.monotonic() < self._deadline

    def lost(self) -> None:
        """A fenced write was refused: the lease is gone; step down now."""
        if self.fence is not None:
            self._deadline = 0.0
            self._changed.set()

    async def run(self) -> None:
        while not self._stopping:
            self._changed.clear()
            try:
                if self.fence is None:
                    await self._try_acquire()
                else:
                    await self._renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database unreachable: try again soon
                log.warning("scheduler lease: %s", exc)
            if self.fence is not None and not self.valid():
                await self._step_down("its lease expired before a renewal was confirmed")
            wait = ACQUIRE_SECONDS if self.fence is None else self.ttl / 3
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)

    async def try_acquire(self) -> None:
        """One attempt to take the lease now (a server's start: it schedules from its
        first request when no one else does); errors are logged, ``run`` retries."""
        try:
            await self._try_acquire()
        except Exception as exc:
            log.warning("scheduler lease: %s", exc)

    async def _try_acquire(self) -> None:
        sent = time.monotonic()
        got = await self.store.acquire_lease(
            self.name, self.instance, self.ttl, replace_instance=self.replace_instance
        )
        if got is None:
            return
        self.fence, before = got
        self._deadline = sent + self.ttl - MARGIN_SECONDS
        log.info("this server schedules now (lease epoch %d)", self.fence.epoch)
        await self._on_lead(self.fence, before)

    async def _renew(self) -> None:
        assert self.fence is not None
        sent = time.monotonic()
        if not self.valid():
            return  # run() steps down
        if await self.store.renew_lease(self.fence, self.ttl):
            self._deadline = sent + self.ttl - MARGIN_SECONDS
        else:
            await self._step_down("the lease was taken by another server, or expired")

    async def _step_down(self, why: str) -> None:
        if self.fence is None:
            return
        log.warning("this server stops scheduling: %s", why)
        self.fence = None
        self._deadline = 0.0
        await self._on_lose()

    async def stop(self) -> None:
        """Stop taking or renewing the lease, and release it if held (a clean stop:
        a standby takes over at once)."""
        self._stopping = True
        self._changed.set()
        fence, self.fence = self.fence, None
        if fence is not None:
            try:
                await self.store.release_lease(fence)
            except Exception as exc:
                log.warning("could not release the scheduler lease: %s", exc)
