"""The admission core (``corral.admission``) against a plain walk written here from
the rules the scheduler's docstring states, sharing no code with it: random queues
(priorities, owners, CPUs, memory and GPUs, zero included, batches with a limit) over
random free capacity. Then properties of any decision (nothing over-committed, no GPU
handed twice, a workload that fits starts, every waiting one has a reason), resuming
from any point of the queue, and the dependency rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
from hypothesis import given, settings

from corral.admission import Decision, Free, admit, dependencies
from corral.model import Resources, Status, Workload

OWNERS = ["alice", "bob", "carol"]
CPUS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]
MEMORY = [0, 100, 512, 1000]
BATCHES = ["batch-a", "batch-b"]
STAMP = "2026-01-01T00:00:00.000000Z"


def workload(
    n: int,
    *,
    owner: str,
    priority: int,
    cpus: float,
    memory_mb: int,
    gpus: int,
    batch: str | None = None,
    max_running: int | None = None,
) -> Workload:
    return Workload(
        id=f"w{n:04d}",
        owner=owner,
        name=None,
        command=["true"],
        env={},
        cwd=None,
        resources=Resources(cpus=cpus, memory_mb=memory_mb, gpus=gpus),
        labels={},
        priority=priority,
        timeout_seconds=None,
        batch_id=batch,
        max_running=max_running if batch is not None else None,
        status=Status.PENDING,
        exit_code=None,
        signal=None,
        reason=None,
        created_at=STAMP,
        updated_at=STAMP,
        started_at=None,
        finished_at=None,
    )


@dataclass
class Case:
    """One input of ``admit``, as the test generated it."""

    queue: list[Workload]
    free: Free
    batch_running: dict[str, int]
    unfit: Callable[[Resources], str | None]
    too_big: tuple[float, int, int] | None = None
    never: set[tuple[float, int, int]] = field(default_factory=set)


@st.composite
def cases(draw: st.DrawFn, max_size: int = 40) -> Case:
    limits = {b: draw(st.integers(1, 3)) for b in BATCHES}
    # A few shapes, each asked for several times (a walk reuses a shape's reason).
    shape = st.tuples(st.sampled_from(CPUS), st.sampled_from(MEMORY), st.integers(0, 3))
    shapes = draw(st.lists(shape, min_size=1, max_size=6))
    items = draw(
        st.lists(
            st.tuples(
                st.sampled_from(OWNERS),
                st.integers(0, 2),
                st.sampled_from(shapes),
                st.sampled_from([None, None, *BATCHES]),
            ),
            max_size=max_size,
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
            max_running=limits.get(b or ""),
        )
        for n, (o, p, (c, m, g), b) in enumerate(items)
    ]
    queue.sort(key=lambda w: (-w.priority, w.id))  # rank order
    # Free capacity, now and then below zero (after the capacity shrank).
    free = Free(
        draw(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0, 3.5, 6.0, 10.0])),
        draw(st.sampled_from([-50, 0, 100, 700, 2000, 5000])),
        draw(st.sets(st.integers(0, 7), max_size=3)),
    )
    batch_running = {b: draw(st.integers(0, 3)) for b in BATCHES if draw(st.booleans())}
    # What nothing could ever run: more than a total, and shapes no node holds.
    kind = draw(st.sampled_from(["none", "total", "shapes"]))
    case = Case(queue, free, batch_running, lambda res: None)
    if kind == "total":
        total = (
            max(free.cpus, 0) + draw(st.sampled_from([0.0, 1.0, 4.0])),
            max(free.memory_mb, 0) + draw(st.sampled_from([0, 500])),
            len(free.gpus) + draw(st.integers(0, 2)),
        )
        case.too_big = total
        case.unfit = lambda res: (
            "asks for too much"
            if res.cpus > total[0] or res.memory_mb > total[1] or res.gpus > total[2]
            else None
        )
    elif kind == "shapes":
        shapes = [(w.resources.cpus, w.resources.memory_mb, w.resources.gpus) for w in queue]
        never = set(draw(st.lists(st.sampled_from(shapes), max_size=3))) if shapes else set()
        case.never = never
        case.unfit = lambda res: (
            f"fits no node ({res.gpus} GPUs)"
            if (res.cpus, res.memory_mb, res.gpus) in never
            else None
        )
    return case


# --- the plain walk --------------------------------------------------------------------


def number(value: float) -> str:
    return str(int(value)) if float(value) == int(value) else f"{value:g}"


def asks(value: float, unit: str) -> str:
    return f"{number(value)} {unit}" + ("" if value == 1 else "s")


def fits_in(res: Resources, cpus: float, memory_mb: int, gpus: int) -> bool:
    """Only what is asked for counts."""
    return (
        (res.cpus == 0 or res.cpus <= cpus)
        and (res.memory_mb == 0 or res.memory_mb <= memory_mb)
        and res.gpus <= gpus
    )


def lacks(res: Resources, cpus: float, memory_mb: int, gpus: int) -> str:
    """The first of GPUs, CPUs, memory asked beyond what there is."""
    if res.gpus > gpus:
        return f"waiting for {asks(res.gpus, 'GPU')}, {gpus} free"
    if res.cpus > cpus:
        return f"waiting for {asks(res.cpus, 'CPU')}, {number(max(cpus, 0))} free"
    return f"waiting for {res.memory_mb} MB of memory, {max(memory_mb, 0)} MB free"


def plain_walk(case: Case) -> tuple[list[tuple[str, list[int]]], dict[str, str], str | None]:
    """Each workload in turn, every rule applied afresh (no reuse of reasons): the
    starts with their GPUs, the reasons, the head of the line."""
    cpus, memory_mb = case.free.cpus, case.free.memory_mb
    gpu_ids = sorted(case.free.gpus)
    # What is left once the head of the line has taken what it needs.
    left_cpus, left_memory, left_gpus = cpus, memory_mb, len(gpu_ids)
    running = dict(case.batch_running)
    head: Workload | None = None
    starts: list[tuple[str, list[int]]] = []
    reasons: dict[str, str] = {}
    for w in case.queue:
        res = w.resources
        limited = w.batch_id is not None and w.max_running is not None
        if limited and running.get(w.batch_id or "", 0) >= (w.max_running or 0):
            n = running.get(w.batch_id or "", 0)
            reasons[w.id] = f"waiting: {n} of its batch already running (limit {w.max_running})"
            continue
        never = case.unfit(res)
        if never is None and fits_in(res, left_cpus, left_memory, left_gpus):
            starts.append((w.id, gpu_ids[: res.gpus]))
            gpu_ids = gpu_ids[res.gpus :]
            cpus, memory_mb = cpus - res.cpus, memory_mb - res.memory_mb
            left_cpus, left_memory = left_cpus - res.cpus, left_memory - res.memory_mb
            left_gpus = max(left_gpus - res.gpus, 0)
            if limited:
                running[w.batch_id or ""] = running.get(w.batch_id or "", 0) + 1
        elif never is not None:
            reasons[w.id] = f"waiting, but it {never}"
        elif head is None:
            head = w
            reasons[w.id] = lacks(res, left_cpus, left_memory, left_gpus)
            left_cpus, left_memory = left_cpus - res.cpus, left_memory - res.memory_mb
            left_gpus = max(left_gpus - res.gpus, 0)
        elif fits_in(res, cpus, memory_mb, len(gpu_ids)):
            who = head.id if head.owner == w.owner else "another user's workload"
            reasons[w.id] = f"waiting behind {who} (priority {head.priority}), which needs more"
        else:
            reasons[w.id] = lacks(res, cpus, memory_mb, len(gpu_ids))
    return starts, reasons, head.id if head else None


def outcome(decision: Decision) -> tuple[list[tuple[str, list[int]]], dict[str, str], str | None]:
    starts = [(s.workload.id, s.gpus) for s in decision.start]
    reasons = dict(decision.reasons)
    assert len(reasons) == len(decision.reasons), "a workload given two reasons"
    return starts, reasons, decision.head.id if decision.head else None


# --- the tests ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(cases())
def test_admit_decides_as_a_plain_walk(case: Case) -> None:
    decision = admit(case.queue, case.free, case.batch_running, unfit=case.unfit)
    assert outcome(decision) == plain_walk(case)


@settings(max_examples=300, deadline=None)
@given(cases())
def test_a_decision_never_overcommits_and_explains_every_wait(case: Case) -> None:
    free_before = case.free.copy()
    running_before = dict(case.batch_running)
    decision = admit(case.queue, case.free, case.batch_running, unfit=case.unfit)
    assert case.free == free_before and case.batch_running == running_before  # inputs kept

    started = {s.workload.id: s for s in decision.start}
    waiting = dict(decision.reasons)
    # Every workload walked either starts or waits with a reason, never both.
    assert set(started) | set(waiting) == {w.id for w in case.queue}
    assert not set(started) & set(waiting)
    assert all(reason.startswith("waiting") for reason in waiting.values())

    # Nothing over-committed: CPUs and memory asked stay within what was free (when
    # something was), GPUs come from the free ones, none handed out twice.
    res = [s.workload.resources for s in decision.start]
    if free_before.cpus >= 0:
        assert sum(r.cpus for r in res) <= free_before.cpus + 1e-9
    if free_before.memory_mb >= 0:
        assert sum(r.memory_mb for r in res) <= free_before.memory_mb
    handed = [gpu for s in decision.start for gpu in s.gpus]
    assert len(handed) == len(set(handed)) and set(handed) <= free_before.gpus
    assert all(len(s.gpus) == s.workload.resources.gpus for s in decision.start)

    # Batch limits hold.
    for batch in BATCHES:
        members = [s.workload for s in decision.start if s.workload.batch_id == batch]
        if members and members[0].max_running is not None:
            assert running_before.get(batch, 0) + len(members) <= max(
                members[0].max_running, running_before.get(batch, 0)
            )

    # A workload that fits in what the starts before it and the reservation leave,
    # whose batch has room and that something could run, starts.
    cpus, memory_mb, gpus = free_before.cpus, free_before.memory_mb, len(free_before.gpus)
    counts = dict(running_before)
    reserved = False
    for w in case.queue:
        r = w.resources
        room = w.max_running is None or counts.get(w.batch_id or "", 0) < w.max_running
        if room and case.unfit(r) is None and fits_in(r, cpus, memory_mb, gpus):
            assert w.id in started, (w.id, waiting.get(w.id))
        if w.id in started or (room and case.unfit(r) is None and not reserved):
            cpus, memory_mb, gpus = cpus - r.cpus, memory_mb - r.memory_mb, max(gpus - r.gpus, 0)
            reserved = reserved or w.id not in started  # the head of the line
            if w.id in started and w.max_running is not None:
                counts[w.batch_id or ""] = counts.get(w.batch_id or "", 0) + 1
    assert reserved == (decision.head is not None)
    if decision.head is not None:
        assert decision.reserved == decision.head.resources
        assert decision.head.id in waiting


@settings(max_examples=300, deadline=None)
@given(cases(), st.data())
def test_a_walk_resumed_after_submits_decides_as_one_over_everything(
    case: Case, data: st.DataObject
) -> None:
    """Walk a head of the queue, then resume over the rest (as after submits that rank
    after it), with the capacity and batch counts the first walk's starts leave: the
    same starts, GPUs, reasons and head as one walk over the whole queue."""
    cut = data.draw(st.integers(0, len(case.queue)))
    first = admit(case.queue[:cut], case.free, case.batch_running, unfit=case.unfit)
    waiting_before = dict(first.resume.waiting)
    free = case.free.copy()
    counts = dict(case.batch_running)
    for s in first.start:
        free.cpus -= s.workload.resources.cpus
        free.memory_mb -= s.workload.resources.memory_mb
        free.gpus -= set(s.gpus)
        if s.workload.batch_id is not None and s.workload.max_running is not None:
            counts[s.workload.batch_id] = counts.get(s.workload.batch_id, 0) + 1
    second = admit(case.queue[cut:], free, counts, unfit=case.unfit, resume=first.resume)
    assert dict(first.resume.waiting) == waiting_before  # the state resumed from is kept
    whole = admit(case.queue, case.free, case.batch_running, unfit=case.unfit)
    starts = [(s.workload.id, s.gpus) for s in first.start + second.start]
    assert starts == [(s.workload.id, s.gpus) for s in whole.start]
    assert first.reasons + second.reasons == whole.reasons
    assert second.head == whole.head


def test_the_texts_of_each_rule() -> None:
    """One example per rule, spelled out (the plain walk above reads the same rules)."""
    mine: dict[str, Any] = {"owner": "alice", "priority": 0, "memory_mb": 0, "gpus": 0}
    queue = [
        workload(1, **mine, cpus=1.0),  # starts: 1 of 2.5 CPUs left
        workload(2, **{**mine, "gpus": 2}, cpus=2.0),  # head: reserves 2 of 1.5 CPUs
        workload(3, **mine, cpus=1.0),  # fits in what is free, not beside the reservation
        workload(4, **{**mine, "owner": "bob"}, cpus=1.0),  # the same, another owner
        workload(5, **mine, cpus=2.0),  # lacks CPUs anyway
        workload(6, **{**mine, "memory_mb": 10}, cpus=0),  # nothing asked is short: starts
        workload(7, **mine, cpus=1.0, batch="b", max_running=1),  # batch full
        workload(8, **mine, cpus=64.0),  # more than the whole machine
    ]
    too_big = {8: "asks for 64 CPUs; this server has 4 in all"}

    def unfit(res: Resources) -> str | None:
        return too_big[8] if res.cpus > 4 else None

    decision = admit(queue, Free(2.5, 10, {3}), {"b": 1}, unfit=unfit)
    assert [(s.workload.id, s.gpus) for s in decision.start] == [("w0001", []), ("w0006", [])]
    assert dict(decision.reasons) == {
        "w0002": "waiting for 2 GPUs, 1 free",
        "w0003": "waiting behind w0002 (priority 0), which needs more",
        "w0004": "waiting behind another user's workload (priority 0), which needs more",
        "w0005": "waiting for 2 CPUs, 1.5 free",
        "w0007": "waiting: 1 of its batch already running (limit 1)",
        "w0008": "waiting, but it asks for 64 CPUs; this server has 4 in all",
    }
    assert decision.head is not None and decision.head.id == "w0002"


def test_a_start_behind_the_head_changes_what_the_next_ones_are_told() -> None:
    """A reason is reused for a workload of the same shape only until something
    starts: then what is free has changed."""
    mine: dict[str, Any] = {"owner": "alice", "priority": 0, "memory_mb": 0}
    queue = [
        workload(1, **mine, cpus=0, gpus=1),  # head: no GPU free; reserves no CPU
        workload(2, **mine, cpus=3.0, gpus=0),  # 2 CPUs free
        workload(3, **mine, cpus=1.0, gpus=0),  # starts
        workload(4, **mine, cpus=3.0, gpus=0),  # 1 CPU free now
    ]
    decision = admit(queue, Free(2.0, 0, set()), {})
    assert [s.workload.id for s in decision.start] == ["w0003"]
    assert dict(decision.reasons) == {
        "w0001": "waiting for 1 GPU, 0 free",
        "w0002": "waiting for 3 CPUs, 2 free",
        "w0004": "waiting for 3 CPUs, 1 free",
    }


# --- dependencies ------------------------------------------------------------------------

DEPS = [f"d{n:025d}" for n in range(6)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(DEPS), min_size=1, max_size=6, unique=True),
    st.sampled_from(["afterok", "afterany"]),
    st.dictionaries(st.sampled_from(DEPS), st.sampled_from(list(Status))),
    st.sets(st.sampled_from(DEPS)),
)
def test_dependencies_follow_their_rule(
    depends_on: list[str], kind: Any, statuses: dict[str, Status], active: set[str]
) -> None:
    w = workload(0, owner="alice", priority=0, cpus=1, memory_mb=0, gpus=0)
    w = w.model_copy(update={"depends_on": depends_on, "dependency_type": kind})
    verdict = dependencies(w, statuses, dict.fromkeys(active))
    afterok = kind == "afterok"
    expected: tuple[str, str] | None = None
    for dep in depends_on:  # the first dependency that dooms it names the reason
        status = statuses.get(dep)
        if status is None:
            expected = ("kill", f"dependency {dep} does not exist")
        elif afterok and status is Status.FAILED:
            expected = ("kill", f"dependency {dep} failed")
        elif afterok and status is Status.KILLED:
            expected = ("kill", f"dependency {dep} was killed")
        if expected:
            break
    if expected is None:
        done = {Status.COMPLETED} if afterok else {Status.COMPLETED, Status.FAILED, Status.KILLED}
        unmet = [d for d in depends_on if statuses[d] not in done or d in active]
        if not unmet:
            expected = ("met", "")
        else:
            named = ", ".join(unmet[:3]) + (f" and {len(unmet) - 3} more" if len(unmet) > 3 else "")
            expected = ("wait", f"waiting for {named} to {'complete' if afterok else 'end'}")
    assert verdict == expected
