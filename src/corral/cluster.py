"""This server among the servers of one database (docs/postgres.md, "Phase 2").

``Cluster.join()`` (before the server listens) takes the server's name in the
``servers`` table -- refused while a live server holds it -- and, on SQLite, the
scheduler lease at once: one SQLite file has one scheduler, and a second server
that would schedule is refused rather than left to fail the first one's workloads.
``Cluster.start()`` (the app's start) runs, as tasks: the lease (``Leadership``:
taking it starts or resumes the scheduler, losing it pauses it), a heartbeat (the
leader's publishes its capacity and the counts of ``/metrics`` in
``servers.capacity``; the others' read them), and on PostgreSQL the listener of
``corral_wake``/``corral_kill``. ``stop()`` releases the lease, so a standby takes
over at once, and stops the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

from corral.leader import ACQUIRE_SECONDS, Leadership
from corral.scheduler import Scheduler
from corral.store import Store
from corral.store.cluster import Fence, Lease, ServerInfo

log = logging.getLogger(__name__)

PG_POLL_SECONDS = 2.0
"""On PostgreSQL the leader's safety poll also stands in for a missed notification."""


_SQLITE_ONE_SCHEDULER = (
    "; one SQLite database has one scheduler: run this one with --scheduler never to"
    " serve the API only"
)


class ClusterError(Exception):
    """This server cannot join: the message says why and what to do."""


def default_name() -> str:
    return socket.gethostname().split(".")[0] or "corral"


def new_instance() -> str:
    """A server process's instance id (the store's sessions are named by it)."""
    return secrets.token_hex(8)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Cluster:
    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        *,
        name: str,
        url: str | None,
        lease_seconds: float,
        schedule: bool,
        instance: str | None = None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.shared = not store.url.startswith("sqlite:")
        self.info = ServerInfo(
            name=name,
            instance=instance or new_instance(),
            host=socket.gethostname(),
            pid=os.getpid(),
            url=url,
        )
        self.lease_seconds = lease_seconds
        self.schedule = schedule and scheduler.executor is not None
        self.leadership = Leadership(
            store,
            name=name,
            instance=self.info.instance,
            ttl_seconds=lease_seconds,
            on_lead=self._on_lead,
            on_lose=self._on_lose,
        )
        scheduler.role = self.leadership
        scheduler.server = self
        self.leader: str | None = None
        """The scheduling server's name, as last read (None: none)."""
        self.publish: Callable[[], dict[str, Any]] = dict
        """More for the heartbeat of the scheduling server to publish beside its
        capacity (the app sets it: the counts ``/metrics`` serves elsewhere)."""
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        return self.info.name

    async def join(self) -> None:
        info = self.info
        held = await self.store.register_server(info, live_seconds=self.lease_seconds)
        if held is not None and held.host == info.host and not pid_alive(held.pid):
            held = await self.store.register_server(
                info, live_seconds=self.lease_seconds, replace_instance=held.instance
            )
        if held is not None:
            more = _SQLITE_ONE_SCHEDULER if self.schedule and not self.shared else ""
            raise ClusterError(
                f"a server named {held.name} runs on {held.host} (pid {held.pid}) with this"
                f" database; give this one another name (--name){more}"
            )
        lease = await self.store.get_lease()
        if lease.holder == info.name and not lease.expired:
            # This name's previous process, which is gone (the name was free): its lease
            # is this one's to take at once, as a restart's.
            self.leadership.replace_instance = lease.instance
        self.leader = None if lease.expired else lease.holder
        if self.schedule and not self.shared:
            got = await self.store.acquire_lease(
                info.name,
                info.instance,
                self.lease_seconds,
                replace_instance=self.leadership.replace_instance,
            )
            if got is None:
                raise ClusterError(
                    f"the scheduler of this database runs in server {lease.holder}"
                    + _SQLITE_ONE_SCHEDULER
                )
            await self.store.release_lease(got[0])  # taken for real by start()
            self.leadership.replace_instance = info.instance

    async def start(self) -> None:
        """Run the lease, the heartbeat and the listener (the app's start)."""
        loop = asyncio.get_running_loop()
        if self.schedule:
            await self.leadership.try_acquire()
            self._tasks.append(loop.create_task(self.leadership.run(), name="corral-lease"))
        self._tasks.append(loop.create_task(self._heartbeat(), name="corral-heartbeat"))
        if self.shared:
            self._tasks.append(loop.create_task(self._listen(), name="corral-listen"))

    async def stop(self) -> None:
        await self.leadership.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._started:
            await self.scheduler.stop()

    # --- the lease -------------------------------------------------------------------

    async def _on_lead(self, fence: Fence, before: Lease) -> None:
        self.leader = self.name
        if before.holder not in (None, self.name):
            log.warning("taking over scheduling from server %s", before.holder)
        if not self._started:
            self._started = True
            await self.scheduler.start()
        else:
            await self.scheduler.resume()

    async def _on_lose(self) -> None:
        if self._started:
            await self.scheduler.pause()

    async def _heartbeat(self) -> None:
        """Say this server is alive (and who leads, as last read), every second on a
        standby, every third of the lease on the leader."""
        while True:
            try:
                capacity = self._capacity() if self.leadership.fence is not None else None
                if not await self.store.heartbeat(self.name, self.info.instance, capacity=capacity):
                    log.error("another process took this server's name %s", self.name)
                lease = await self.store.get_lease()
                self.leader = None if lease.expired else lease.holder
                if self.leadership.fence is None and self.leader is not None:
                    for server in await self.store.list_servers():
                        if server.name == self.leader:
                            self.scheduler.published = server.capacity
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat: %s", exc)
            await asyncio.sleep(
                self.lease_seconds / 3 if self.leadership.fence is not None else ACQUIRE_SECONDS
            )

    def _capacity(self) -> dict[str, Any]:
        cap, free = self.scheduler.capacity(), self.scheduler.free()
        return {
            "capacity": {"cpus": cap.cpus, "memory_mb": cap.memory_mb, "gpus": cap.gpus},
            "free": {"cpus": free.cpus, "memory_mb": free.memory_mb, "gpus": free.gpus},
            **self.publish(),
        }

    # --- notifications (PostgreSQL) --------------------------------------------------

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()

        def run(work: Any) -> None:
            task = loop.create_task(work)
            pending.add(task)
            task.add_done_callback(pending.discard)
            task.add_done_callback(_log_failure)

        def on_wake(ids: list[str] | None) -> None:
            run(self.scheduler.wake(ids))

        def on_kill(workload_id: str) -> None:
            run(self.scheduler.killed(workload_id))

        await self.store.listen(on_wake, on_kill)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("acting on a notification failed: %s", task.exception())
