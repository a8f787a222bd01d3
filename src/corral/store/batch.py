"""Group commit for creates made on one event loop.

Every create requested during one turn of the loop is written by one
``Store.create_workloads`` call, so concurrent submits share a transaction, its
commit and the pages it writes. Nothing waits for a batch to fill: the flush runs as
soon as the loop has run the handlers that were ready, so a lone request is written
at once. Each caller still gets its own result or its own error.
"""

from __future__ import annotations

import asyncio

from corral.model import WorkloadCreate
from corral.store.base import Created, NewWorkload, Store


class CreateBatcher:
    """``await batcher.create(spec, …)``: ``Store.create_workload``, batched."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: list[tuple[NewWorkload, asyncio.Future[Created]]] = []

    async def create(
        self,
        spec: WorkloadCreate,
        *,
        owner: str,
        idempotency_key: str | None = None,
        actor: str | None = None,
    ) -> Created:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Created] = loop.create_future()
        self._queue.append((NewWorkload(spec, owner, idempotency_key, actor), future))
        if len(self._queue) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        try:
            results = self.store.create_workloads([item for item, _ in batch])
        except Exception as exc:  # the whole transaction failed: every caller learns it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller went away (client disconnected)
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
