"""Group commit for creates made on one event loop.

Every create requested during one turn of the loop is written by one
``Store.create_workloads`` call, so concurrent submits share a transaction, its
commit and the pages it writes. Nothing waits for a batch to fill: the flush task
starts as soon as the loop has run the handlers that were ready, so a lone request
is written at once. While a batch is being written (the store awaits its database:
SQLite's writer thread, a PostgreSQL round trip), the creates requested meanwhile
queue up and the same task writes them next, as one batch: the busier the server,
the larger the batches. Each caller still gets its own result or its own error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from corral.model import WorkloadCreate
from corral.store.base import Created, NewWorkload, StartNow, Store

_Queued = tuple[NewWorkload, asyncio.Future[Created]]
Unanswered = Callable[[StartNow, Created | BaseException], None]


class CreateBatcher:
    """``await batcher.create(spec, …)``: ``Store.create_workload``, batched.

    A caller that goes away (cancelled) while its create is queued or written does
    not stop it: the item is still written. For an item that starts at once
    (``start``), whose resources the scheduler holds until it hears how the create
    ended, ``unanswered`` is then told instead of the caller (with the result, or
    the error; a ``CancelledError`` when it was never written)."""

    def __init__(self, store: Store, unanswered: Unanswered | None = None) -> None:
        self.store = store
        self.unanswered = unanswered
        self._queue: list[_Queued] = []
        self._flushing: asyncio.Task[None] | None = None

    def _tell(self, item: NewWorkload, result: Created | BaseException) -> None:
        if item.start is not None and self.unanswered is not None:
            self.unanswered(item.start, result)

    async def create(
        self,
        spec: WorkloadCreate,
        *,
        owner: str,
        idempotency_key: str | None = None,
        actor: str | None = None,
        start: StartNow | None = None,
    ) -> Created:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Created] = loop.create_future()
        item = NewWorkload(spec, owner, idempotency_key, actor, start)
        self._queue.append((item, future))
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush(), name="corral-create-batch")
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # answered, then cancelled
                self._tell(item, future.exception() or future.result())
            raise  # (else the future was cancelled: ``_write`` tells, or ``_flush``)

    async def _flush(self) -> None:
        """Write the queue, batch after batch, until it is empty."""
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._write(batch)
        except asyncio.CancelledError:  # the loop is going away: so are the callers
            for item, future in self._queue:
                future.cancel()
                self._tell(item, asyncio.CancelledError())
            self._queue = []
            raise
        finally:
            self._flushing = None

    async def _write(self, batch: list[_Queued]) -> None:
        try:
            results = await self.store.create_workloads([item for item, _ in batch])
        except asyncio.CancelledError:
            for item, future in batch:
                future.cancel()
                self._tell(item, asyncio.CancelledError())
            raise
        except Exception as exc:  # the whole transaction failed: every caller learns it
            for item, future in batch:
                if not future.done():
                    future.set_exception(exc)
                else:
                    self._tell(item, exc)
            return
        for (item, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller went away (client disconnected)
                self._tell(item, result)
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
