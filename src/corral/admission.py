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
capacity or takes a queued workload away makes that state stale: walk from the front
(which may stop early, below).

**Stopping early.** A walk after an exit must not cost a look at every workload
(100,000 queued behind a full machine took 170 ms of the server's one loop per exit).
From the point where the head of the line is set and the last workload of the walk
has started, nothing changes any more what is free, what is available or who the
head is, so every later workload that is not batch-limited waits with the reason of
its key, ``_waits(resources, mine, free, head)`` (rule 3 or 5). So a walk told what
the walks before it left the end of the queue (``settled``: everything they walked
after their own such point waits with its key's reason under their head and what
was then free) and how many workloads of each shape ``queue`` holds (``shapes``; no
batch-limited one among them) stops after a workload ``w`` when

1. the head of the line is set;
2. no shape not walked yet can start: each either does not fit what is available or
   is ``unfit`` (what is available only shrinks, so nothing later starts, and what
   is free and the head stay as they are);
3. every shape not walked yet gets, as mine and as another owner's, the reason it was
   given under ``settled`` (if the head's owner changed, so did the head: a reason
   that names it differs in its "mine" form, and one that does not is the same for
   everyone);
4. ``w`` ranks at or after ``settled.after``: everything left is in what ``settled``
   speaks for.

Then each workload left would be given the reason it already has and none would
start: the walk decides exactly as one over everything, and its reasons differ from
that walk's only by leaving out those unchanged. Condition 2 and 3 are asked only
past ``settled.after`` with the head set, of one shape at a time: an answer holds
until a start or the head set (then every shape is asked again), and a shape that
fails is asked again only once walked to its last. The caller keeps ``shapes`` (a
count per shape); a walk asks about at most one shape per workload walked past
``settled.after``, beyond ``CREDIT`` (so many shapes cannot make a walk that does
not stop cost more than about a walk over everything: asking every shape left each
time one ran out was quadratic in the shapes), and the common exit (the next in line
starts, its successor becomes the head, everyone behind is told "waiting for 1 CPU, 0
free" as before) walks two workloads. ``Decision.settled`` hands on what this walk
told: everything after its last start or head, with what is free now; a walk resumed
over new submits that began and ended with the head and room of ``settled`` (it
started nothing that took anything) extends it instead. ``settled`` holds only under
the same ``unfit``: the caller drops it when that changed, or when the reasons it
speaks for were not all stored; a workload queued in the middle of it (a priority
ranking inside it) moves its ``after`` to that workload, so the walk goes past it.

``dependencies`` is the rule of a workload that waits for others (it is not queued
until they are met).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from corral.model import TERMINAL, Resources, Status, Workload

REASON_IDS = 3
"""How many unmet dependencies a reason names before "and N more"."""
CREDIT = 64
"""How many shapes a walk that may stop early asks about before it has walked as
many workloads past where the walks before stopped telling (see ``_walk_settling``)."""

Shape = tuple[float, int, int, bool]
"""cpus, memory_mb, gpus, and whether the workload's owner is the head of the line's."""
ResShape = tuple[float, int, int]
"""cpus, memory_mb, gpus: what a workload asks for."""
Rank = tuple[int, str]


def rank(workload: Workload) -> Rank:
    """Queue order: higher priority first, then submission order (ids grow)."""
    return (-workload.priority, workload.id)


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


@dataclass(frozen=True, slots=True)
class Settled:
    """What the walks so far told the end of the queue: every workload they walked
    that ranks after ``after``, unless batch-limited, waits with the reason its key
    gets behind ``head`` with ``room`` free (CPUs, MB of memory, a count of GPUs):
    the head of the line and what was free once the last of them started."""

    after: Rank
    room: tuple[float, int, int]
    head: Workload


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
    settled: Settled | None
    """What this walk and those before it told the end of the queue, for the next
    walk to stop early (None: nothing it could use)."""

    @property
    def walked(self) -> int:
        """How many workloads the walk looked at (each starts or gets a reason)."""
        return len(self.start) + len(self.reasons)

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
    settled: Settled | None = None,
    shapes: Mapping[ResShape, int] | None = None,
) -> Decision:
    """Walk ``queue`` (pending workloads in rank order, none blocked) over ``free``
    (what the running workloads leave), ``batch_running`` (workloads holding
    resources, by batch id, for batches with a limit) and ``unfit`` (what a workload
    asks beyond anything that could ever run it, or None); see the module docstring.
    ``resume``: the ``Decision.resume`` of the walk this one continues. ``settled``:
    the ``Decision.settled`` of the walks before, under the same ``unfit``; with
    ``shapes`` (how many workloads of ``queue`` ask for each ``ResShape``, none of
    them batch-limited), the walk may stop early (see "Stopping early")."""
    walk = _Walk(free, batch_running, unfit, resume)
    items = iter(queue)
    if settled is None or shapes is None or not _walk_settling(walk, items, settled, shapes):
        _walk_all(walk, items)
    return Decision(walk.start, walk.reasons, walk.head, walk.resume(), walk.settled(settled))


def _walk_all(walk: _Walk, queue: Iterator[Workload]) -> None:
    """The walk over the rest of ``queue``, each workload in turn."""
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


def _walk_settling(
    walk: _Walk, queue: Iterator[Workload], settled: Settled, shapes: Mapping[ResShape, int]
) -> bool:
    """The walk over ``queue`` until it may stop (True), or over all of it (False);
    see "Stopping early" in the module docstring. Whether it may is asked only past
    ``settled.after`` with the head of the line set (``_Asking``)."""
    asking = _Asking(walk, settled, shapes)
    left = asking.left
    for workload in queue:
        if workload.max_running is not None:  # not as promised: walk everything
            _walk_all(walk, itertools.chain([workload], queue))
            return False
        res = workload.resources
        key = (res.cpus, res.memory_mb, res.gpus)
        count = left.get(key)
        if count is not None:
            left[key] = count - 1
        last = walk.last
        walk.step(workload)
        if walk.last is not last:  # a start, or the head set
            asking.changed()
        if walk.head is not None and rank(workload) >= settled.after and asking.done():
            return True
    return False


class _Asking:
    """Whether a walk may stop, asked one shape at a time (``_Walk.told``): each at
    most once until what the answer depends on changes (a start, the head set:
    ``changed``, and every shape is asked again); a shape that fails
    is asked again only once walked to its last. ``left`` counts the shapes not walked
    yet (one walked to its last stays, at 0: ``keys`` goes on over it). Each call of
    ``done`` (a workload walked) allows one more shape to be asked, ``CREDIT`` to begin
    with, so a walk that cannot stop costs about what a walk over everything does."""

    __slots__ = ("credit", "failed", "key", "keys", "left", "settled", "walk")

    def __init__(self, walk: _Walk, settled: Settled, shapes: Mapping[ResShape, int]) -> None:
        self.walk, self.settled = walk, settled
        self.left = dict(shapes)
        self.keys: Iterator[ResShape] | None = None  # the shapes to ask since the last change
        self.key: ResShape | None = None  # the one asked next (it failed: ``failed``)
        self.failed = False
        self.credit = CREDIT

    def changed(self) -> None:
        """What is free or available, or the head, changed: every answer may."""
        self.keys, self.key = None, None

    def done(self) -> bool:
        """True once every shape left was asked since the last change, and told."""
        self.credit += 1
        left = self.left
        if self.keys is None:
            self.keys = iter(left)
        while True:
            key = self.key
            if key is None:
                key = self.key = next(self.keys, None)
                if key is None:
                    return True  # every shape left is told what it was, none starts
                self.failed = False
            if left[key] <= 0:  # walked to its last: nothing left to ask it of
                self.key = None
                continue
            if self.failed or self.credit <= 0:
                return False
            self.credit -= 1
            if not self.walk.told(key, self.settled):
                self.failed = True
                return False
            self.key = None


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

    def room(self) -> tuple[float, int, int]:
        return (self.cpus, self.memory_mb, self.gpus)

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
        "began",
        "free",
        "free_gpus",
        "head",
        "last",
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
        self.last: Workload | None = None  # the last one this walk started or made head
        self.began = (self.head, self.free.room())  # the head and what was free at first

    def resume(self) -> Pass:
        avail = self.avail
        return Pass(avail.cpus, avail.memory_mb, avail.gpus, self.head, self.waiting)

    def settled(self, before: Settled | None) -> Settled | None:
        """What this walk (and the walks before it, ``before``) told the end of the
        queue: everything after the last workload it started or made the head of the
        line (whose reasons were given with what is free now); or, when it began with
        ``before``'s head and room and ends with that room, ``before``'s end of the
        queue too (what was free never changed: every reason it gave is ``before``'s)."""
        head = self.head
        if head is None:
            return None
        room = self.free.room()
        if before is not None and self.began == (before.head, before.room) == (head, room):
            return Settled(before.after, room, head)
        if self.last is not None:
            return Settled(rank(self.last), room, head)
        return None

    def step(self, workload: Workload) -> None:
        """Start ``workload`` or give it its reason: the loop of ``_walk_all``, once."""
        if workload.max_running is not None:
            full = self.batch_full(workload)
            if full is not None:
                self.reasons.append((workload.id, full))
                return
        res = workload.resources
        head = self.head
        mine = head is not None and head.owner == workload.owner
        shape = (res.cpus, res.memory_mb, res.gpus, mine)
        reason = self.waiting.get(shape)
        if reason is None:
            reason = self.start_or_why(workload, shape)
            if reason is None:
                return
        self.reasons.append((workload.id, reason))

    def told(self, key: ResShape, settled: Settled) -> bool:
        """True when workloads of ``key`` cannot start (it does not fit what is
        available, or ``unfit`` says it never could) and would be told what
        ``settled`` told them, whoever their owner (the head of the line set: a reason
        depends only on the shape and whether the owner is the head's)."""
        head = self.head
        assert head is not None
        cpus, memory_mb, gpus = key
        res = Resources.model_construct(cpus=cpus, memory_mb=memory_mb, gpus=gpus)
        excess = self.unfit(res)
        if excess is None and self.avail.fits(res):
            return False
        free = self.free
        if head is settled.head and free.room() == settled.room:
            return True
        # Both forms agree only if neither names the head (then "mine" changes
        # nothing), or if the head is the same (then so is its owner).
        before = _Room(*settled.room)
        return all(
            _waits(res, mine, free, head, excess) == _waits(res, mine, before, settled.head, excess)
            for mine in (True, False)
        )

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
        self.last = workload
        self.waiting, self.owned = {}, True  # what is free changed

    def _why_waiting(self, workload: Workload, shape: Shape) -> str:
        """The reason of a workload that does not fit in what is available; the first
        becomes the head of the line and reserves what it needs."""
        res = workload.resources
        excess = self.unfit(res)
        head = self.head
        if head is None and not excess:
            self.head = self.last = workload
            reason = self.avail.shortfall(res)
            self.avail.take(res)  # reserve what the head of the line needs
            return reason  # the next workload of its shape waits behind it instead
        # Behind the head; or never runnable (``excess``: only after a restart with less
        # capacity, or nodes left), which blocks nothing.
        reason = _waits(
            res, head is not None and head.owner == workload.owner, self.free, head, excess
        )
        if not self.owned:
            self.waiting, self.owned = dict(self.waiting), True
        self.waiting[shape] = reason
        return reason


def _waits(
    res: Resources, mine: bool, free: _Room, head: Workload | None, excess: str | None
) -> str:
    """The reason of a workload that does not start, once the head of the line is set
    (or that nothing could ever run: ``excess``): a function of its resources, whether
    its owner is the head's (``mine``), what is ``free`` and the head alone."""
    if excess:
        return f"waiting, but it {excess}"
    assert head is not None
    if free.fits(res):
        # Another user's workload is not theirs to see, not even its id.
        behind = head.id if mine else "another user's workload"
        return f"waiting behind {behind} (priority {head.priority}), which needs more"
    return free.shortfall(res)


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
