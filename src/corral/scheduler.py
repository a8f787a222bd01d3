"""The scheduler: admission, wake-ups and reconciliation.

It is the only writer of ``running``, ``completed`` and ``failed`` (the API writes
``killed``), always through ``store.update_workload_status`` (by ``set_status``, which
counts it for ``/metrics``, as the claims are counted), so every change is
checked against the state machine and recorded as an event.

- **Admission.** Pending workloads are kept in memory in priority order, then
  submission order (id). A pass walks them and starts each one whose CPUs, memory and
  GPUs fit in what is free. The first one that does not fit *reserves* what it needs,
  so smaller workloads behind it cannot starve it; everyone left waiting gets a
  ``reason`` ("waiting for 2 GPUs, 0 free"). What starts and every reason are decided
  by a pure function, ``corral.admission.admit`` (its docstring states the rules);
  this module claims and launches what it decides and stores the reasons. A claim
  refused (the workload was killed meanwhile) leaves what it would have taken free:
  the next pass, at once, walks from the front again, and tells again those the pass
  told with it taken whose reason that changes.
- **Deep queues stay cheap.** Neither a submit nor an exit may cost a walk of every
  pending workload (10,000 queued behind a full machine made each submit take 40
  ms; 100,000 made each exit hold the loop for 170 ms). So:
  the queue is a list kept in order (a submit that sorts last, the usual case, is
  appended; one of a higher priority is put in its place, ``bisect``), and a workload
  that leaves it (claimed, placed, killed) only leaves a stale entry behind, skipped
  by the walks (``_front`` past those at the front) and dropped all at once when
  stale entries outnumber the pending (O(1) a removal); those a walk from the front
  skipped before where it stopped (workloads that started behind a head of the line
  that waits) are dropped once more than ``STALE_SKIPPED``, or every exit's pass
  would skip them again. A pass that follows only
  submits resumes where the last one stopped (its free capacity, its head of the
  line) and walks just the new tail. A change that can let earlier workloads start
  (an exit, a pending workload leaving, a submit ahead of others, the safety poll)
  makes the next pass walk from the front, but it stops where ``admit`` may stop
  ("Stopping early" in its docstring): once the head of the line is set, nothing
  left can start, and everything left would be told what the passes before told it
  (``_settled``), then it walks what was submitted since. So an exit behind a full
  machine walks the next in line (it starts) and the one after it (the new head):
  two workloads, however many wait. The shapes queued are counted (``_shapes``) for
  that check; while a batch-limited workload is queued (its reason counts its batch,
  not its shape), or once what ``_unfit`` judges by changed, or after a pass whose
  reasons the store refused, a sort (a requeue) or a lease lost (another leader
  may have stored reasons meanwhile: ``resume`` also forgets which were stored, so
  each is stored again), the pass walks everything, as does the first one of a
  server; its reasons are then those of a walk over the whole
  queue, as every pass from the front gives. Within a walk, the reason of a waiting
  workload depends only on its resource shape until something starts, so it is
  computed once per shape.
- **Placement (Ray).** An executor with ``placement`` (Ray) picks the node itself,
  and a workload it has not placed yet is still pending. So a workload that fits the
  cluster's free capacity (in all, corral's own accounting) is not claimed at once:
  it moves to ``_placing``, its resources taken, and ``executor.place`` looks for a
  node; once there is one, the claim pending→running records it and the process is
  launched there. A claim refused (killed meanwhile) gives the placement back
  (``unplace``); so does a kill while it is placed or looked for. A placement not
  made after ``PLACING_REASON_SECONDS`` gets the executor's reason ("waiting for Ray
  to place it: …"). The executor's capacity follows its nodes: ``on_change``
  re-bases the totals (free = new total minus what is taken).
- **Claim, then spawn.** pending→running is committed before the process is started
  (never a transaction around a spawn); the spawn runs as a task, so a pass never
  waits for an exec. If the spawn fails, running→failed with the OS's message. If
  the server dies between the two, the restart finds a running workload that no
  process ever ran (the executor can prove it: ``NotStartedError``) and starts it
  then; a workload still runs at most once.
- **Awaiting the store.** The store is async, so between a decision and its write
  other things happen (a kill, a submit, an exit). A pass therefore decides
  synchronously what to start, taking each one's resources in memory at once (it
  moves to ``_claiming``), then awaits the claims together (and the pending reasons);
  a claim refused (killed meanwhile) gives its resources back and the next pass walks
  from the front. A kill that arrives while its claim is under way marks it, and the
  claim, once committed, launches nothing. Who runs as whom (``account_of``) is read
  before the claims, so a claim and its launch follow each other within one loop
  turn: nothing can stop a workload between them unseen by the executor. Exits are
  recorded by tasks of their own; the dependency checks and the safety poll compare
  what they read with what the scheduler holds *after* the read (a workload claimed
  or launched meanwhile is never taken for lost nor admitted twice; the claim, a
  conditional write, is what makes a workload run at most once).
- **Starting at submit.** A submit that finds nothing waiting (no pending workload,
  none blocked whose dependencies may just have ended, nor a re-check of blocked
  ones under way: their marks are off ``_recheck`` while their dependencies'
  statuses are read, and those met are queued after), room for it now, and this
  server scheduling a store that can (``Store.starts_at_create``: SQLite) is not
  queued at all: ``start_at_submit`` takes its resources, chooses its id and reads
  whom it runs as before the create; the store creates it and claims it in the
  create's own transaction (both events recorded, the fence checked: a lost lease
  leaves it pending), and ``submitted`` launches it before the 201 is written. The
  order of the queue is kept (nothing was waiting), and so are a claim's guarantees:
  while the create is written the workload is in ``_starting`` (resources taken, held
  for the safety poll, a kill marks it), and a create that came back pending
  (fenced, or an idempotent replay) gives the resources back and takes the usual way.
  Without this, a lone submit waited for the pass on the next turn, then a second
  transaction for its claim (issue 13: submit → running 3.3 ms, two commits a
  workload).
- **Wake-ups, not polling.** A submit, a kill or an exit sets an ``asyncio.Event``; the
  pass runs on the next loop turn. A slow safety poll (``SAFETY_POLL_SECONDS``)
  reconciles the store with the executor: a terminal workload has no live process, a
  running one has one (or is lost), and pending ones written by other processes are
  picked up. It is due every ``SAFETY_POLL_SECONDS`` even while wake-ups keep
  coming (a busy server's exits and submits must not put it off for ever).
- **Dependencies.** A pending workload with dependencies is *blocked* (kept apart,
  not in the queue) until they are met: afterok, every one ``completed``; afterany,
  every one terminal with its process gone. Its reason names what it waits for. When
  a workload ends (an exit recorded, a kill or status change through the API, a
  lost one), the blocked workloads waiting for it are marked for a re-check, which
  the next pass does with one read of their dependencies' statuses: met, it joins
  the queue; afterok and a dependency ``failed`` or ``killed``, it is killed
  ("dependency X failed"), which in turn marks its own dependants, down the chain.
  A mark is cleared only once acted on, so a store fault loses none; on start and
  on every safety poll, every blocked workload is re-checked from the store (a
  restart resumes a chain; dependencies ended by other processes are seen).
- **Batches.** A workload of a batch with ``max_running`` is skipped by a pass while
  that many of its batch hold resources (counted from ``_allocated``: adopted on
  start, then claims and exits), without reserving anything.
- **Timeouts** use the loop's monotonic timers: the process group is terminated, and
  the workload ends ``failed`` ("timed out after N s") when the process is gone.
- **Restart.** On start, running workloads are handed to the executor to adopt; it
  reports those that ended meanwhile.
- **Deleted while stopping.** A workload killed, then deleted (retention) while its
  process still stops keeps its log until the process is over (it may still write):
  when its end then finds no row, the scheduler removes the log (``_record``;
  ``corral.retention``'s docstring).
- **Faults.** A store that refuses a write (a full disk, a busy database) loses
  nothing and wedges nothing. An exit is taken off the machine at once (its
  resources are free again, ``process_over`` is true) and kept in memory until the
  store accepts it, retried every ``RETRY_SECONDS`` and on every pass; only then is
  the executor told to ``forget`` it, so a restart meanwhile still finds its status
  on disk. The safety poll does not take such a workload for lost. A pass that
  fails (a claim or the pending reasons refused) is run again after
  ``RETRY_SECONDS``; a reason counts as given only once it is stored.

With no executor (``--executor none``) the scheduler does nothing: workloads move
only through ``PUT /v1/workloads/{id}/status``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import heapq
import itertools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from corral.admission import (
    Decision,
    Free,
    Pass,
    ResShape,
    Settled,
    admit,
    amount,
    dependencies,
    fits,
    num,
    rank,
)
from corral.errors import ExceedsCapacityError
from corral.executors.base import (
    Capacity,
    Executor,
    Node,
    NotStartedError,
    Outcome,
    RunAs,
    SpawnError,
    resolve_run_as,
)
from corral.ids import new_id
from corral.logs import remove_log
from corral.metrics import Tally
from corral.model import TERMINAL, Resources, Status, Workload, WorkloadCreate
from corral.store import (
    InvalidTransitionError,
    NotFoundError,
    StorageFullError,
    Store,
    StoreBusyError,
)
from corral.store.base import StartNow
from corral.store.cluster import Fence, FencedError

log = logging.getLogger(__name__)


class ServerView(Protocol):
    """This server's name, and the scheduling server's (as last read)."""

    @property
    def name(self) -> str: ...

    @property
    def leader(self) -> str | None: ...


class Role(Protocol):
    """The scheduler lease as the scheduler sees it (``leader.Leadership``)."""

    @property
    def fence(self) -> Fence | None: ...

    def valid(self) -> bool: ...

    def lost(self) -> None: ...


SAFETY_POLL_SECONDS = 5.0
RETRY_SECONDS = 0.5
"""How soon an exit the store refused, or a pass that failed, is tried again."""
PAGE = 1000
QUEUE_WALK = 20_000
"""Entries of the sorted queue ``queue_head`` walks at most (~2 ms) for its head."""
STALE_SKIPPED_OWNER = 1000
"""Stale entries a read of one owner's queue skips before it compacts that queue."""
OWNER_SLACK = 32
"""Entries an owner's queue may hold beyond twice its pending before a submit
compacts it."""
ID_PAGE = 500
"""Ids per read of the safety poll (``_admit_unknown_pending``). The SQLite store
reads a page of this size inline, on the loop (~0.1 ms): on a reader thread, rows
read while the loop waits for the GIL held it off for up to 38 ms at a time (the
GIL's switch interval is 5 ms, and a request takes it back several times)."""
CLAIM_BATCH = 64
"""Claims per statement (``Store.claim_workloads``)."""
PLACING_REASON_SECONDS = 0.2
"""A placement not made after this long gets its reason stored."""
STALE_SKIPPED = 256
"""Stale entries of the queue a walk from the front skipped before the place it
stopped at, beyond which they are dropped (``_walk_from_front``)."""


@dataclass(slots=True)
class _Placing:
    """A pending workload whose resources are taken while the executor finds it a node."""

    workload: Workload
    devices: list[int]
    """GPU tokens taken from the scheduler's count (the node's agent picks the devices)."""
    timer: asyncio.TimerHandle | None = None
    claiming: bool = False
    """Placed: its claim is under way (it leaves ``_placing`` when the claim returns)."""


@dataclass(slots=True)
class _Claim:
    """A pending workload a pass decided to start: its resources are taken, its claim
    (pending→running) is under way."""

    workload: Workload
    devices: list[int]
    stopped: bool = False
    """Made terminal through the API meanwhile: the claim, if it commits, launches nothing."""


@dataclass(slots=True)
class _Starting:
    """A workload started at submit (``start_at_submit``), its create under way: its
    resources are taken, and it runs as ``run_as``."""

    resources: Resources
    devices: list[int]
    run_as: RunAs | None
    stopped: bool = False
    """Made terminal through the API meanwhile: once created, it launches nothing."""


@dataclass(slots=True)
class _Ending:
    """How a workload's process ended, as the transition that records it."""

    status: Status
    reason: str | None
    exit_code: int | None
    signal: str | None
    failures: int = 0
    """Attempts the store refused so far."""


class Scheduler:
    """Decides what runs; see the module docstring."""

    def __init__(
        self,
        store: Store,
        executor: Executor | None = None,
        *,
        role: Role | None = None,
        node: str | None = None,
        poll_seconds: float | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.role = role
        """The scheduler lease this scheduler acts under (``leader.Leadership``), or
        None: it always schedules (one server, tests)."""
        self.published: dict[str, Any] | None = None
        """The capacity the scheduling server published (``cluster.Cluster``)."""
        self.server: ServerView | None = None
        """This server among the servers of its database (``cluster.Cluster``)."""
        self.poll_seconds = poll_seconds
        """The safety poll's period (None: ``SAFETY_POLL_SECONDS``)."""
        cap = executor.capacity if executor else None
        self._total = Free(cap.cpus, cap.memory_mb, set(range(cap.gpus))) if cap else Free(0, 0)
        self._free = self._total.copy()
        self._pending: dict[str, Workload] = {}
        self._queue: list[Workload] = []  # _pending in order; stale entries are skipped
        self._sorted = True  # _queue is in order, each of _pending in it once
        self._front = 0  # _queue[:_front] holds only stale entries
        self._walked = 0  # _queue[:_walked] was walked by the passes since the last sort
        self._reached = 0  # where the last _live got to in _queue
        self._skipped = 0  # the stale entries it skipped
        self._full = True  # the next pass walks from the front of the queue
        self._last_pass: Pass | None = None  # where the last walk stopped
        self._shapes: dict[ResShape, int] = {}  # _pending, counted by resources asked
        self._owners: dict[str, int] = {}  # _pending, counted by owner (queue_head)
        self._waking_all: bool | None = None  # a wake(None) runs (True: read again after)
        self._by_owner: dict[str, list[Workload]] = {}  # each owner's _pending in order;
        # stale entries are skipped (and dropped: ``_owner_head``)
        self._limited = 0  # of _pending, those of a batch with a limit
        self._settled: Settled | None = None  # what the passes told the end of the queue
        self._settled_basis: object = None  # what _unfit judged by, then
        self.last_walked = 0
        """How many workloads the last pass looked at (the benchmarks and tests)."""
        self._allocated: dict[str, tuple[Workload, list[int]]] = {}
        self._reasons: dict[str, str | None] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._timed_out: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._launches: set[asyncio.Task[None]] = set()
        self._accounts: dict[str, RunAs] = {}  # by Unix user name
        self._unrecorded: dict[str, _Ending] = {}  # process over, end not yet stored
        self._retry: asyncio.TimerHandle | None = None
        self._failing: dict[str, str] = {}  # by step: its last failure, logged
        self._blocked: dict[str, Workload] = {}  # pending, dependencies not met yet
        self._dependants: dict[str, set[str]] = {}  # dependency -> blocked ids
        self._recheck: set[str] = set()  # blocked ids whose dependencies may have ended
        self._rechecking = False  # _check_blocked under way (its marks taken off _recheck)
        self._batch_running: dict[str, int] = {}  # batch_id (with a limit) -> allocated
        self._placing: dict[str, _Placing] = {}  # pending, resources taken, node looked for
        self._claiming: dict[str, _Claim] = {}  # decided by a pass, claim under way
        self._starting: dict[str, _Starting] = {}  # started at submit, create under way
        self._queue_read = False  # the pending workloads read from the store (as leader)
        self._recording: set[str] = set()  # of _unrecorded: a write of the end under way
        self._tasks: set[asyncio.Task[None]] = set()  # claims, records, reasons under way
        self._stopping = False
        self._node = (
            (node or executor.nodes()[0].id)
            if executor is not None and not executor.placement
            else None
        )  # the one machine of an executor without placement: this server's name
        self._paused = False  # the lease was lost: claim nothing, write nothing
        self.tally = Tally()
        """The transitions this process wrote and the claims' latency (``/metrics``)."""
        self._ended_by_api: set[str] = set()  # terminal in the store, process not gone yet
        self._unlaunched: dict[str, RunAs | Exception | None] = {}
        """Of ``_allocated``: claimed, but the lease ran out before the launch (no
        process). Launched if this server leads again (``resume``), else given back
        once another leader ended them (``_reconcile``)."""

    def _fence(self) -> Fence | None:
        return self.role.fence if self.role is not None else None

    def _leads(self) -> bool:
        """May claim and launch now: no lease to hold, or one held (by this process's
        own clock: a leader stopped past its lease knows it the moment it wakes)."""
        return not self._paused and (self.role is None or self.role.valid())

    def _fenced(self, exc: FencedError) -> None:
        """A fenced write was refused: the lease is another's; step down."""
        log.warning("%s", exc)
        if self.role is not None:
            self.role.lost()

    # --- called by the API ---------------------------------------------------------

    def check_fits(self, resources: Resources) -> None:
        """Raise ``ExceedsCapacityError`` when ``resources`` exceed the whole capacity
        (with placement: when they fit no node of the cluster). A standby judges by
        the capacity the scheduling server published (none yet: it lets it through,
        and the scheduler gives it its reason)."""
        if self.executor is not None and self._standby():
            if self.published is None:
                return
            cap = _capacity(self.published.get("capacity"))
            excess = _excess(resources, Free(cap.cpus, cap.memory_mb, set(range(cap.gpus))))
            if excess:
                raise ExceedsCapacityError(f"the workload {excess}")
            return
        excess = self._unfit(resources) if self.executor else None
        if excess:
            raise ExceedsCapacityError(f"the workload {excess}")

    def _unfit(self, res: Resources) -> str | None:
        """What ``res`` asks beyond what could ever run it, or None."""
        assert self.executor is not None
        if not self.executor.placement:
            return _excess(res, self._total)
        return _fits_no_node(res, self.executor.nodes())

    async def start_at_submit(self, spec: WorkloadCreate, owner: str) -> StartNow | None:
        """For a submit about to be stored: when nothing waits and it fits now (see
        "Starting at submit" in the module docstring), its resources taken and the
        ``StartNow`` to create it with; else None (it is queued as usual). The caller
        then hands ``submitted`` the created workload, or ``not_started`` the error."""
        if not self._may_start_at_submit(spec):
            return None
        run_as = await self._account(owner)  # (inline on SQLite: no turn of the loop)
        if isinstance(run_as, Exception) or not self._may_start_at_submit(spec):
            return None  # (an error: the usual way fails the workload, saying why)
        assert self._node is not None
        res = spec.resources
        devices = sorted(self._free.gpus)[: res.gpus]
        self._take_resources(res, devices)
        # Taken outside a pass: the next one must not resume from what the last one
        # left free (``_last_pass``), nor stop early on what it told (``_settled``).
        # (Nothing waits now, so the walk from the front this makes costs nothing.)
        self._full, self._settled = True, None
        wid = new_id()
        self._starting[wid] = _Starting(res, devices, run_as)
        return StartNow(wid, self._node, self._fence())

    def _may_start_at_submit(self, spec: WorkloadCreate) -> bool:
        return (
            self.executor is not None
            and self._wake is not None
            and not self.executor.placement
            and self.store.starts_at_create
            and not spec.depends_on
            and self._queue_read  # every pending workload of the store is known
            and not self._pending
            and not self._recheck
            and not self._rechecking  # (those it re-checks may be queued once it is read)
            and not self._stopping
            and self._leads()
            and fits(spec.resources, self._free)
        )

    def not_started(self, start: StartNow | None) -> None:
        """The create of ``start`` failed, or was a replay."""
        if start is not None and (entry := self._starting.pop(start.workload_id, None)):
            self._give_back_resources(entry.resources, entry.devices)
            self._full = True
            self._poke()

    def unanswered(self, start: StartNow, result: tuple[Workload, bool] | BaseException) -> None:
        """How the create of ``start`` ended, its request gone (cancelled) meanwhile
        (``CreateBatcher``): as the route would have told it. A workload created
        running must still be launched (it was, before starting at submit, created
        pending and run), not left to the safety poll, which fails it as lost."""
        if isinstance(result, BaseException):
            self.not_started(start)
            return
        workload, replayed = result
        if replayed:
            self.not_started(start)
        else:
            self.submitted(workload, start)

    def submitted(self, workload: Workload, start: StartNow | None = None) -> None:
        """A new workload was stored: pending (the safety poll may have found it
        first, while the request awaited its answer), or running, created by
        ``start`` (then launched now)."""
        if start is not None and (entry := self._starting.pop(start.workload_id, None)):
            if workload.id == start.workload_id and workload.status is Status.RUNNING:
                self._started_at_submit(workload, entry)
                return
            self._give_back_resources(entry.resources, entry.devices)  # fenced: pending
            self._full = True
        if self.executor is None or self._wake is None or self._known(workload.id):
            return  # (not started: a standby; the leader reads it from the database)
        self._admit(workload)
        self._poke()

    def _started_at_submit(self, running: Workload, entry: _Starting) -> None:
        """A workload created running: launch it, as a claim does (``_claimed``)."""
        self.tally.transition(running)
        wid = running.id
        if entry.stopped:  # killed before its create answered: it never runs
            self._give_back_resources(entry.resources, entry.devices)
            self._full = True
            self._ended(wid)
            self._poke()
            return
        if self._stopping:  # (a create whose request was cancelled, answered late)
            log.warning("not starting %s: the server stops; its restart starts it", wid)
            self._give_back_resources(entry.resources, entry.devices)
            return
        self._allocated[wid] = (running, entry.devices)
        if not self._leads():  # the lease ran out meanwhile: launch nothing
            log.warning("not starting %s: this server no longer holds the lease", wid)
            self._unlaunched[wid] = entry.run_as  # whoever leads next finds it running
            return
        self._start(running, entry.devices, entry.run_as)

    async def set_status(
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
        """``store.update_workload_status``, counted (``tally``): every status change
        of this process but the claims goes through here, the API's too."""
        workload = await self.store.update_workload_status(
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
        self.tally.transition(workload)
        return workload

    def stopped(self, workload: Workload) -> None:
        """A workload became terminal through the API (kill or status update)."""
        if self.executor is None or self._wake is None:
            return
        if self._unqueue(workload.id) is not None:
            self._reasons.pop(workload.id, None)
            self._full = True  # it may have been the head of the line
            self._poke()
        if workload.id in self._placing:
            self._unplace(workload.id)
            self._poke()
        claim = self._claiming.get(workload.id) or self._starting.get(workload.id)
        if claim is not None:
            claim.stopped = True  # its claim, if it commits, launches nothing
        if self._unblock(workload.id) is not None:
            self._reasons.pop(workload.id, None)
        if workload.id in self._allocated:
            self._ended_by_api.add(workload.id)
            self.executor.terminate(workload.id)
        # afterok dependants of a killed workload die now; afterany ones see it ended
        # once its process is gone (its exit marks them again).
        self._ended(workload.id)

    def is_active(self, workload_id: str) -> bool:
        """True while the workload's process (if any) may still write output."""
        return workload_id in self._allocated

    def process_over(self, workload_id: str) -> bool:
        """True when the workload's process is over but the store has not accepted
        its end yet (it is retried): its output is complete."""
        return workload_id in self._unrecorded

    # --- read by the API (GET /v1/status, a workload's ``stopping``) ---------------

    def is_stopping(self, workload: Workload) -> bool:
        """True while corral stops the workload's process and it has not exited: it is
        terminal in the store (killed, or set by an admin), or it timed out."""
        return workload.id in self._allocated and (
            workload.status in TERMINAL or workload.id in self._timed_out
        )

    def capacity(self) -> Capacity:
        """What the executor may run at once (nothing without one); on a standby, what
        the scheduling server last published."""
        if self._standby() and self.published is not None:
            return _capacity(self.published.get("capacity"))
        total = self._total
        return Capacity(total.cpus, total.memory_mb, len(total.gpus))

    def free(self) -> Capacity:
        """What is not taken by the processes that run (or are still being stopped)."""
        if self._standby() and self.published is not None:
            return _capacity(self.published.get("free"))
        free = self._free
        return Capacity(max(free.cpus, 0.0), max(free.memory_mb, 0), len(free.gpus))

    def readiness(self) -> tuple[str, str]:
        """For ``/readyz``: the executor's state (``ok``, or ``down`` when the
        scheduling loop ended without being stopped) and the scheduler's (``active``:
        it schedules here; ``standby``: another server holds the lease; ``never``: no
        executor, this server runs nothing)."""
        if self.executor is None:
            return "ok", "never"
        task = self._task
        if task is not None and task.done() and not self._stopping:
            return "down", "active"
        return "ok", "standby" if self._standby() else "active"

    def live_counts(self) -> tuple[int, int] | None:
        """(pending, running) as this scheduler knows them, exactly and at once (None
        when it does not schedule here: a standby, or no executor). Running: claimed
        and not made terminal through the API, its end not yet stored included."""
        if self.executor is None or self._wake is None or self._standby():
            return None
        pending = len(self._pending) + len(self._blocked) + len(self._placing)
        pending += len(self._claiming)
        running = len({*self._allocated, *self._unrecorded} - self._ended_by_api)
        return pending, running

    def log_size(self, workload_id: str) -> int:
        """The size of the workload's log now, one ``stat`` (0 when it has none)."""
        if self.executor is None:
            return 0
        try:
            return os.stat(self.executor.logs.path(workload_id)).st_size
        except OSError:
            return 0

    def running_log_bytes(self) -> int | None:
        """The bytes in the logs of the processes this server runs now (one ``stat``
        each: bounded by what runs, not by the table); None without an executor."""
        if self.executor is None:
            return None
        return sum(self.log_size(wid) for wid in self._allocated)

    def queue_depth(self) -> int | None:
        """How many pending workloads wait in the queue (not blocked by dependencies),
        or None when this scheduler does not schedule here."""
        if self.executor is None or self._wake is None or self._standby():
            return None
        return len(self._pending) + len(self._placing)

    def _standby(self) -> bool:
        """Another server schedules (this one has not started, or lost the lease)."""
        return (
            self.executor is not None
            and self.role is not None
            and (self._wake is None or self._paused)
        )

    async def queue(
        self, limit: int, *, owner: str | None = None
    ) -> tuple[list[tuple[Workload, str | None]], int]:
        """``queue_head`` where this server schedules; elsewhere (a standby, or a
        server that runs nothing: ``--executor none``) the store's ``queue_head``."""
        if self.executor is not None and not self._standby():
            return self.queue_head(limit, owner=owner)
        head, length = await self.store.queue_head(limit, owner=owner)
        return [(w, w.reason) for w in head], length

    def queue_head(
        self, limit: int, *, owner: str | None = None, walk: int = QUEUE_WALK
    ) -> tuple[list[tuple[Workload, str | None]], int]:
        """The first ``limit`` queued workloads (``owner``'s only, when given) in the
        order passes consider them, each with its reason, and how many are queued.

        Bounded, however deep the queue (ranking all of them took ~30 ms of the loop
        at 100,000 pending): an owner's are kept in order as they are queued
        (``_by_owner``) and read from the front; everyone's from the front of the
        sorted queue, at most ``walk`` entries, else (stale entries fill the front,
        or a failed claim left the queue unsorted until the next pass) from the
        front of each owner's."""
        placing = [p.workload for p in self._placing.values()]
        if owner is not None:
            placing = [w for w in placing if w.owner == owner]
            found = self._owner_head(owner, limit)
            queued = self._owners.get(owner, 0)
        else:
            queued = len(self._pending)
            walked = self._walk_queue(min(limit, queued), walk) if self._sorted else None
            if walked is None:
                heads = [self._owner_head(o, limit) for o in list(self._by_owner)]
                walked = heapq.nsmallest(limit, itertools.chain(*heads), key=rank)
            found = walked
        head = heapq.nsmallest(limit, [*placing, *found], key=rank)
        return [(w, self._reasons.get(w.id) or w.reason) for w in head], len(placing) + queued

    def _walk_queue(self, wanted: int, walk: int) -> list[Workload] | None:
        """The first ``wanted`` pending workloads of the sorted queue, or None when
        they are not within ``walk`` entries of its front."""
        found: list[Workload] = []
        if not wanted:
            return found
        pending, queue = self._pending, self._queue
        for i in range(self._front, min(len(queue), self._front + walk)):
            w = queue[i]
            if pending.get(w.id) is w:
                found.append(w)
                if len(found) == wanted:
                    return found
        return None

    def _owner_head(self, owner: str, limit: int) -> list[Workload]:
        """The first ``limit`` of ``owner``'s pending workloads, in order. Stale
        entries met are dropped: those at the front at once, the rest with a
        compaction once a read has skipped ``STALE_SKIPPED_OWNER`` (each entry is
        dropped once: O(1) a removal)."""
        mine = self._by_owner.get(owner)
        if not mine:
            return []
        pending = self._pending
        front = 0
        while front < len(mine) and pending.get(mine[front].id) is not mine[front]:
            front += 1
        if front:
            del mine[:front]
        found: list[Workload] = []
        seen: set[str] = set()  # a workload queued again has two live entries
        skipped = 0
        for w in mine:
            if len(found) == limit:
                break
            if pending.get(w.id) is not w:
                skipped += 1
            elif w.id not in seen:
                seen.add(w.id)
                found.append(w)
        if skipped > STALE_SKIPPED_OWNER:
            self._compact_owner(mine)
        return found

    def _compact_owner(self, mine: list[Workload]) -> None:
        """Drop the stale and repeated entries of one owner's queue, in place."""
        pending = self._pending
        mine[:] = {w.id: w for w in mine if pending.get(w.id) is w}.values()

    # --- life cycle ----------------------------------------------------------------

    async def start(self) -> None:
        if self.executor is None:
            return
        self._wake = asyncio.Event()
        await self.executor.open()
        self._resize()
        self.executor.start(self._on_exit, self._on_change)
        not_started = []
        stopped_at = await self._servers_last_seen()
        async for workload in self._iter_store(Status.RUNNING):
            if self._foreign(workload):
                await self._fail_lost_server(workload, stopped_at)
                continue
            try:
                devices = self.executor.adopt(workload)
            except NotStartedError:
                not_started.append(workload)
                continue
            if devices is not None:
                if self.executor.placement:  # the node's devices; counted as tokens here
                    devices = sorted(self._free.gpus)[: workload.resources.gpus]
                self._allocate(workload, devices)
                self._arm_timeout(workload, started_at=workload.started_at)
        self.executor.stop_unadopted()
        for workload in not_started:  # after the adopted ones have their GPUs back
            log.warning("starting %s: the last server stopped before it ran", workload.id)
            self._launch(workload, await self._account(workload.owner))
        async for workload in self._iter_store(Status.PENDING):
            if not self._known(workload.id):
                self._admit(workload)
                self._reasons[workload.id] = workload.reason
        self._queue_read = True
        self._task = asyncio.create_task(self._run(), name="corral-scheduler")
        self._poke()

    async def stop(self) -> None:
        """Finish the pass under way (its claims launch what they claimed), then stop:
        the spawns, claims and records under way are awaited, never cut off."""
        self._stopping = True
        if self._task is not None:
            self._poke()
            await self._task
        await self._settle()
        if self._launches:  # let spawns under way finish and be watched
            await asyncio.gather(*self._launches, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        for wid in list(self._placing):  # still pending: the next server places them
            self._unplace(wid)
        self._record_ends()  # a last try; what is left is found on disk by a restart
        await self._settle()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.executor is not None:
            self.executor.close()

    async def _settle(self) -> None:
        """Wait for the tasks under way (claims, records, reasons), and any they start."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task of the scheduler's (``stop`` waits for it)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + (self.poll_seconds or SAFETY_POLL_SECONDS)
        while not self._stopping:
            # The poll is due every SAFETY_POLL_SECONDS, however often wake-ups come.
            # (A wake-up made during the last pass is taken at once; otherwise a
            # deadline, not ``wait_for``, whose task per wait showed in profiles.)
            if self._wake.is_set():
                await asyncio.sleep(0)  # the loop turns: a pass that pokes itself never spins
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(next_poll):
                        await self._wake.wait()
            if self._stopping:
                return
            if loop.time() >= next_poll:
                await self._guard(self._reconcile)
                next_poll = loop.time() + (self.poll_seconds or SAFETY_POLL_SECONDS)
            self._wake.clear()
            if not self._leads():
                continue
            self._record_ends()
            await self._guard(self._check_blocked)  # apart: a failure must not stop the pass
            await self._guard(self._schedule)

    async def _guard(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run a pass; one that fails is logged (once while it keeps failing the same
        way) and run again after ``RETRY_SECONDS``: the loop must survive it."""
        name = step.__name__
        try:
            await step()
        except FencedError as exc:
            self._fenced(exc)
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            if failure != self._failing.get(name):
                if isinstance(exc, StorageFullError | StoreBusyError):
                    log.warning("scheduler pass failed (%s); retrying", exc)
                else:
                    log.exception("scheduler pass failed; retrying")
                self._failing[name] = failure
            self._full = True
            self._settled = None  # the reasons of the pass may not be stored
            self._arm_retry()
        else:
            if self._failing.pop(name, None) is not None:
                log.warning("scheduler passes work again")

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _arm_retry(self) -> None:
        if self._retry is None and self._wake is not None:
            loop = asyncio.get_running_loop()
            self._retry = loop.call_later(RETRY_SECONDS, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._poke()  # the loop records the ends kept and runs a full pass

    # --- dependencies ----------------------------------------------------------------

    def _admit(self, workload: Workload) -> None:
        """A pending workload: queued, or blocked when it has dependencies (the next
        pass checks them)."""
        if not workload.depends_on:
            self._enqueue(workload)
        elif workload.id not in self._blocked and workload.id not in self._pending:
            self._blocked[workload.id] = workload
            for dep in workload.depends_on:
                self._dependants.setdefault(dep, set()).add(workload.id)
            self._recheck.add(workload.id)

    def _unblock(self, workload_id: str) -> Workload | None:
        """Take a workload out of the blocked ones (None: it was not blocked)."""
        workload = self._blocked.pop(workload_id, None)
        self._recheck.discard(workload_id)
        if workload is not None:
            for dep in workload.depends_on:
                waiting = self._dependants.get(dep)
                if waiting is not None:
                    waiting.discard(workload_id)
                    if not waiting:
                        del self._dependants[dep]
        return workload

    def _ended(self, workload_id: str) -> None:
        """``workload_id`` ended (or its process did): re-check what waits for it."""
        waiting = self._dependants.get(workload_id)
        if waiting:
            self._recheck.update(waiting)
            self._poke()

    async def _check_blocked(self) -> None:
        """Act on the blocked workloads marked for a re-check: queue those whose
        dependencies are met, kill the afterok ones a dependency failed (which marks
        their own dependants: the loop goes down the chain), and give the others
        their reason. A mark is cleared only once acted on: whatever the store
        refuses is marked again, and the pass that raised is retried. Marks made
        while the statuses are read (a dependency ended meanwhile) stay for the next
        round of the loop."""
        while True:
            ids = self._recheck & self._blocked.keys()
            self._recheck.clear()
            if not ids:
                return
            self._rechecking = True  # no start at submit ahead of those met (issue 13)
            try:
                await self._recheck_blocked([self._blocked[wid] for wid in ids])
            except Exception:
                self._recheck.update(wid for wid in ids if wid in self._blocked)
                raise
            finally:
                self._rechecking = False

    async def _recheck_blocked(self, todo: list[Workload]) -> None:
        statuses = await self.store.statuses([d for w in todo for d in w.depends_on])
        reasons: list[tuple[str, str]] = []
        for workload in todo:
            if self._blocked.get(workload.id) is not workload:
                continue  # stopped meanwhile
            verdict, reason = self._dependencies(workload, statuses)
            if verdict == "met":
                self._unblock(workload.id)
                self._enqueue(workload)
            elif verdict == "kill":
                await self._kill_dependant(workload, reason)
            elif self._reasons.get(workload.id) != reason:
                reasons.append((workload.id, reason))
        if reasons:
            await self.store.set_pending_reasons(reasons)
            # A reason counts as given only once stored (and while it still waits).
            self._reasons.update((wid, r) for wid, r in reasons if wid in self._blocked)

    def _dependencies(
        self, workload: Workload, statuses: dict[str, Status]
    ) -> tuple[Literal["met", "wait", "kill"], str]:
        """Whether its dependencies are met; else why it waits ("waiting for …"), or
        why it must be killed ("dependency … failed")."""
        return dependencies(workload, statuses, self._allocated)

    async def _kill_dependant(self, workload: Workload, reason: str) -> None:
        """pending→killed for a dependency that failed; its dependants are next."""
        with contextlib.suppress(InvalidTransitionError, NotFoundError):  # ended already
            await self.set_status(
                workload.id, Status.KILLED, reason=reason, actor="scheduler", fence=self._fence()
            )
        self._unblock(workload.id)
        self._reasons.pop(workload.id, None)
        self._ended(workload.id)

    # --- admission -----------------------------------------------------------------

    def _known(self, workload_id: str) -> bool:
        """True when the scheduler holds the workload in any of its states."""
        return any(
            workload_id in held
            for held in (
                self._pending,
                self._blocked,
                self._placing,
                self._claiming,
                self._starting,
                self._allocated,
                self._unrecorded,
            )
        )

    def _enqueue(self, workload: Workload) -> None:
        if workload.id in self._pending or workload.id in self._placing:  # found twice
            return
        self._pending[workload.id] = workload
        self._count(workload, 1)
        key = rank(workload)
        mine = self._by_owner.setdefault(workload.owner, [])
        if not mine or key > rank(mine[-1]):
            mine.append(workload)
        else:
            bisect.insort_right(mine, workload, key=rank)
        if len(mine) > 2 * self._owners[workload.owner] + OWNER_SLACK:
            # Stale entries (started, killed) and repeated ones (queued again), dropped
            # once they outnumber the live ones, whether or not anyone reads them.
            self._compact_owner(mine)
        queue = self._queue
        if not queue or key > rank(queue[-1]):
            queue.append(workload)  # the usual submit: after everything queued
        elif not self._sorted:
            queue.append(workload)  # the next pass sorts
        else:  # ahead of workloads already queued (a higher priority): in its place
            at = bisect.bisect_right(queue, key, key=rank)
            queue.insert(at, workload)
            self._front = min(self._front, at)
            self._full = True  # the next pass walks from the front
            if at < self._walked:  # among those walked: the pass walks it (see admit)
                self._walked += 1
                settled = self._settled
                if settled is not None and key > settled.after:  # inside what they told
                    self._settled = dataclasses.replace(settled, after=key)  # less of it

    def _unqueue(self, workload_id: str) -> Workload | None:
        """Take a workload out of the queue (its entry in ``_queue`` goes stale)."""
        workload = self._pending.pop(workload_id, None)
        if workload is not None:
            self._count(workload, -1)
        return workload

    def _count(self, workload: Workload, delta: int) -> None:
        res = workload.resources
        key = (res.cpus, res.memory_mb, res.gpus)
        count = self._shapes.get(key, 0) + delta
        if count:
            self._shapes[key] = count
        else:
            del self._shapes[key]
        count = self._owners.get(workload.owner, 0) + delta
        if count:
            self._owners[workload.owner] = count
        else:
            del self._owners[workload.owner]
            self._by_owner.pop(workload.owner, None)  # all of it stale
        if workload.max_running is not None:
            self._limited += delta

    def _requeue(self, workload: Workload) -> None:
        """Queue again a workload taken out of the queue (its claim or placement
        failed): the next pass sorts the queue afresh, without its old entry."""
        self._enqueue(workload)
        self._sorted = False
        self._full = True

    async def _schedule(self) -> None:
        if not self._leads():
            self._full = True
            return
        try:
            if self._full or self._last_pass is None:
                self._full = False
                claims, reasons = self._walk_from_front()
            else:
                claims, reasons = self._walk_new()
        except BaseException:
            self._full = True  # part of the queue was not walked
            self._settled = None
            raise
        await self._claim_all(claims, reasons)

    def _live(self, start: int, stop: int) -> Iterator[Workload]:
        """The pending workloads of ``_queue[start:stop]``, in order; it counts
        where it got to (``_reached``) and the stale entries it skipped
        (``_skipped``), which its caller sets first."""
        queue, pending = self._queue, self._pending
        for i in range(start, stop):
            workload = queue[i]
            self._reached = i + 1
            if pending.get(workload.id) is workload:
                yield workload
            else:
                self._skipped += 1

    def _drop_skipped(self, start: int) -> None:
        """Drop the stale entries of ``_queue`` the last ``_live`` from ``start``
        skipped, once more than ``STALE_SKIPPED``: they lie before where the walks
        stop (workloads that started behind a head of the line that waits), so every
        pass from the front would skip them again."""
        if self._skipped <= STALE_SKIPPED:
            return
        queue, pending, reached = self._queue, self._pending, self._reached
        kept = [w for w in queue[start:reached] if pending.get(w.id) is w]
        queue[start:reached] = kept
        self._walked -= reached - start - len(kept)  # (all of them were walked)

    def _walk_from_front(self) -> tuple[list[_Claim], list[tuple[str, str]]]:
        """A pass from the front of the queue: over what the passes before walked
        (it stops early where ``admit`` may: ``_settled``), then over what was queued
        since. Stale entries are skipped, and the queue is compacted only once they
        outnumber the pending (each entry is dropped once: O(1) a removal), or those
        the walk skipped once they are many (``_drop_skipped``)."""
        if not self._sorted:
            self._queue = sorted(self._pending.values(), key=rank)
            self._sorted, self._front, self._walked, self._settled = True, 0, 0, None
        elif len(self._queue) - len(self._pending) > len(self._pending):
            self._compact()
        queue, pending = self._queue, self._pending
        front = self._front
        while front < len(queue) and pending.get(queue[front].id) is not queue[front]:
            front += 1
        self._front = front
        split = max(self._walked, front)
        new = [w for w in queue[split:] if pending.get(w.id) is w]
        self._walked = len(queue)
        basis = self._unfit_basis()
        settled, shapes = None, None
        if self._settled is not None and not self._limited and basis == self._settled_basis:
            settled, shapes = self._settled, dict(self._shapes)
            for workload in new:  # counted apart: only what was walked before
                res = workload.resources
                key = (res.cpus, res.memory_mb, res.gpus)
                shapes[key] -= 1
                if not shapes[key]:
                    del shapes[key]
        self._settled_basis = basis
        self._reached, self._skipped = front, 0
        decision = admit(
            self._live(front, split),
            self._free,
            self._batch_running,
            unfit=self._unfit,
            settled=settled,
            shapes=shapes,
        )
        self._drop_skipped(front)
        claims, reasons = self._decided(decision), decision.reasons
        walked = decision.walked
        if new:
            decision = admit(
                new,
                self._free,
                self._batch_running,
                unfit=self._unfit,
                resume=decision.resume,
                settled=decision.settled,
            )
            claims += self._decided(decision)
            reasons += decision.reasons
            walked += decision.walked
        self._last_pass, self._settled, self.last_walked = decision.resume, decision.settled, walked
        return claims, [(wid, r) for wid, r in reasons if self._reasons.get(wid) != r]

    def _walk_new(self) -> tuple[list[_Claim], list[tuple[str, str]]]:
        """A pass after submits only: over what was queued since, resuming where the
        last walk stopped."""
        queue = self._queue
        new = [w for w in queue[self._walked :] if self._pending.get(w.id) is w]
        self._walked = len(queue)
        decision = admit(
            new,
            self._free,
            self._batch_running,
            unfit=self._unfit,
            resume=self._last_pass,
            settled=self._settled,
        )
        self._last_pass, self._settled, self.last_walked = (
            decision.resume,
            decision.settled,
            decision.walked,
        )
        claims = self._decided(decision)
        return claims, [(wid, r) for wid, r in decision.reasons if self._reasons.get(wid) != r]

    def _compact(self) -> None:
        """Drop the stale entries of ``_queue`` (those no longer pending)."""
        pending = self._pending
        walked = sum(1 for w in self._queue[: self._walked] if pending.get(w.id) is w)
        self._queue = [w for w in self._queue if pending.get(w.id) is w]
        self._front, self._walked = 0, walked

    def _unfit_basis(self) -> object:
        """What ``_unfit`` judges by: the total, or the nodes (with placement)."""
        assert self.executor is not None
        if self.executor.placement:
            return tuple(self.executor.nodes())
        return (self._total.cpus, self._total.memory_mb, len(self._total.gpus))

    def _decided(self, decision: Decision) -> list[_Claim]:
        """Take the resources of what ``decision`` starts, at once: the claims to make
        (or, with placement, the placements asked for)."""
        assert self.executor is not None
        claims: list[_Claim] = []
        for start in decision.start:
            if self.executor.placement:
                self._place(start.workload, start.gpus)
            else:
                claims.append(self._reserve(start.workload, start.gpus))
        return claims

    def _reserve(self, workload: Workload, devices: list[int]) -> _Claim:
        """Take a pending workload out of the queue to claim it, its resources taken."""
        self._unqueue(workload.id)
        self._reasons.pop(workload.id, None)
        self._take(workload, devices)
        claim = self._claiming[workload.id] = _Claim(workload, devices)
        return claim

    async def _claim_all(self, claims: list[_Claim], reasons: list[tuple[str, str]]) -> None:
        """Await the claims a pass decided on (one statement for all of them, up to
        ``CLAIM_BATCH`` a round trip), each launched as soon as its claim commits, and
        the pass's pending reasons; the first fault is raised once all are done."""
        owners = {c.workload.owner for c in claims}
        accounts = dict(zip(owners, [await self._account(o) for o in owners], strict=True))
        work = [
            self._claim(claims[i : i + CLAIM_BATCH], accounts)
            for i in range(0, len(claims), CLAIM_BATCH)
        ]
        if reasons:
            work.append(self._store_reasons(reasons))
        if len(work) == 1:  # the usual pass after a submit: no task of its own
            await work[0]
            return
        for result in await asyncio.gather(*work, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    async def _claim(
        self, claims: list[_Claim], accounts: dict[str, RunAs | Exception | None]
    ) -> None:
        """pending→running for each (fenced), then their launches; a claim refused
        (killed or gone since it was queued) gives the resources back. Any other error
        (the database failing) puts them back in the queue, for the pass that is run
        again."""
        assert self._node is not None
        try:
            if not self._leads():
                raise FencedError(self._fence() or Fence("", 0))
            got = await self.store.claim_workloads(
                [c.workload.id for c in claims], node=self._node, fence=self._fence()
            )
        except FencedError as exc:
            for claim in claims:
                self._unclaim(claim, requeue=not claim.stopped)
            self._fenced(exc)
            return
        except Exception:
            for claim in claims:
                self._unclaim(claim, requeue=not claim.stopped)
            raise
        for workload in got:
            self.tally.transition(workload)
        running = {w.id: w for w in got}
        for claim in claims:
            self._claimed(claim, running.get(claim.workload.id), accounts[claim.workload.owner])

    def _claimed(
        self, claim: _Claim, running: Workload | None, run_as: RunAs | Exception | None
    ) -> None:
        wid = claim.workload.id
        if running is None or claim.stopped:
            self._unclaim(claim)
            self._ended(wid)  # killed (by another process?): its dependants see it
            self._full = True  # what it held is free: the next pass walks from the front
            self._poke()
            return
        del self._claiming[wid]
        self._allocated[wid] = (running, claim.devices)
        if not self._leads():  # the lease ran out during the claim: launch nothing
            log.warning("not starting %s: this server no longer holds the lease", wid)
            self._unlaunched[wid] = run_as  # whoever leads next finds it running
            return
        self._start(running, claim.devices, run_as)

    def _unclaim(self, claim: _Claim, *, requeue: bool = False) -> None:
        del self._claiming[claim.workload.id]
        self._give_back(claim.workload, claim.devices)
        self._full = True
        if requeue:
            self._requeue(claim.workload)

    async def _store_reasons(self, reasons: list[tuple[str, str]]) -> None:
        """Store the reasons of waiting workloads; each counts as given only once
        stored (a refusal is retried by the next pass), and only while it waits."""
        if not reasons:
            return
        await self.store.set_pending_reasons(reasons)
        self._reasons.update(
            (wid, r) for wid, r in reasons if wid in self._pending or wid in self._placing
        )

    # --- placement (an executor with ``placement``) -------------------------------------

    def _place(self, workload: Workload, devices: list[int]) -> None:
        """Take the workload's resources and ask the executor for a node (see the
        module docstring); ``_placed`` goes on once there is one."""
        assert self.executor is not None
        self._unqueue(workload.id)
        self._reasons.pop(workload.id, None)
        self._take(workload, devices)
        loop = asyncio.get_running_loop()
        entry = _Placing(workload, devices)
        self._placing[workload.id] = entry
        try:
            placed = self.executor.place(workload)
        except Exception:
            log.exception("placing %s failed; retrying", workload.id)
            self._unplace(workload.id, requeue=True)
            return
        entry.timer = loop.call_later(PLACING_REASON_SECONDS, self._placing_slowly, workload.id)
        placed.add_done_callback(lambda f: self._placed(workload.id, f))

    def _placed(self, wid: str, placed: asyncio.Future[str]) -> None:
        """The executor found the workload a node (or failed to): claim it, recording
        the node, and launch it there (``_claim_placed``)."""
        entry = self._placing.get(wid)
        if entry is None or placed.cancelled():
            return  # unplaced meanwhile (killed, or the server stops)
        exc = placed.exception()
        if exc is not None:
            log.warning("placing %s failed (%s); retrying", wid, exc)
            self._unplace(wid, requeue=True)
            return
        entry.claiming = True  # the node's changes and the safety poll leave it be now
        self._spawn(self._claim_placed(entry, placed.result()))

    async def _claim_placed(self, entry: _Placing, node: str) -> None:
        wid = entry.workload.id
        run_as = await self._account(entry.workload.owner)
        try:
            if not self._leads():
                raise FencedError(self._fence() or Fence("", 0))
            running = await self.set_status(
                wid, Status.RUNNING, actor="scheduler", node=node, fence=self._fence()
            )
        except (InvalidTransitionError, NotFoundError):
            if self._placing.get(wid) is entry:
                self._unplace(wid)  # killed (or gone) meanwhile
            self._ended(wid)
            return
        except FencedError as exc:
            if self._placing.get(wid) is entry:
                self._unplace(wid, requeue=True)
            self._fenced(exc)
            return
        except Exception as exc:  # the database failing: place it again later
            log.warning("cannot claim %s yet (%s); retrying", wid, exc)
            if self._placing.get(wid) is entry:
                self._unplace(wid, requeue=True)
            return
        if self._placing.get(wid) is not entry:
            return  # killed once claimed (``stopped`` gave its placement back)
        self._drop_placing(wid)
        self._allocated[wid] = (running, entry.devices)  # its resources are taken already
        if not self._leads():  # the lease ran out during the claim: launch nothing
            self._unlaunched[wid] = run_as  # whoever leads next finds it running
            return
        self._start(running, entry.devices, run_as)
        self._poke()  # a pass that stopped at it may go on

    def _unplace(self, wid: str, *, requeue: bool = False) -> None:
        """Give back a placement and its resources; ``requeue``: it stays pending and
        is placed again after ``RETRY_SECONDS``."""
        assert self.executor is not None
        entry = self._drop_placing(wid)
        if entry is None:
            return
        self.executor.unplace(wid)
        self._give_back(entry.workload, entry.devices)
        self._full = True
        if requeue:
            self._requeue(entry.workload)
            self._arm_retry()

    def _drop_placing(self, wid: str) -> _Placing | None:
        entry = self._placing.pop(wid, None)
        if entry is not None and entry.timer is not None:
            entry.timer.cancel()
        return entry

    def _placing_slowly(self, wid: str) -> None:
        """A placement not made yet: store the executor's reason (it is only a reason,
        so one the store refuses is not retried; the next slow placement tries again)."""
        entry = self._placing.get(wid)
        if entry is None or self.executor is None:
            return
        entry.timer = None
        reason = self.executor.placing_reason(entry.workload)
        if self._reasons.get(wid) != reason:
            self._spawn(self._store_placing_reason(wid, reason))

    async def _store_placing_reason(self, wid: str, reason: str) -> None:
        try:
            await self.store.set_pending_reasons([(wid, reason)])
        except Exception as exc:
            log.warning("cannot store the reason of %s (%s)", wid, exc)
            return
        if wid in self._placing:
            self._reasons[wid] = reason

    def _on_change(self) -> None:
        """The executor's capacity changed (nodes joined or left). A placement that no
        node can hold any more gives its resources back and waits, unplaced, like any
        workload larger than every node (it blocks nobody)."""
        self._resize()
        for wid, entry in list(self._placing.items()):
            if not entry.claiming and self._unfit(entry.workload.resources):
                self._unplace(wid, requeue=True)
        self._full = True
        self._poke()

    def _resize(self) -> None:
        """Totals from the executor's capacity; free = total minus what is taken. With
        placement, GPU numbers are only tokens of a count: they are handed out again
        from 0, so that those in use stay inside the new total."""
        assert self.executor is not None
        cap = self.executor.capacity
        taken = [(w, d) for w, d in self._allocated.values()]
        taken += [(p.workload, p.devices) for p in self._placing.values()]
        taken += [(c.workload, c.devices) for c in self._claiming.values()]
        held = [(w.resources, d) for w, d in taken]
        held += [(s.resources, s.devices) for s in self._starting.values()]
        self._total = Free(cap.cpus, cap.memory_mb, set(range(cap.gpus)))
        free = self._total.copy()
        token = 0
        for resources, devices in held:
            free.cpus -= resources.cpus
            free.memory_mb -= resources.memory_mb
            if self.executor.placement:
                devices[:] = range(token, token + len(devices))
                token += len(devices)
            free.gpus -= set(devices)
        self._free = free

    # --- launch ------------------------------------------------------------------------

    def _launch(self, running: Workload, run_as: RunAs | Exception | None) -> None:
        """Take the resources of a workload claimed as running and start its process."""
        devices = sorted(self._free.gpus)[: running.resources.gpus]
        self._allocate(running, devices)
        self._start(running, devices, run_as)

    def _start(
        self, running: Workload, devices: list[int], run_as: RunAs | Exception | None
    ) -> None:
        """Start the process of a workload claimed as running, its resources taken, as
        ``run_as`` (from ``_account``: an error fails the workload)."""
        assert self.executor is not None
        try:
            if isinstance(run_as, Exception):
                raise run_as
            started = self.executor.launch(running, devices, run_as)
        except Exception as exc:
            self._launch_failed(running.id, exc)
            return
        task = asyncio.get_running_loop().create_task(self._launched(running, started))
        self._launches.add(task)
        task.add_done_callback(self._launches.discard)

    async def _account(self, owner: str) -> RunAs | Exception | None:
        """``_run_as``, its error returned rather than raised (it fails the launch)."""
        try:
            return await self._run_as(owner)
        except Exception as exc:
            return exc

    async def _run_as(self, owner: str) -> RunAs | None:
        """The Unix account ``owner``'s workloads run as (None: the server's own).

        A server running as root runs nothing as root for a user without an admin key:
        such a user needs a Unix account (``--unix-user``), else the workload fails
        saying so. Whether the user holds an admin key is asked for every launch, just
        before its claim (a revoked admin key must stop counting at once); only the
        account's uid and groups are kept, by Unix user name."""
        account = await self.store.account_of(owner)
        if account.unix_user is None:
            run_as = None
            if os.geteuid() == 0 and not account.admin:
                raise SpawnError(
                    f"user {owner!r} has no Unix user and this server runs as root, which"
                    " runs nothing as root for a user without an admin key; an admin maps"
                    f" it: corral token create --user {owner} --unix-user ACCOUNT"
                )
        else:
            run_as = self._accounts.get(account.unix_user)
            if run_as is None:
                try:
                    run_as = resolve_run_as(account.unix_user)
                except ValueError as exc:
                    reason = f"cannot run as Unix user {account.unix_user!r}: {exc}"
                    raise SpawnError(reason) from None
                self._accounts[account.unix_user] = run_as
            if run_as.uid == 0 and not account.admin:
                raise SpawnError(f"user {owner!r} maps to uid 0 without an admin key")
        return run_as

    async def _launched(self, workload: Workload, started: Awaitable[None]) -> None:
        """Wait for the claimed workload's process to run (the pass went on: the
        resources are taken, and the executor already knows it is launching)."""
        try:
            await started
        except Exception as exc:
            self._launch_failed(workload.id, exc)
            return
        self._arm_timeout(workload, started_at=None)

    def _launch_failed(self, workload_id: str, exc: Exception) -> None:
        """End a claimed workload whose process could not be started (called from an
        ``except`` block): running→failed with the OS's message, or, for anything
        but a ``SpawnError``, the error's (a bug must not leave it running for ever).
        Reported as an exit is: the next pass sees its resources free again."""
        if isinstance(exc, SpawnError):
            reason = str(exc)
        else:
            log.exception("launching %s failed", workload_id)
            reason = f"{type(exc).__name__}: {exc}"
        self._on_exit(Outcome(workload_id, spawn_error=reason))

    def _allocate(self, workload: Workload, devices: list[int]) -> None:
        self._allocated[workload.id] = (workload, devices)
        self._take(workload, devices)

    def _release(self, workload_id: str) -> None:
        entry = self._allocated.pop(workload_id, None)
        if entry is None:
            return
        self._full = True  # workloads walked before may fit now
        self._give_back(*entry)

    def _take(self, workload: Workload, devices: list[int]) -> None:
        """Resources and its place in its batch's limit, for a workload placed or run."""
        if workload.batch_id is not None and workload.max_running is not None:
            batch = workload.batch_id
            self._batch_running[batch] = self._batch_running.get(batch, 0) + 1
        self._take_resources(workload.resources, devices)

    def _take_resources(self, resources: Resources, devices: list[int]) -> None:
        self._free.cpus -= resources.cpus
        self._free.memory_mb -= resources.memory_mb
        self._free.gpus -= set(devices)

    def _give_back(self, workload: Workload, devices: list[int]) -> None:
        if workload.batch_id is not None and workload.max_running is not None:
            left = self._batch_running.pop(workload.batch_id, 0) - 1
            if left > 0:
                self._batch_running[workload.batch_id] = left
        self._give_back_resources(workload.resources, devices)

    def _give_back_resources(self, resources: Resources, devices: list[int]) -> None:
        self._free.cpus += resources.cpus
        self._free.memory_mb += resources.memory_mb
        # Only tokens still counted: a node that left may have shrunk the total.
        self._free.gpus |= set(devices) & self._total.gpus

    # --- timeouts and exits ----------------------------------------------------------

    def _arm_timeout(self, workload: Workload, *, started_at: str | None) -> None:
        if workload.timeout_seconds is None:
            return
        delay = workload.timeout_seconds
        if started_at is not None:
            elapsed = datetime.now(UTC) - datetime.fromisoformat(started_at)
            delay = max(0.0, delay - elapsed.total_seconds())
        loop = asyncio.get_running_loop()
        self._timers[workload.id] = loop.call_later(delay, self._time_out, workload.id)

    def _time_out(self, workload_id: str) -> None:
        self._timers.pop(workload_id, None)
        if workload_id in self._allocated and self.executor is not None:
            self._timed_out.add(workload_id)
            self.executor.terminate(workload_id)

    def _on_exit(self, outcome: Outcome) -> None:
        self._finish(outcome)
        self._poke()

    def _finish(self, outcome: Outcome) -> None:
        """The process is over: free its resources, then record how it ended (refused,
        harmlessly, when the workload was already made terminal, e.g. killed). An end
        the store cannot take now is kept and retried (see ``_record``)."""
        wid = outcome.workload_id
        timer = self._timers.pop(wid, None)
        if timer is not None:
            timer.cancel()
        entry = self._allocated.get(wid)
        timeout = entry[0].timeout_seconds if entry else None
        timed_out = wid in self._timed_out
        self._timed_out.discard(wid)
        self._unrecorded[wid] = _Ending(*_translate(outcome, timed_out, timeout))
        self._release(wid)
        # The executor stats the log as it reports the exit; a stat here only for
        # one that does not (a second one on the loop for every exit otherwise).
        log_bytes = outcome.log_bytes
        self.tally.exited(self.log_size(wid) if log_bytes is None else log_bytes)
        self._record_soon(wid)

    def _record_ends(self) -> None:
        """Try again to store the ends kept by ``_finish`` (each in a task)."""
        for wid in self._unrecorded:
            self._record_soon(wid)

    def _record_soon(self, wid: str) -> None:
        """Store the kept end of ``wid`` in a task, unless one is under way."""
        if wid not in self._recording:
            self._recording.add(wid)
            self._spawn(self._record(wid))

    async def _record(self, wid: str) -> None:
        """Store the kept end of ``wid``; then (only then) the executor may forget
        it. A refusal keeps it, and arms a retry."""
        ending = self._unrecorded[wid]
        deleted = False
        try:
            await self.set_status(
                wid,
                ending.status,
                exit_code=ending.exit_code,
                reason=ending.reason,
                signal=ending.signal,
                actor="scheduler",
                fence=self._fence(),
            )
        except InvalidTransitionError:
            pass  # already terminal (killed meanwhile): nothing to record
        except NotFoundError:
            deleted = True  # killed and deleted (retention) while its process stopped
        except FencedError as exc:  # kept: written if this server leads again
            self._recording.discard(wid)
            self._fenced(exc)
            return
        except Exception as exc:  # the database failing: keep it, try again soon
            ending.failures += 1
            if ending.failures == 1:
                log.warning("cannot record the end of %s yet (%s); retrying", wid, exc)
            self._arm_retry()
            return
        finally:
            self._recording.discard(wid)
        if ending.failures:
            log.warning("recorded the end of %s (refused %d times before)", wid, ending.failures)
        del self._unrecorded[wid]
        self._ended_by_api.discard(wid)
        if self.executor is not None:
            self.executor.forget(wid)
        self._ended(wid)
        if deleted and self.executor is not None:  # its log, which retention left to now
            await asyncio.to_thread(remove_log, self.executor.logs.path(wid))

    # --- reconciliation --------------------------------------------------------------

    async def _reconcile(self) -> None:
        """The safety net behind the event-driven paths; see the module docstring.

        The store is read while the scheduler goes on, so what it read is compared
        with what the scheduler holds *after* the read, and only what it held
        *before* too: a process is stopped only when its workload was launched
        before the read of the running ones, yet is not among them (terminal in the
        store); a running workload is lost only when nothing of this scheduler holds
        it once read (claimed, launched, or its end kept); a placement or a blocked
        workload is dropped only when it was there before the pending ones were read,
        is still there, and was not read as pending (killed by another process)."""
        assert self.executor is not None
        launched = set(self._allocated)
        running = {w.id async for w in self._iter_store(Status.RUNNING)}
        for wid in (launched & self._allocated.keys()) - running:
            if wid in self._unlaunched:
                del self._unlaunched[wid]
                self._release(wid)  # never launched: no exit will give it back
                self._ended(wid)
                continue
            self.executor.terminate(wid)  # terminal in the store: stop its process
        if not self._leads():
            return  # a server that lost the lease only stops what others ended
        claimed = {wid for wid, entry in self._placing.items() if entry.claiming}
        held = self._allocated.keys() | self._unrecorded.keys() | self._claiming.keys() | claimed
        held |= self._starting.keys()
        for wid in running - held:
            await self._fail_unowned(wid)
        placing = {wid for wid, entry in self._placing.items() if not entry.claiming}
        blocked = set(self._blocked)
        pending = await self._admit_unknown_pending()
        for wid in placing - pending:  # killed by another process
            entry = self._placing.get(wid)
            if entry is not None and not entry.claiming:
                self._unplace(wid)
                self._ended(wid)
        for wid in (blocked & self._blocked.keys()) - pending:  # killed by another process
            self._unblock(wid)
            self._reasons.pop(wid, None)
            self._ended(wid)
        self._recheck.update(self._blocked)  # dependencies may have ended elsewhere
        self._full = True

    async def _admit_unknown_pending(self) -> set[str]:
        """The safety poll's read of the pending workloads: their ids, in pages of
        ``ID_PAGE``, the loop let go between pages (only ids: rebuilding every pending
        workload at every poll cost a deep queue's loop ~180 ms at 100,000, and set off
        full collections of ~300 ms), then those this scheduler does not know, read
        whole and admitted. Returns the ids read."""
        pending: set[str] = set()
        unknown: list[str] = []
        after = None
        while True:
            page = await self.store.pending_ids(after=after, limit=ID_PAGE)
            pending.update(page)
            queued = self._pending  # (where nearly all of them are: the cheap test first)
            unknown += [wid for wid in page if wid not in queued and not self._known(wid)]
            if len(page) < ID_PAGE:
                break
            after = page[-1]
            await asyncio.sleep(0)  # a page read inline does not let the loop go
        for start in range(0, len(unknown), PAGE):
            for workload in await self.store.get_workloads(unknown[start : start + PAGE]):
                if workload.status is Status.PENDING and not self._known(workload.id):
                    self._admit(workload)
                    self._reasons[workload.id] = workload.reason
        return pending

    def _foreign(self, workload: Workload) -> bool:
        """Run by another server's local executor (this one cannot adopt it)."""
        assert self.executor is not None
        return (
            not self.executor.placement
            and workload.node is not None
            and self._node is not None
            and workload.node != self._node
        )

    async def _servers_last_seen(self) -> dict[str, str]:
        """When each server was last seen, by the database's clock."""
        if self.role is None:
            return {}
        return {s.name: s.last_seen or "" for s in await self.store.list_servers()}

    async def _fail_lost_server(self, workload: Workload, stopped_at: dict[str, str]) -> None:
        """A running workload of another server, which no longer schedules: its
        processes are that server's to stop (its shims die with it); here it ends."""
        node = workload.node
        when = stopped_at.get(node or "") or "an unknown time"
        with contextlib.suppress(InvalidTransitionError, NotFoundError):
            await self.set_status(
                workload.id,
                Status.FAILED,
                reason=f"lost: server {node} stopped at {when}",
                actor="scheduler",
                fence=self._fence(),
            )
        self._ended(workload.id)

    async def pause(self) -> None:
        """The lease is lost: claim and launch nothing, write no status; processes
        keep running, and those another leader ends are stopped (``_reconcile``)."""
        self._paused = True
        self._queue_read = False  # another leader may take submits meanwhile
        self._settled = None  # another leader may store reasons meanwhile (``resume``)
        for wid in list(self._placing):
            self._unplace(wid)

    async def resume(self) -> None:
        """The lease is held again: end the running workloads of other servers, take
        in every pending one, forget what reasons were stored (another leader's may
        have replaced them), record the ends kept, and schedule."""
        assert self.executor is not None
        stopped_at = await self._servers_last_seen()
        running: set[str] = set()
        async for workload in self._iter_store(Status.RUNNING):
            running.add(workload.id)
            if self._foreign(workload):
                await self._fail_lost_server(workload, stopped_at)
        # Another leader may have stored reasons of its own meanwhile: what is stored
        # is not known any more, so every reason is stored again, even one this server
        # stored before (the first pass walks everything: ``_settled`` is None).
        self._reasons.clear()
        self._settled = None
        self._paused = False
        for wid in list(self._unlaunched):  # claimed while the lease ran out
            run_as = self._unlaunched.pop(wid)
            if wid in running:  # still ours: launch it now
                self._start(*self._allocated[wid], run_as)
            else:  # ended by another leader meanwhile
                self._release(wid)
                self._ended(wid)
        await self._guard(self._reconcile)
        self._queue_read = True  # (a poll that failed: as a pass would, on what it has)
        self._record_ends()
        self._poke()

    async def wake(self, workload_ids: list[str] | None) -> None:
        """Workloads created by any server (``None``: maybe several, read them all)."""
        if self.executor is None or self._wake is None or not self._leads():
            return
        if workload_ids is None:  # every pending id read, in pages; calls meanwhile join it
            if self._waking_all is not None:
                self._waking_all = True
                return
            try:
                self._waking_all = True
                while self._waking_all:
                    self._waking_all = False
                    await self._admit_unknown_pending()
            except Exception:
                if self._waking_all:  # a call merged into this one is not lost with it
                    self._spawn(self._wake_all_again())  # (a task: it starts after finally)
                raise
            finally:
                self._waking_all = None
            self._poke()
            return
        ids = [i for i in workload_ids if not self._known(i)]
        if not ids:
            return
        for workload in await self.store.get_workloads(ids):
            if workload.status is Status.PENDING and not self._known(workload.id):
                self._admit(workload)
        self._poke()

    async def _wake_all_again(self) -> None:
        try:
            await self.wake(None)
        except Exception as exc:  # (the safety poll reads them all anyway)
            log.warning("reading the pending workloads failed: %s", exc)

    async def killed(self, workload_id: str) -> None:
        """A workload killed through any server: as ``stopped``."""
        if self.executor is None or self._wake is None:
            return
        held = (
            workload_id in self._pending
            or workload_id in self._allocated
            or workload_id in self._placing
            or workload_id in self._claiming
            or workload_id in self._starting
            or workload_id in self._blocked
        )
        if not held:
            return
        with contextlib.suppress(NotFoundError):
            self.stopped(await self.store.get_workload(workload_id))

    async def _fail_unowned(self, workload_id: str) -> None:
        with contextlib.suppress(InvalidTransitionError, NotFoundError):
            await self.set_status(
                workload_id,
                Status.FAILED,
                reason="lost: it is running in the store, but no process of this server runs it",
                actor="scheduler",
                fence=self._fence(),
            )
        self._ended(workload_id)

    async def _iter_store(self, status: Status) -> AsyncIterator[Workload]:
        cursor = None
        while True:
            page = await self.store.list_workloads(statuses=[status], limit=PAGE, cursor=cursor)
            for workload in page.items:
                yield workload
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


def _capacity(amounts: Any) -> Capacity:
    """A published ``{"cpus", "memory_mb", "gpus"}`` (anything else: none)."""
    if not isinstance(amounts, dict):
        return Capacity(0.0, 0, 0)
    return Capacity(
        float(amounts.get("cpus", 0)), int(amounts.get("memory_mb", 0)), int(amounts.get("gpus", 0))
    )


def _excess(res: Resources, total: Free) -> str | None:
    """What ``res`` asks beyond the whole capacity, as "asks for …", or None."""
    for need, have, what in (
        (res.cpus, total.cpus, "CPU"),
        (res.memory_mb, total.memory_mb, "MB of memory"),
        (res.gpus, len(total.gpus), "GPU"),
    ):
        if need > have:
            return f"asks for {amount(need, what)}; this server has {num(have)} in all"
    return None


def _fits_no_node(res: Resources, nodes: list[Node]) -> str | None:
    """What ``res`` asks beyond every alive node, naming the largest, or None."""
    alive = [n for n in nodes if n.alive]
    for node in alive:
        cap = node.capacity
        if fits(res, Free(cap.cpus, cap.memory_mb, set(range(cap.gpus)))):
            return None
    want = ", ".join(
        amount(need, what)
        for need, what in ((res.cpus, "CPU"), (res.memory_mb, "MB of memory"), (res.gpus, "GPU"))
        if need
    )
    if not alive:
        return f"asks for {want}; the cluster has no node now"
    big = max(alive, key=lambda n: (n.capacity.gpus, n.capacity.cpus, n.capacity.memory_mb))
    cap = big.capacity
    return (
        f"asks for {want}, more than any node has; the largest, {big.id} ({big.address}),"
        f" has {amount(cap.cpus, 'CPU')}, {cap.memory_mb} MB of memory,"
        f" {amount(cap.gpus, 'GPU')}"
    )


def _translate(
    outcome: Outcome, timed_out: bool, timeout: float | None
) -> tuple[Status, str | None, int | None, str | None]:
    """(status, reason, exit_code, signal name) for an outcome."""
    if timed_out:  # corral's own signal, as for a kill: no exit code or signal recorded
        return Status.FAILED, f"timed out after {num(timeout or 0)} s", None, None
    if outcome.spawn_error is not None:
        return Status.FAILED, f"spawn failed: {outcome.spawn_error}", None, None
    if outcome.lost is not None:
        return Status.FAILED, f"lost: {outcome.lost}", None, None
    if outcome.signal is not None:
        name = outcome.signal_name
        return Status.FAILED, f"killed by signal {name}", None, name
    if outcome.exit_code == 0:
        return Status.COMPLETED, None, 0, None
    return Status.FAILED, None, outcome.exit_code, None
