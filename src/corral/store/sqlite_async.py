"""``AsyncSQLiteStore``: the async ``Store`` over the synchronous ``SQLiteStore``.

Each call runs the synchronous store's method where it costs least, and the event
loop never waits for SQLite's lock:

- **Writes** never wait for SQLite's lock on the event loop. The writes of at most
  ``INLINE_ROWS`` rows made during one turn of the loop (a create, the scheduler's
  claims, an exit's end, pending reasons, a kill) are written together at the end
  of the turn, in the order made, as one transaction with one commit
  (``SQLiteStore.write_together``: each in a savepoint of its own, so each caller
  gets its own result or error). That transaction is first tried inline, on the
  loop, taking the lock without waiting (``SQLiteStore.without_waiting``): SQLite
  has one writer anyway, and an uncontended transaction of a few rows costs less
  than the hop to a thread and back (measured, docs/postgres.md). When it would
  wait (another process or connection holds the lock), when the writer thread has
  work (so that writes stay in the order they were made), or on a fault of the
  database (then each write is made alone there, for its own answer), it runs on
  the one writer thread instead, which waits for the lock up to the busy timeout.
  A larger write always runs there, after the small writes of its turn made before
  it (written at once, not at the turn's end). Queued writes run back to back
  there, and ``CreateBatcher`` puts the creates made while a batch is written into
  the next one.
- **Reads** never wait for the write lock (WAL). Those that scan (counts, pages of
  more than ``INLINE_ROWS`` workloads: the scheduler's, or a client's asking for
  up to 1000, and the statuses of more than ``INLINE_IDS`` ids) run on a few reader
  threads (``READER_THREADS``), beside the writer and each other. The rest run
  inline: reads by key (a workload by id, its events, a key by its hash, a user's
  account) are primary-key probes of some microseconds, and a page of the API's
  usual size costs less inline than the hop to a thread and back, which on a busy
  machine is a thread to wake on each side (measured: +0.4 ms a page in process,
  +1 ms at p50 through HTTP; docs/postgres.md, "Phase 1: the async store,
  measured").

Each thread keeps its own ``sqlite3`` connection (``SQLiteStore`` opens one per
thread), so the guarantees of ``store/sqlite.py`` hold as they are: the same
transactions, the same faults raised as domain errors.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from corral.errors import CorralError
from corral.model import (
    Event,
    KeyRole,
    Status,
    Token,
    TransitionEvent,
    Workload,
    WorkloadBatchItem,
    WorkloadCreate,
)
from corral.store.base import (
    DELETE_BATCH_MAX,
    EVENTS_LIMIT_MAX,
    EVERY_EVENT,
    Account,
    BatchCreated,
    Created,
    EventFilter,
    NewWorkload,
    Page,
    Principal,
    WritesInFlight,
)
from corral.store.cluster import Fence, Lease, ServerInfo
from corral.store.sqlite import BUSY_TIMEOUT_MS, SQLiteStore, WriteWouldWait, deletable_params
from corral.threads import Threads, fail, succeed

INLINE_ROWS = 100
"""Writes of more rows (a large batch, many pending reasons), and pages of more
(``limit``), always run on a thread: the loop is not held for all of them."""
READER_THREADS = 3
"""Threads for large pages and counts (the machine's cores serve them; sqlite3 lets
go of the GIL while a statement runs)."""

INLINE_IDS = 500
"""``statuses`` of at most this many ids (one query) runs inline."""

P = ParamSpec("P")
T = TypeVar("T")


def _outcome(call: Callable[[], Any]) -> Any:
    """What ``call`` returns, or the exception it raises."""
    try:
        return call()
    except WriteWouldWait:
        raise
    except Exception as exc:
        return exc


_Turn = list[tuple[Callable[[], Any], "asyncio.Future[Any]"]]


def _settle(turn: _Turn, results: list[Any]) -> None:
    """Answer each caller of a turn's writes, its result or its error."""
    for (_, future), result in zip(turn, results, strict=True):
        if isinstance(result, Exception):
            fail(future, result)
        else:
            succeed(future, result)


def _settled(turn: _Turn, done: asyncio.Future[list[Any]]) -> None:
    """``_settle`` once the writer thread has written a turn's writes."""
    if done.cancelled():
        for _, future in turn:
            future.cancel()
    elif (exc := done.exception()) is not None:
        for _, future in turn:
            fail(future, exc)
    else:
        _settle(turn, done.result())


class AsyncSQLiteStore:
    """The ``Store`` on one SQLite file; see the module docstring."""

    def __init__(
        self,
        path: str | Path,
        *,
        migrate_schema: bool = True,
        background_checkpoints: bool = False,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        readers: int = READER_THREADS,
    ) -> None:
        self.sync = SQLiteStore(
            path,
            migrate_schema=migrate_schema,
            background_checkpoints=background_checkpoints,
            busy_timeout_ms=busy_timeout_ms,
        )
        """The synchronous store underneath (its own connection per thread)."""
        self._writer = Threads(1, "corral-sqlite-write")
        self._turn: _Turn = []
        """The small writes made during this loop turn (``_write_turn``)."""
        self._readers = Threads(readers, "corral-sqlite-read")

    @property
    def url(self) -> str:
        return self.sync.url

    @property
    def starts_at_create(self) -> bool:
        return self.sync.starts_at_create

    async def _write(self, rows: int, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``call`` (a write of ``rows`` rows) with the other small writes of this loop
        turn, in one transaction (``_write_turn``); a large one on the writer thread,
        after the small writes of this turn made before it, written now (see the
        module docstring)."""
        if rows > INLINE_ROWS:
            if self._turn:
                self._write_turn()  # (the call_soon made for it writes what comes next)
            return await self._writer.call(call, *args, **kwargs)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._turn:
            loop.call_soon(self._write_turn)
        self._turn.append((functools.partial(call, *args, **kwargs), future))
        return await future  # type: ignore[no-any-return]

    def _write_turn(self) -> None:
        """Write the small writes made during the loop turn that ends, in the order
        made, as one transaction (``SQLiteStore.write_together``): inline when the
        lock is free at once and the writer thread is idle, else on the writer thread
        (behind the writes it has, so that they stay in order). Each caller gets its
        own result or error; a fault of the database runs them one by one instead."""
        turn = [(call, future) for call, future in self._turn if not future.cancelled()]
        self._turn = []
        if not turn:
            return
        calls = [call for call, _ in turn]
        if self._writer.idle():
            try:
                if len(calls) == 1:
                    results = [self.sync.without_waiting(_outcome, calls[0])]
                else:
                    results = self.sync.without_waiting(self.sync.write_together, calls)
            except Exception:  # the lock is taken (or a fault: each alone, on the thread)
                pass
            else:
                _settle(turn, results)
                return
        try:
            written = self._writer.submit(functools.partial(self._together, calls))
        except RuntimeError as exc:  # the store is closed
            _settle(turn, [exc] * len(turn))
            return
        written.add_done_callback(functools.partial(_settled, turn))

    def _together(self, calls: list[Callable[[], Any]]) -> list[Any]:
        """On the writer thread: ``write_together``, or on a fault of the database,
        each call alone (each its own answer: the same fault, or its result if the
        fault was another's)."""
        if len(calls) > 1:
            try:
                return self.sync.write_together(calls)
            except Exception:
                pass  # rolled back whole
        return [_outcome(call) for call in calls]

    @property
    def path(self) -> Path:
        return self.sync.path

    # --- writes: inline, or the writer thread -------------------------------------------

    async def create_workload(
        self,
        spec: WorkloadCreate,
        *,
        owner: str,
        idempotency_key: str | None = None,
        actor: str | None = None,
    ) -> Created:
        return await self._write(
            1,
            self.sync.create_workload,
            spec,
            owner=owner,
            idempotency_key=idempotency_key,
            actor=actor,
        )

    async def create_workloads(self, items: Sequence[NewWorkload]) -> list[Created | CorralError]:
        return await self._write(len(items), self.sync.create_workloads, items)

    async def create_batch(
        self,
        specs: Sequence[WorkloadBatchItem],
        *,
        owner: str,
        max_running: int | None = None,
        idempotency_key: str | None = None,
        actor: str | None = None,
    ) -> BatchCreated:
        return await self._write(
            len(specs),
            self.sync.create_batch,
            specs,
            owner=owner,
            max_running=max_running,
            idempotency_key=idempotency_key,
            actor=actor,
        )

    async def update_workload_status(
        self,
        workload_id: str,
        status: Status,
        *,
        exit_code: int | None = None,
        reason: str | None = None,
        signal: str | None = None,
        actor: str | None = None,
        owner: str | None = None,
        node: str | None = None,
        fence: Fence | None = None,
    ) -> Workload:
        return await self._write(
            1,
            self.sync.update_workload_status,
            workload_id,
            status,
            exit_code=exit_code,
            reason=reason,
            signal=signal,
            actor=actor,
            owner=owner,
            node=node,
            fence=fence,
        )

    async def claim_workloads(
        self, workload_ids: Sequence[str], *, node: str, fence: Fence | None = None
    ) -> list[Workload]:
        return await self._write(
            len(workload_ids), self.sync.claim_workloads, workload_ids, node=node, fence=fence
        )

    async def delete_finished(
        self,
        older_than_seconds: float,
        *,
        owner: str | None = None,
        limit: int = DELETE_BATCH_MAX,
    ) -> list[str]:
        """``SQLiteStore.delete_finished`` in its two halves: the walk for the ids due
        on a reader thread, beside the writes; then those ids, checked again by key
        and deleted, under the write lock. With none due, no lock at all."""
        deletable_params(0.0, None, older_than_seconds, owner, limit)  # checked first
        now = time.time()
        due = await self._readers.call(
            self.sync.due_ids, now, older_than_seconds, owner=owner, limit=limit
        )
        if not due:
            return []
        return await self._write(
            limit, self.sync.delete_due, due, now, older_than_seconds, owner=owner, limit=limit
        )

    # --- servers and the scheduler lease (store/cluster.py) ---------------------------

    async def register_server(
        self, info: ServerInfo, *, live_seconds: float, replace_instance: str | None = None
    ) -> ServerInfo | None:
        return await self._write(
            1,
            self.sync.register_server,
            info,
            live_seconds=live_seconds,
            replace_instance=replace_instance,
        )

    async def heartbeat(
        self, name: str, instance: str, *, capacity: dict[str, Any] | None = None
    ) -> bool:
        return await self._write(1, self.sync.heartbeat, name, instance, capacity=capacity)

    async def list_servers(self) -> list[ServerInfo]:
        return self.sync.list_servers()

    async def get_lease(self) -> Lease:
        return self.sync.get_lease()

    async def acquire_lease(
        self,
        holder: str,
        instance: str,
        ttl_seconds: float,
        *,
        replace_instance: str | None = None,
    ) -> tuple[Fence, Lease] | None:
        return await self._write(
            1,
            self.sync.acquire_lease,
            holder,
            instance,
            ttl_seconds,
            replace_instance=replace_instance,
        )

    async def renew_lease(self, fence: Fence, ttl_seconds: float) -> bool:
        return await self._write(1, self.sync.renew_lease, fence, ttl_seconds)

    async def release_lease(self, fence: Fence) -> None:
        await self._write(1, self.sync.release_lease, fence)

    async def meta_value(self, key: str, default: str) -> str:
        return await self._write(1, self.sync.meta_value, key, default)

    async def listen(
        self, on_wake: Callable[[list[str] | None], None], on_kill: Callable[[str], None]
    ) -> None:
        """Nothing to listen to: one SQLite file has one scheduler, and the routes of
        its server tell it directly (docs/postgres.md)."""

    async def set_pending_reasons(self, reasons: Sequence[tuple[str, str]]) -> None:
        await self._write(len(reasons), self.sync.set_pending_reasons, reasons)

    async def create_api_key(
        self,
        *,
        user: str,
        key_sha256: str,
        admin: bool = False,
        role: KeyRole | None = None,
        unix_user: str | None = None,
        description: str | None = None,
    ) -> Token:
        return await self._write(
            1,
            self.sync.create_api_key,
            user=user,
            admin=admin,
            role=role,
            key_sha256=key_sha256,
            unix_user=unix_user,
            description=description,
        )

    async def revoke_api_key(self, key_id: str) -> Token:
        return await self._write(1, self.sync.revoke_api_key, key_id)

    # --- listings and counts: the reader threads, small pages inline ---------------------

    async def list_workloads(
        self,
        *,
        statuses: Sequence[Status] = (),
        labels: Sequence[tuple[str, str]] = (),
        limit: int = 50,
        cursor: str | None = None,
        owner: str | None = None,
        id_prefix: str | None = None,
        name: str | None = None,
    ) -> Page:
        call = functools.partial(
            self.sync.list_workloads,
            statuses=statuses,
            labels=labels,
            limit=limit,
            cursor=cursor,
            owner=owner,
            id_prefix=id_prefix,
            name=name,
        )
        if limit <= INLINE_ROWS:  # a page of the API's usual size: inline
            return call()
        return await self._readers.call(call)

    async def count_workloads(
        self,
        *,
        statuses: Sequence[Status] = (),
        labels: Sequence[tuple[str, str]] = (),
        owner: str | None = None,
        id_prefix: str | None = None,
        name: str | None = None,
    ) -> int:
        return await self._readers.call(
            self.sync.count_workloads,
            statuses=statuses,
            labels=labels,
            owner=owner,
            id_prefix=id_prefix,
            name=name,
        )

    async def ping(self) -> None:
        await self._readers.call(self.sync.ping)

    async def count_by_status(self, *, owner: str | None = None) -> dict[Status, int]:
        return await self._readers.call(self.sync.count_by_status, owner=owner)

    async def list_api_keys(self) -> list[Token]:
        return await self._readers.call(self.sync.list_api_keys)

    # --- reads by key: inline ---------------------------------------------------------

    async def get_workload(self, workload_id: str, *, owner: str | None = None) -> Workload:
        return self.sync.get_workload(workload_id, owner=owner)

    async def list_events(self, workload_id: str, *, owner: str | None = None) -> list[Event]:
        return self.sync.list_events(workload_id, owner=owner)

    async def list_events_after(
        self,
        after_id: int,
        matching: EventFilter = EVERY_EVENT,
        *,
        limit: int = EVENTS_LIMIT_MAX,
        until_id: int | None = None,
    ) -> list[TransitionEvent]:
        call = functools.partial(
            self.sync.list_events_after,
            after_id,
            matching,
            limit=limit,
            until_id=until_id,
        )
        if limit <= INLINE_ROWS:
            return call()
        return await self._readers.call(call)

    async def event_ids_after(self, after_id: int, *, limit: int = EVENTS_LIMIT_MAX) -> list[int]:
        return self.sync.event_ids_after(after_id, limit=limit)  # a primary-key range

    async def writes_in_flight(self) -> WritesInFlight | None:
        return None  # one writer, whose rollbacks take their ids back: gaps are deletions

    async def pending_ids(self, *, after: str | None = None, limit: int | None = None) -> list[str]:
        if limit is not None and limit <= INLINE_IDS:  # a page: an index range, inline
            return self.sync.pending_ids(after=after, limit=limit)
        return await self._readers.call(self.sync.pending_ids, after=after, limit=limit)

    async def queue_head(
        self, limit: int, *, owner: str | None = None
    ) -> tuple[list[Workload], int]:
        return await self._readers.call(self.sync.queue_head, limit, owner=owner)

    async def get_workloads(self, workload_ids: Sequence[str]) -> list[Workload]:
        if len(workload_ids) > INLINE_IDS:
            return await self._readers.call(self.sync.get_workloads, workload_ids)
        return self.sync.get_workloads(workload_ids)

    async def statuses(self, workload_ids: Sequence[str]) -> dict[str, Status]:
        if len(workload_ids) > INLINE_IDS:  # several queries: a reader's work
            return await self._readers.call(self.sync.statuses, workload_ids)
        return self.sync.statuses(workload_ids)

    async def find_api_key(self, key_sha256: str) -> Principal | None:
        return self.sync.find_api_key(key_sha256)

    async def account_of(self, user: str) -> Account:
        return self.sync.account_of(user)

    # ----------------------------------------------------------------------------------

    async def close(self) -> None:
        """Let the calls under way finish, then close every connection. The small
        writes of this loop turn are written first (inline, or queued on the writer
        thread ahead of its end), not left to the turn's end, by then too late."""
        if self._turn:
            self._write_turn()
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._writer.close()
        self._readers.close()
        self.sync.close()
