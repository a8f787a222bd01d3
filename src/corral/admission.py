"""Admission: which pending workloads start now. A pure function of the queue and
what is free; no I/O, no clock, no executor, no store (the scheduler claims,
launches and stores what it decides; see ``corral.scheduler``).

``admit`` walks the queue in rank order (higher priority first, then submission
order) and applies these rules to each workload:

1. **Batch limit.** A workload of a batch with ``max_running`` waits while that many
   of its batch hold resources ("waiting: N of its batch already running (limit L)"),
   counting those this walk starts. It reserves nothing.
2. **Start.** One whose CPUs, memory and GPUs fit in what is *available* (free, minus
   what this walk started, minus the reservation), and that something could run at all
   (``unfit`` is None), starts: it is given the lowest free GPU ids.
   Only what is asked counts: a workload asking for no CPUs fits even when the
   reservation took them all.
3. **Never runnable.** One that nothing could run (``unfit`` names why: more than the
   whole capacity after a restart with less, more than any node) waits with
   "waiting, but it …" and holds nothing back.
4. **Head of the line.** The first other one that does not fit is the head of the
   line: it *reserves* what it needs (taken from what is available), so smaller
   workloads behind it cannot starve it. Its reason is what it lacks in what was
   available ("waiting for 2 GPUs, 0 free").
5. **Behind.** Every later one that does not fit either waits behind the head ("waiting
   behind <id> (priority P), which needs more", where another owner's head is only
   "another user's workload") when it would fit in what is free without the
   reservation, or else waits for what it lacks in what is free.

The reason of a waiting workload depends only on its shape (CPUs, memory, GPUs, and
whether its owner is the head's) until something starts, so it is computed once per
shape and reused: a walk over 20,000 queued behind a full machine is a dictionary
look-up each.

**Resuming.** A walk returns where it stopped (``Decision.resume``: what is available,
the head, the reasons by shape). When only submits followed, and they rank after
everything walked, the next walk may resume from there over just the new tail, and
decides exactly as a walk over the whole queue would; it is given the free capacity
and batch counts *after* the starts of the walk it resumes. Anything that frees
capacity or takes a queued workload away makes that state stale: walk everything.

``dependencies`` is the rule of a workload that waits for others (it is not queued
until they are met).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from corral.model import TERMINAL, Resources, Status, Workload

REASON_IDS = 3
"""How many unmet dependencies a reason names before "and N more"."""

Shape = tuple[float, int, int, bool]
"""cpus, memory_mb, gpus, and whether the workload's owner is the head of the line's."""


@dataclass(slots=True)
class Free:
    """Capacity not taken: CPUs, MB of memory (either may be negative after the
    capacity shrank), and the GPU ids."""

    cpus: float
    memory_mb: int
    gpus: set[int] = field(default_factory=set)

    def copy(self) -> Free:
        return Free(self.cpus, self.memory_mb, set(self.gpus))


@dataclass(slots=True)
class Pass:
    """Where a walk stopped, for the next one to resume from: what is left for the
    workloads behind (the reservation taken out; GPUs as a count), the head of the
    line, and the reason given to each shape that does not fit."""

    cpus: float
    memory_mb: int
    gpus: int
    head: Workload | None
    waiting: dict[Shape, str]
    """Not changed by the walks that resume from it."""


@dataclass(slots=True)
class Start:
    """A workload to start now, with the GPU devices it gets."""

    workload: Workload
    gpus: list[int]


@dataclass(slots=True)
class Decision:
    start: list[Start]
    """In queue order."""
    reasons: list[tuple[str, str]]
    """(id, reason) of every workload walked that waits, in queue order."""
    head: Workload | None
    """The head of the line (it may be from the walk resumed), or None."""
    resume: Pass

    @property
    def reserved(self) -> Resources | None:
        """What is held back for the head of the line."""
        return self.head.resources if self.head is not None else None


def runs_anywhere(res: Resources) -> str | None:
    """The default ``unfit``: every workload could run somewhere."""
    return None


def admit(
    queue: Iterable[Workload],
    free: Free,
    batch_running: Mapping[str, int],
    *,
    unfit: Callable[[Resources], str | None] = runs_anywhere,
    resume: Pass | None = None,
) -> Decision:
    """Walk ``queue`` (pending workloads in rank order, none blocked) over ``free``
    (what the running workloads leave), ``batch_running`` (workloads holding
    resources, by batch id, for batches with a limit) and ``unfit`` (what a workload
    asks beyond anything that could ever run it, or None); see the module docstring.
    ``resume``: the ``Decision.resume`` of the walk this one continues."""
    walk = _Walk(free, batch_running, unfit, resume)
    waiting, add = walk.waiting, walk.reasons.append  # the loop is hot: locals
    for workload in queue:
        if workload.max_running is not None:
            full = walk.batch_full(workload)
            if full is not None:  # skipped: it reserves nothing
                add((workload.id, full))
                continue
        res = workload.resources
        head = walk.head
        # A reason may name the head of the line only to its owner: keyed by both.
        mine = head is not None and head.owner == workload.owner
        shape = (res.cpus, res.memory_mb, res.gpus, mine)
        reason = waiting.get(shape)
        if reason is None:
            reason = walk.start_or_why(workload, shape)
            waiting = walk.waiting  # replaced, not changed: a resumed walk's is shared
            if reason is None:
                continue
        add((workload.id, reason))
    return Decision(walk.start, walk.reasons, walk.head, walk.resume())


class _Room:
    """CPUs, MB of memory and a count of GPUs: what a walk has left."""

    __slots__ = ("cpus", "gpus", "memory_mb")

    def __init__(self, cpus: float, memory_mb: int, gpus: int) -> None:
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.gpus = gpus

    def fits(self, res: Resources) -> bool:
        """Only what is asked for counts: a workload asking for no CPUs fits even when
        a reservation has taken them all."""
        return (
            (not res.cpus or res.cpus <= self.cpus)
            and (not res.memory_mb or res.memory_mb <= self.memory_mb)
            and res.gpus <= self.gpus
        )

    def take(self, res: Resources) -> None:
        """CPUs and memory may go below 0 (a reservation of more than is left), GPUs
        not."""
        self.cpus -= res.cpus
        self.memory_mb -= res.memory_mb
        self.gpus = max(self.gpus - res.gpus, 0)

    def shortfall(self, res: Resources) -> str:
        """What ``res`` lacks here, as a reason: GPUs first, then CPUs, then memory."""
        if res.gpus > self.gpus:
            return f"waiting for {amount(res.gpus, 'GPU')}, {self.gpus} free"
        if res.cpus > self.cpus:
            return f"waiting for {amount(res.cpus, 'CPU')}, {num(max(self.cpus, 0))} free"
        return f"waiting for {res.memory_mb} MB of memory, {max(self.memory_mb, 0)} MB free"


class _Walk:
    """The state of one walk; ``admit`` runs the loop."""

    __slots__ = (
        "avail",
        "batch_running",
        "free",
        "free_gpus",
        "head",
        "owned",
        "reasons",
        "start",
        "started",
        "unfit",
        "waiting",
    )

    def __init__(
        self,
        free: Free,
        batch_running: Mapping[str, int],
        unfit: Callable[[Resources], str | None],
        resume: Pass | None,
    ) -> None:
        self.free_gpus = sorted(free.gpus)  # what is free, less what starts now
        self.free = _Room(free.cpus, free.memory_mb, len(self.free_gpus))
        if resume is None:
            self.avail = _Room(free.cpus, free.memory_mb, len(self.free_gpus))
            self.head: Workload | None = None
            self.waiting: dict[Shape, str] = {}
        else:
            self.avail = _Room(resume.cpus, resume.memory_mb, resume.gpus)
            self.head = resume.head
            self.waiting = resume.waiting  # shared: copied before the first change
        self.owned = resume is None
        self.batch_running = batch_running
        self.started: dict[str, int] = {}  # by batch: how many this walk starts
        self.unfit = unfit
        self.start: list[Start] = []
        self.reasons: list[tuple[str, str]] = []

    def resume(self) -> Pass:
        avail = self.avail
        return Pass(avail.cpus, avail.memory_mb, avail.gpus, self.head, self.waiting)

    def batch_full(self, workload: Workload) -> str | None:
        """Its reason when its batch already has ``max_running`` holding resources."""
        limit, batch = workload.max_running, workload.batch_id
        if limit is None or batch is None:
            return None
        running = self.batch_running.get(batch, 0) + self.started.get(batch, 0)
        if running < limit:
            return None
        return f"waiting: {running} of its batch already running (limit {limit})"

    def start_or_why(self, workload: Workload, shape: Shape) -> str | None:
        """Start the workload if it fits (None), else the reason it waits."""
        res = workload.resources
        if self.avail.fits(res) and self.unfit(res) is None:
            self._start(workload)
            return None
        return self._why_waiting(workload, shape)

    def _start(self, workload: Workload) -> None:
        res = workload.resources
        devices = self.free_gpus[: res.gpus]
        del self.free_gpus[: res.gpus]
        self.free.take(res)
        self.avail.take(res)
        if workload.max_running is not None and workload.batch_id is not None:
            self.started[workload.batch_id] = self.started.get(workload.batch_id, 0) + 1
        self.start.append(Start(workload, devices))
        self.waiting, self.owned = {}, True  # what is free changed

    def _why_waiting(self, workload: Workload, shape: Shape) -> str:
        """The reason of a workload that does not fit in what is available; the first
        becomes the head of the line and reserves what it needs."""
        res = workload.resources
        excess = self.unfit(res)
        if excess:  # only after a restart with less capacity (or nodes left): no blocking
            reason = f"waiting, but it {excess}"
        elif self.head is None:
            self.head = workload
            reason = self.avail.shortfall(res)
            self.avail.take(res)  # reserve what the head of the line needs
            return reason  # the next workload of its shape waits behind it instead
        elif self.free.fits(res):
            head = self.head
            # Another user's workload is not theirs to see, not even its id.
            behind = head.id if head.owner == workload.owner else "another user's workload"
            reason = f"waiting behind {behind} (priority {head.priority}), which needs more"
        else:
            reason = self.free.shortfall(res)
        if not self.owned:
            self.waiting, self.owned = dict(self.waiting), True
        self.waiting[shape] = reason
        return reason


def fits(res: Resources, free: Free) -> bool:
    """True when ``res`` fits in ``free``; only what is asked for counts."""
    return _Room(free.cpus, free.memory_mb, len(free.gpus)).fits(res)


def amount(value: float, unit: str) -> str:
    """``2 GPUs``, ``1 CPU``, ``0.5 CPUs``, ``4096 MB of memory``."""
    plural = "" if value == 1 or unit.startswith("MB") else "s"
    return f"{num(value)} {unit}{plural}"


def num(value: float) -> str:
    """``2``, ``0.5``, ``100000000`` (never ``1e+08``)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --- dependencies -----------------------------------------------------------------------


def dependencies(
    workload: Workload, statuses: Mapping[str, Status], active: Mapping[str, object]
) -> tuple[Literal["met", "wait", "kill"], str]:
    """Whether a workload's dependencies are met (``statuses``: theirs, as stored;
    ``active``: the ids of workloads whose processes are not over); else why it
    waits ("waiting for … to complete"), or why it must be killed ("dependency …
    failed"). afterok: met when every one completed, killed when one failed or was
    killed; afterany: met when every one is terminal with its process gone; either
    killed when one does not exist."""
    afterok = workload.dependency_type == "afterok"
    unmet = []
    for dep in workload.depends_on:
        status = statuses.get(dep)
        if status is None:
            return "kill", f"dependency {dep} does not exist"
        if afterok and status is Status.FAILED:
            return "kill", f"dependency {dep} failed"
        if afterok and status is Status.KILLED:
            return "kill", f"dependency {dep} was killed"
        if status not in TERMINAL or dep in active:
            unmet.append(dep)
    if not unmet:
        return "met", ""
    named = ", ".join(unmet[:REASON_IDS])
    if len(unmet) > REASON_IDS:
        named += f" and {len(unmet) - REASON_IDS} more"
    return "wait", f"waiting for {named} to {'complete' if afterok else 'end'}"
