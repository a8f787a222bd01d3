"""Walks that stop early (``admit``'s ``settled`` and ``shapes``; the module docstring's
"Stopping early") against walks over the whole queue: random queues (shapes, owners,
priorities, batch limits, what nothing could run), then random exits, kills and
submits (in rank order or ahead of it), each followed now and then by a pass. A pass
is made as the scheduler makes it: from the front of the queue when anything but
submits happened, over what was walked before with what the passes before told the
end of the queue (``settled``) and its shapes counted, then over what was submitted
since, resuming; after submits only, over those, resuming. Beside it, today's pass
(before walks stopped early): a walk over the whole queue, or over the submits,
resuming. The same workloads start, with the same GPUs, and once each pass's reasons
are stored every queued workload holds the same reason in both; after a pass from the
front, the reason a walk over the whole queue gives it now.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from unittest.mock import patch

import hypothesis.strategies as st
from hypothesis import event, given, settings

from corral import admission
from corral.admission import Decision, Free, Pass, Settled, admit, rank
from corral.model import Workload
from tests.test_admission import BATCHES, OWNERS, Case, cases, workload


@dataclass
class Model:
    """The scheduler's side of the protocol, without its store and processes."""

    case: Case
    queue: list[Workload]
    free: Free
    batch_running: dict[str, int]
    walked: int = 0
    """``queue[:walked]`` was walked by the passes (or put there since, ahead of them)."""
    full: bool = True
    last: Pass | None = None
    settled: Settled | None = None
    running: list[tuple[Workload, list[int]]] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    """As stored: what the passes gave (only those that changed are written)."""
    today: Pass | None = None
    """Where today's last walk stopped (a walk over everything after anything but
    submits, else over the submits, resuming)."""
    today_reasons: dict[str, str] = field(default_factory=dict)
    """The reasons today's passes store."""
    stops: int = 0
    fronts: list[int] = field(default_factory=list)
    """How many workloads each pass from the front walked before what was submitted."""
    backwards: bool = False
    """``shapes`` lists the shapes of the last workloads first (the scheduler's lists
    them as they were first queued: in any order)."""

    def take(self, decision: Decision) -> None:
        for start in decision.start:
            w, res = start.workload, start.workload.resources
            self.free.cpus -= res.cpus
            self.free.memory_mb -= res.memory_mb
            self.free.gpus -= set(start.gpus)
            if w.max_running is not None and w.batch_id is not None:
                self.batch_running[w.batch_id] = self.batch_running.get(w.batch_id, 0) + 1
            self.running.append((w, start.gpus))
            self.reasons.pop(w.id, None)
            self.today_reasons.pop(w.id, None)
        started = {s.workload.id for s in decision.start}
        self.queue = [w for w in self.queue if w.id not in started]

    def exit(self, k: int) -> None:
        if not self.running:
            return
        w, gpus = self.running.pop(k % len(self.running))
        self.free.cpus += w.resources.cpus
        self.free.memory_mb += w.resources.memory_mb
        self.free.gpus |= set(gpus)
        if w.max_running is not None and w.batch_id is not None:
            self.batch_running[w.batch_id] -= 1
        self.full = True

    def kill(self, k: int) -> None:
        if not self.queue:
            return
        i = k % len(self.queue)
        w = self.queue.pop(i)
        self.reasons.pop(w.id, None)
        self.today_reasons.pop(w.id, None)
        if i < self.walked:
            self.walked -= 1
        self.full = True

    def submit(self, w: Workload) -> None:
        at = sum(1 for q in self.queue if rank(q) < rank(w))
        self.queue.insert(at, w)
        if at < self.walked:  # ahead of workloads walked: a pass from the front
            self.walked += 1
            self.full = True
            if self.settled is not None and rank(w) > self.settled.after:
                self.settled = dataclasses.replace(self.settled, after=rank(w))

    def run_pass(self) -> None:
        c = self.case
        # Today's pass first (on copies: the pass below takes what starts): a walk over
        # the whole queue, or after submits only, over those, resuming.
        full = self.full or self.last is None
        if full:
            today = admit(self.queue, self.free.copy(), dict(self.batch_running), unfit=c.unfit)
        else:
            today = admit(
                self.queue[self.walked :],
                self.free.copy(),
                dict(self.batch_running),
                unfit=c.unfit,
                resume=self.today,
            )
        self.today = today.resume
        self.today_reasons.update(today.reasons)
        starts: list[tuple[str, list[int]]] = []
        if full:
            old, new = self.queue[: self.walked], self.queue[self.walked :]
            usable = self.settled is not None and all(w.max_running is None for w in self.queue)
            shapes = Counter(
                (w.resources.cpus, w.resources.memory_mb, w.resources.gpus)
                for w in (reversed(old) if self.backwards else old)
            )
            first = admit(
                old,
                self.free,
                self.batch_running,
                unfit=c.unfit,
                settled=self.settled if usable else None,
                shapes=shapes if usable else None,
            )
            if first.walked < len(old):
                self.stops += 1
            self.fronts.append(first.walked)
            decisions = [first]
            self.take(first)
            if new:
                decisions.append(
                    admit(
                        new,
                        self.free,
                        self.batch_running,
                        unfit=c.unfit,
                        resume=first.resume,
                        settled=first.settled,
                    )
                )
                self.take(decisions[-1])
        else:
            decisions = [
                admit(
                    self.queue[self.walked :],
                    self.free,
                    self.batch_running,
                    unfit=c.unfit,
                    resume=self.last,
                    settled=self.settled,
                )
            ]
            self.take(decisions[0])
        for d in decisions:
            starts += [(s.workload.id, s.gpus) for s in d.start]
            self.reasons.update(d.reasons)
        assert starts == [(s.workload.id, s.gpus) for s in today.start]
        queued = [w.id for w in self.queue]
        assert [self.reasons.get(w) for w in queued] == [self.today_reasons.get(w) for w in queued]
        if full:  # exactly what a walk over the whole queue gives now
            assert {w: self.reasons[w] for w in queued} == dict(today.reasons)
        self.walked, self.full = len(self.queue), False
        self.last, self.settled = decisions[-1].resume, decisions[-1].settled


SHAPES = [(1.0, 0, 0), (2.0, 0, 0), (1.0, 512, 0), (0.5, 100, 1), (0.0, 0, 0), (3.0, 1000, 2)]


@st.composite
def deep_cases(draw: st.DrawFn) -> Case:
    """A queue deeper than what is free, of a few shapes (batch limits in some)."""
    most = draw(st.sampled_from([1, 1, 2, 3]))  # often one shape: the usual deep queue
    shapes = draw(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=most, unique=True))
    batches = draw(st.sampled_from([[None], [None], [None], [None, None, None, *BATCHES]]))
    items = draw(
        st.lists(
            st.tuples(
                st.sampled_from(OWNERS),
                st.sampled_from([0, 0, 0, 1, 2]),
                st.sampled_from(shapes),
                st.sampled_from(batches),
            ),
            min_size=3,
            max_size=40,
        )
    )
    queue = [
        workload(
            n,
            owner=o,
            priority=p,
            cpus=c,
            memory_mb=m,
            gpus=g,
            batch=b,
            max_running=2 if b else None,
        )
        for n, (o, p, (c, m, g), b) in enumerate(items)
    ]
    queue.sort(key=rank)
    free = Free(
        draw(st.sampled_from([0.0, 1.0, 2.0, 2.0, 3.5])),
        draw(st.sampled_from([0, 1000, 2000, 2000])),
        draw(st.sets(st.integers(0, 3), max_size=2)),
    )
    case = Case(queue, free, {}, lambda res: None)
    kind = draw(st.sampled_from(["none", "none", "total", "shapes"]))
    if kind == "total":  # what asks more than all there is never runs
        case.unfit = lambda res: (
            "asks for too much" if res.cpus > 3.5 or res.gpus > 3 or res.memory_mb > 2000 else None
        )
    elif kind == "shapes":
        never = draw(st.sampled_from(shapes))
        case.unfit = lambda res: (
            f"fits no node ({res.gpus} GPUs)"
            if (res.cpus, res.memory_mb, res.gpus) == never
            else None
        )
    return case


@st.composite
def step(draw: st.DrawFn) -> tuple[str, object]:
    """An exit (most often), a pass, a submit or a kill."""
    kind = draw(st.sampled_from(["exit"] * 4 + ["pass"] * 3 + ["submit"] * 2 + ["kill"]))
    if kind in ("exit", "kill"):
        return (kind, draw(st.integers(0, 100)))
    if kind == "pass":
        return (kind, 0)
    return (
        kind,
        (
            draw(st.sampled_from(OWNERS)),
            draw(st.sampled_from([0, 0, 0, 1, 2])),
            draw(st.sampled_from(SHAPES)),
            draw(st.sampled_from([None] * 12 + BATCHES)),
        ),
    )


ops = st.lists(step(), min_size=8, max_size=60)


@settings(max_examples=600, deadline=None)
@given(st.one_of(deep_cases(), deep_cases(), cases()), ops)
def test_passes_that_stop_early_decide_and_explain_as_walks_over_everything(
    case: Case, steps: list[tuple[str, object]]
) -> None:
    play(case, steps)


@settings(max_examples=200, deadline=None)
@given(st.one_of(deep_cases(), cases()), ops, st.integers(0, 2), st.booleans())
def test_walks_that_may_ask_few_shapes_at_a_time_decide_and_explain_the_same(
    case: Case, steps: list[tuple[str, object]], credit: int, backwards: bool
) -> None:
    """As above, with no ``CREDIT`` (or little): a walk asks about one shape (or two,
    three) per workload it walks past where the walks before stopped telling; the
    shapes in queue order or backwards."""
    with patch.object(admission, "CREDIT", credit):
        play(case, steps, backwards=backwards)


def play(case: Case, steps: list[tuple[str, object]], *, backwards: bool = False) -> None:
    model = Model(case, list(case.queue), case.free.copy(), dict(case.batch_running))
    model.backwards = backwards
    model.run_pass()
    serial = 1000
    for op, arg in steps:
        if op == "exit":
            assert isinstance(arg, int)
            model.exit(arg)
        elif op == "kill":
            assert isinstance(arg, int)
            model.kill(arg)
        elif op == "submit":
            assert isinstance(arg, tuple)
            owner, priority, (cpus, memory_mb, gpus), batch = arg
            serial += 1
            model.submit(
                workload(
                    serial,
                    owner=owner,
                    priority=priority,
                    cpus=cpus,
                    memory_mb=memory_mb,
                    gpus=gpus,
                    batch=batch,
                    max_running=2 if batch else None,
                )
            )
        else:
            model.run_pass()
    model.run_pass()
    event(f"passes stopped early: {min(model.stops, 3)}{'+' if model.stops >= 3 else ''}")


def test_an_exit_behind_a_full_machine_walks_two_workloads() -> None:
    """The common exit: the next in line starts, its successor becomes the head of the
    line, and everyone behind is told what they were told: the walk stops there."""
    queue = [
        workload(n, owner=OWNERS[n % 2], priority=0, cpus=1.0, memory_mb=0, gpus=0)
        for n in range(2000)
    ]
    case = Case(queue, Free(2.0, 0, set()), {}, lambda res: None)
    model = Model(case, queue, Free(2.0, 0, set()), {})
    model.run_pass()  # two start, the third is the head
    assert len(model.queue) == 1998
    for k in range(20):
        model.exit(k)
        model.run_pass()
    assert model.fronts[1:] == [2] * 20


def one(n: int, cpus: float, gpus: int = 0, owner: str = "alice") -> Workload:
    return workload(n, owner=owner, priority=0, cpus=cpus, memory_mb=0, gpus=gpus)


def model_of(queue: list[Workload], free: Free) -> Model:
    return Model(Case(queue, free, {}, lambda res: None), queue, free.copy(), {})


def test_a_walk_stops_only_past_what_the_last_one_told() -> None:
    """The head of the line (it wants a GPU) reserves no CPU; a workload behind it
    starts, so those between were told about 2 free CPUs, those after it about 1. A
    kill makes the next pass walk from the front: past the head, what is left is told
    what it was after that start, but the one between must be told again."""
    model = model_of([one(0, 0, gpus=1), one(1, 3), one(2, 1), one(3, 3)], Free(2.0, 0, set()))
    model.run_pass()
    assert model.reasons == {
        "w0000": "waiting for 1 GPU, 0 free",
        "w0001": "waiting for 3 CPUs, 2 free",
        "w0003": "waiting for 3 CPUs, 1 free",
    }
    model.kill(2)  # w0003
    model.run_pass()
    assert model.reasons["w0001"] == "waiting for 3 CPUs, 1 free"


def test_a_walk_does_not_stop_while_a_shape_left_would_start() -> None:
    """Behind a head that wants a GPU and a CPU, a 2-CPU workload waits behind it; an
    exit frees a CPU: the reason it would be told is the same, but now it starts."""
    model = model_of([one(0, 1), one(1, 1, gpus=1), one(2, 2)], Free(3.0, 0, set()))
    model.run_pass()
    assert model.reasons["w0002"] == "waiting behind w0001 (priority 0), which needs more"
    model.exit(0)
    model.run_pass()
    assert [w.id for w, _ in model.running] == ["w0002"]


def test_what_a_start_after_submits_changed_is_not_taken_as_told() -> None:
    """A submit that starts behind the head (it fits what the reservation leaves)
    leaves less free: those queued before it were told about more. The next pass from
    the front walks up to it."""
    model = model_of([one(0, 0, gpus=1), one(1, 3), one(2, 3)], Free(2.0, 0, set()))
    model.run_pass()
    model.submit(one(3, 1))
    model.run_pass()  # starts it
    assert [w.id for w, _ in model.running] == ["w0003"]
    model.kill(2)  # w0002
    model.run_pass()
    assert model.reasons["w0001"] == "waiting for 3 CPUs, 1 free"


def test_a_walk_that_cannot_stop_costs_about_what_a_walk_over_everything_does() -> None:
    """Many shapes (1 CPU, each its own memory) behind a full machine, and last one
    whose reason an exit changes ("waiting for 50000 MB of memory, 39900 MB free", it
    was told 20000 MB): the walk cannot stop. Whether it may is asked again whenever a
    shape is walked to its last; that must not cost a look at every shape left each
    time (500 shapes took 1 s, 2,000 took 16 s of the server's loop). Counted in
    calls of ``unfit``: the walk's own, and one a shape looked at."""
    calls = 0

    def unfit(res: object) -> None:
        nonlocal calls
        calls += 1

    queue = [
        workload(n, owner="alice", priority=0, cpus=1.0, memory_mb=100 + n % 500, gpus=0)
        for n in range(2000)
    ]
    queue.append(workload(2000, owner="bob", priority=0, cpus=0.0, memory_mb=50000, gpus=0))
    before = admit(queue, Free(0.0, 20000, set()), {}, unfit=unfit)
    shapes = Counter((w.resources.cpus, w.resources.memory_mb, w.resources.gpus) for w in queue)
    calls = 0
    full = admit(queue, Free(1.0, 40000, set()), {}, unfit=unfit)
    assert full.reasons[-1] == ("w2000", "waiting for 50000 MB of memory, 39900 MB free")
    calls = 0
    walk = admit(
        queue, Free(1.0, 40000, set()), {}, unfit=unfit, settled=before.settled, shapes=shapes
    )
    assert [s.workload.id for s in walk.start] == [s.workload.id for s in full.start]
    assert walk.reasons == full.reasons
    assert calls <= 2 * len(queue)


def test_a_start_behind_the_head_asks_again_the_shapes_it_asked() -> None:
    """The head of the line wants a GPU and 2 CPUs (it holds them back); behind it one
    wants 1050 MB of memory (1000 free), then one wants a CPU and 500 MB, "waiting
    behind" the head. 100 MB more free: the walk asks the last one's shape first (the
    scheduler's shapes come in any order), which would be told what it was; then the
    one of 1050 MB starts, and leaves too little memory for it: it must be asked
    again, and is told so."""

    def mem(n: int, cpus: float, memory_mb: int, gpus: int = 0) -> Workload:
        return workload(n, owner="alice", priority=0, cpus=cpus, memory_mb=memory_mb, gpus=gpus)

    queue = [mem(0, 2, 0, gpus=1), mem(1, 0, 1050), mem(2, 1, 500)]
    before = admit(queue, Free(2.0, 1000, set()), {})
    assert before.reasons[2] == ("w0002", "waiting behind w0000 (priority 0), which needs more")
    shapes = {(1.0, 500, 0): 1, (0.0, 1050, 0): 1, (2.0, 0, 1): 1}
    walk = admit(queue, Free(2.0, 1100, set()), {}, settled=before.settled, shapes=shapes)
    assert [s.workload.id for s in walk.start] == ["w0001"]
    assert walk.reasons[-1] == ("w0002", "waiting for 500 MB of memory, 50 MB free")
