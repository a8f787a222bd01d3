"""Retention: finished workloads deleted past an age, with their events and logs
(docs/operations.md, "Retention").

- **Rows.** ``Store.delete_finished`` deletes up to ``DELETE_BATCH_MAX`` terminal
  workloads finished before the cutoff per transaction (their labels, events,
  idempotency keys and dependency rows by cascade); ``delete`` calls it again, after
  ``BATCH_PAUSE_SECONDS``, while batches come back full, so no transaction holds
  SQLite's write lock (or PostgreSQL's row locks) for long and other writes go in
  between. A workload that a pending or running one depends on is kept until that
  one has ended: the scheduler kills a dependant whose dependency does not exist.
- **Who.** With ``corral serve --retain-finished AGE``, a task (``run_forever``) runs
  once at the start and then every ``interval`` (half the age, between
  ``min_interval`` and ``RUN_EVERY_SECONDS``). Rows are deleted by the scheduling
  server (``deletes_rows``; also by a server that cannot schedule when no server
  does, e.g. ``--executor none``); every server with the flag then sweeps its own
  logs directory. ``POST /v1/workloads/clean`` (``clean``) deletes on whichever
  server answers it, and removes the logs of what it deleted from that server's
  directory; other servers' copies go at their next sweep.
- **Logs.** A log is ``<logs>/<id>.log`` (a capped one may leave ``<id>.log.ring``
  and ``<id>.log.ring.tmp`` beside it: ``logs.remove_log`` removes all three),
  written by the server that ran the workload. ``sweep_logs`` lists the directory
  *first*, then asks the database which of those ids still exist, and removes the
  others: a log is created only when its workload starts, after its row was
  committed, so an id listed and then not found was deleted (ids are never reused).
  It looks only at ids made before the cutoff (``ids.id_ceiling``: a workload just
  created is never even asked about). Neither it nor a clean removes the log of a
  workload whose process this server still runs (a killed one still stopping: its
  row may already be gone); the scheduler removes that one when the process is over
  and its end finds no row (``Scheduler._record``). Both orders are covered: the
  scheduler lets go of the process before it writes the end, a clean deletes the
  rows before it asks whether the process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from corral.ids import id_ceiling, looks_like_id
from corral.logs import RING_SUFFIX, TMP_SUFFIX, remove_log
from corral.store import Store
from corral.store.base import DELETE_BATCH_MAX

if TYPE_CHECKING:
    from corral.cluster import Cluster
    from corral.scheduler import Scheduler

log = logging.getLogger(__name__)

RUN_EVERY_SECONDS = 300.0
"""The longest time between two runs of the task."""
MIN_INTERVAL_SECONDS = 30.0
"""The shortest (``CORRAL_RETENTION_MIN_INTERVAL_SECONDS``, for tests: see
docs/operations.md)."""
BATCH_PAUSE_SECONDS = 0.05
"""Between two batches of deletes: the other writers' turn."""
SWEEP_CHUNK = 500
"""Log ids asked of the database at once."""
LOG_SUFFIX = ".log"


def interval_for(retain_seconds: float, min_interval: float = MIN_INTERVAL_SECONDS) -> float:
    """How often the task runs for ``--retain-finished retain_seconds``: half the age
    (a workload lives at most 1.5 times it), within ``[min_interval,
    RUN_EVERY_SECONDS]`` (``min_interval`` wins over the maximum)."""
    return max(min(retain_seconds / 2, RUN_EVERY_SECONDS), min_interval)


def scheduling_server(cluster: Cluster, store: Store) -> Callable[[], Awaitable[bool]]:
    """``Retention.deletes_rows`` for a server of ``cluster``: it holds the scheduler
    lease, or it cannot schedule and no server holds the lease."""

    async def deletes_rows() -> bool:
        if cluster.leadership.valid():
            return True
        if cluster.schedule:
            return False  # a standby: the scheduling server deletes (this one, once it leads)
        return (await store.get_lease()).expired

    return deletes_rows


async def _always() -> bool:
    return True


class Retention:
    """Deletes finished workloads and their logs; see the module docstring.

    ``logs_dir`` is this server's logs directory; ``retain_seconds`` the age of
    ``--retain-finished`` (None: no task, ``clean`` only); ``deletes_rows`` says
    whether this server deletes rows on the task's run (default: always)."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        logs_dir: Path,
        *,
        retain_seconds: float | None = None,
        min_interval: float = MIN_INTERVAL_SECONDS,
        deletes_rows: Callable[[], Awaitable[bool]] = _always,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.logs_dir = logs_dir
        self.retain_seconds = retain_seconds
        self.interval = interval_for(retain_seconds, min_interval) if retain_seconds else None
        self.deletes_rows = deletes_rows
        self._failing = False

    # --- once ---------------------------------------------------------------------------

    async def delete(
        self,
        older_than_seconds: float,
        *,
        owner: str | None = None,
        logs: bool = False,
    ) -> list[str]:
        """Delete every finished workload (``owner``'s, or everyone's) older than
        ``older_than_seconds``, batch after batch (with ``logs``, each batch's logs
        from this server's directory once it is committed); the ids deleted. A store
        fault propagates, with the batches before it done."""
        return (await self._delete(older_than_seconds, owner=owner, logs=logs))[0]

    async def _delete(
        self, older_than_seconds: float, *, owner: str | None, logs: bool
    ) -> tuple[list[str], int]:
        """``delete``: the ids deleted, and how many logs were removed."""
        deleted: list[str] = []
        removed = 0
        while True:
            batch = await self.store.delete_finished(
                older_than_seconds, owner=owner, limit=DELETE_BATCH_MAX
            )
            deleted += batch
            if logs:
                removed += await self._remove_logs(batch)
            if len(batch) < DELETE_BATCH_MAX:
                return deleted, removed
            await asyncio.sleep(BATCH_PAUSE_SECONDS)

    async def clean(self, older_than_seconds: float, *, owner: str | None = None) -> int:
        """``POST /v1/workloads/clean``: ``delete`` with the logs this server keeps;
        how many workloads were deleted."""
        return len(await self.delete(older_than_seconds, owner=owner, logs=True))

    async def sweep_logs(self, older_than_seconds: float = 0.0) -> int:
        """Remove this server's logs of workloads no longer in the database, among
        those whose id was made more than ``older_than_seconds`` ago by this server's
        clock; how many were removed (the race it avoids: module docstring)."""
        ceiling = id_ceiling(time.time() - older_than_seconds)
        names = await asyncio.to_thread(_log_ids, self.logs_dir, ceiling)  # listed first
        removed = 0
        for i in range(0, len(names), SWEEP_CHUNK):
            chunk = names[i : i + SWEEP_CHUNK]
            existing = await self.store.statuses(chunk)  # then asked
            removed += await self._remove_logs([n for n in chunk if n not in existing])
        return removed

    async def _remove_logs(self, workload_ids: Sequence[str]) -> int:
        """Remove the logs of ``workload_ids`` (deleted workloads) from this server's
        directory, but those whose process this server still runs (the scheduler
        removes those once it is over); how many were there."""
        doomed = [w for w in workload_ids if not self.scheduler.is_active(w)]
        if not doomed:
            return 0
        return await asyncio.to_thread(_unlink_logs, self.logs_dir, doomed)

    # --- the task -----------------------------------------------------------------------

    async def run_once(self) -> tuple[int, int]:
        """One run of the task: the rows (when this server deletes them), then this
        server's logs; (workloads deleted, logs removed: theirs and the sweep's)."""
        assert self.retain_seconds is not None
        deleted: list[str] = []
        removed = 0
        if await self.deletes_rows():
            deleted, removed = await self._delete(self.retain_seconds, owner=None, logs=True)
        removed += await self.sweep_logs(self.retain_seconds)
        return len(deleted), removed

    def start(self) -> asyncio.Task[None] | None:
        """Start the task on the running loop (None without ``retain_seconds``)."""
        if self.retain_seconds is None:
            return None
        return asyncio.get_running_loop().create_task(self.run_forever(), name="corral-retention")

    async def run_forever(self) -> None:
        """``run_once`` now and every ``interval`` until cancelled; a failure (the
        database busy or down, a log the OS refuses) is logged once, and the next
        run tries again."""
        assert self.interval is not None
        while True:
            try:
                deleted, removed = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._failing:
                    log.warning(
                        "retention failed (%s); trying again every %g s", exc, self.interval
                    )
                self._failing = True
            else:
                if self._failing:
                    log.warning("retention works again")
                self._failing = False
                if deleted or removed:
                    log.info(
                        "retention: deleted %d finished %s, removed %d %s",
                        deleted,
                        "workload" if deleted == 1 else "workloads",
                        removed,
                        "log" if removed == 1 else "logs",
                    )
            await asyncio.sleep(self.interval)


LOG_NAMES = (LOG_SUFFIX, LOG_SUFFIX + RING_SUFFIX, LOG_SUFFIX + RING_SUFFIX + TMP_SUFFIX)
"""What a workload's log leaves in the directory: ``<id>`` and one of these."""


def _log_ids(logs_dir: Path, ceiling: str) -> list[str]:
    """The ids of the logs in ``logs_dir`` below ``ceiling`` (of ``<id>.log``, or
    of a capped log's ring or ring in the making left without it), sorted; none when
    there is no such directory."""
    ids = set()
    with (
        contextlib.suppress(FileNotFoundError, NotADirectoryError),
        os.scandir(logs_dir) as entries,
    ):
        for entry in entries:
            workload_id, dot, rest = entry.name.partition(".")
            if dot + rest in LOG_NAMES and looks_like_id(workload_id) and workload_id < ceiling:
                ids.add(workload_id)
    return sorted(ids)


def _unlink_logs(logs_dir: Path, workload_ids: Sequence[str]) -> int:
    """Remove each one's log (``logs.remove_log``), if there; how many were."""
    return sum(remove_log(logs_dir / f"{w}{LOG_SUFFIX}") for w in workload_ids)
