"""Conflicting transitions of one workload at the same instant, from many threads and
from several processes: exactly one winner per status left, events match winners."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable

from corral.model import Status, WorkloadCreate, valid_transition
from corral.store import InvalidTransitionError, open_store
from tests.blocking import BlockingStore

ROUNDS = 100
# From pending only running/killed are legal; once running wins, exactly one of
# completed/failed/killed may follow, so a round has one or two winners.
TARGETS = [Status.RUNNING, Status.KILLED, Status.COMPLETED, Status.FAILED]

Outcome = tuple[int, str, bool]  # (round, target, won)


def attempt(store: BlockingStore, workload_id: str, target: Status) -> bool:
    try:
        store.update_workload_status(workload_id, target, actor="race")
    except InvalidTransitionError:
        return False
    return True


def check_rounds(
    store: BlockingStore, ids: list[str], outcomes: list[Outcome], attempts: int
) -> None:
    assert len(outcomes) == len(ids) * attempts
    for rnd, workload_id in enumerate(ids):
        winners = [t for r, t, won in outcomes if r == rnd and won]
        events = store.list_events(workload_id)
        transitions = [(e.from_status, e.to_status) for e in events[1:]]
        assert len(transitions) == len(winners), f"round {rnd}: events {transitions}"
        assert sorted(winners) == sorted(to for _, to in transitions)
        assert 1 <= len(winners) <= 2, f"round {rnd}: winners {winners}"
        # the winners form a legal path from pending, one step out of each status
        current = Status.PENDING
        for src, dst in transitions:
            assert src == current and valid_transition(src, dst)
            current = dst
        if len(winners) == 2:
            assert transitions[0] == (Status.PENDING, Status.RUNNING)
        assert store.get_workload(workload_id).status == current


def test_32_threads_100_rounds(store_factory: Callable[[], BlockingStore]) -> None:
    store = store_factory()
    ids = [
        store.create_workload(owner="alice", spec=WorkloadCreate(command=["true"]))[0].id
        for _ in range(ROUNDS)
    ]
    threads_n = 32
    # A store each: one store's writes queue on its one writer thread; stores of their
    # own race for SQLite's lock as separate connections do.
    stores = [store_factory() for _ in range(threads_n)]
    barrier = threading.Barrier(threads_n)
    outcomes: list[Outcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        target = TARGETS[index % len(TARGETS)]
        try:
            for rnd, workload_id in enumerate(ids):
                barrier.wait(timeout=60)
                won = attempt(stores[index], workload_id, target)
                with lock:
                    outcomes.append((rnd, target.value, won))
        except BaseException as exc:  # surfaced below, with the round's context
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    check_rounds(store, ids, outcomes, threads_n)


def _process_worker(
    url: str, ids: list[str], index: int, barrier: threading.Barrier, queue: multiprocessing.Queue
) -> None:
    store = BlockingStore(open_store(url))
    target = TARGETS[index % len(TARGETS)]
    results = []
    for rnd, workload_id in enumerate(ids):
        barrier.wait(timeout=60)
        results.append((rnd, target.value, attempt(store, workload_id, target)))
    store.close()
    queue.put(results)


def test_4_processes_100_rounds(store_factory: Callable[[], BlockingStore]) -> None:
    store = store_factory()
    ids = [
        store.create_workload(owner="alice", spec=WorkloadCreate(command=["true"]))[0].id
        for _ in range(ROUNDS)
    ]
    procs_n = 4
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(procs_n)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(store.url, ids, i, barrier, queue))
        for i in range(procs_n)
    ]
    for p in procs:
        p.start()
    outcomes: list[Outcome] = []
    for _ in procs:
        outcomes.extend(queue.get(timeout=120))
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    check_rounds(store, ids, outcomes, procs_n)
