"""The store's part of several servers on one database (store/cluster.py): server
names, the scheduler lease, the fence on claims and status writes, claims of many
workloads at once. Every Store implementation passes these (see conftest); what only
PostgreSQL has (notifications, the fence against other sessions) is in
test_postgres_cluster.py."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from corral.model import Status, WorkloadCreate
from corral.store import InvalidTransitionError, Store
from corral.store.cluster import Fence, FencedError, ServerInfo
from corral.store.sqlite import SQLiteStore

SPEC = WorkloadCreate(command=["true"])


def server(name: str, instance: str, pid: int = 1) -> ServerInfo:
    return ServerInfo(name=name, instance=instance, host="h1", pid=pid, url="http://x:1")


def test_a_fresh_database_has_a_lease_nobody_holds(store: Store) -> None:
    lease = store.get_lease()
    assert lease.holder is None and lease.epoch == 0 and lease.expired


def test_the_lease_goes_to_one_instance_and_every_taking_bumps_the_epoch(store: Store) -> None:
    got = store.acquire_lease("a", "a-1", 15)
    assert got is not None
    fence, before = got
    assert fence == Fence("a-1", 1) and before.holder is None
    assert store.acquire_lease("b", "b-1", 15) is None  # held and live
    lease = store.get_lease()
    assert (lease.holder, lease.instance, lease.epoch, lease.expired) == ("a", "a-1", 1, False)
    again = store.acquire_lease("a", "a-1", 15)  # its own instance: a new epoch
    assert again is not None and again[0] == Fence("a-1", 2)
    assert store.renew_lease(Fence("a-1", 2), 15)
    assert not store.renew_lease(Fence("a-1", 1), 15)  # an older epoch renews nothing


def test_a_dead_instance_named_by_the_caller_is_replaced_at_once(store: Store) -> None:
    store.acquire_lease("a", "a-1", 15)
    got = store.acquire_lease("a", "a-2", 15, replace_instance="a-1")
    assert got is not None and got[0] == Fence("a-2", 2) and got[1].instance == "a-1"


def test_an_expired_lease_is_taken_and_its_old_fence_writes_nothing(store: Store) -> None:
    got = store.acquire_lease("a", "a-1", 0.05)
    assert got is not None
    old = got[0]
    w, _ = store.create_workload(owner="u", spec=SPEC)
    time.sleep(0.1)
    assert store.get_lease().expired
    assert not store.renew_lease(old, 15)  # expired: renewing is refused too
    with pytest.raises(FencedError):  # expired even before anyone took it
        store.claim_workloads([w.id], node="a", fence=old)
    taken = store.acquire_lease("b", "b-1", 15)
    assert taken is not None and taken[0].epoch == 2 and taken[1].holder == "a"
    with pytest.raises(FencedError):
        store.claim_workloads([w.id], node="a", fence=old)
    with pytest.raises(FencedError):
        store.update_workload_status(w.id, Status.RUNNING, node="a", fence=old)
    assert store.get_workload(w.id).status is Status.PENDING  # nothing written
    assert len(store.list_events(w.id)) == 1
    claimed = store.claim_workloads([w.id], node="b", fence=taken[0])
    assert [c.id for c in claimed] == [w.id]
    with pytest.raises(FencedError):
        store.update_workload_status(w.id, Status.COMPLETED, exit_code=0, fence=old)
    done = store.update_workload_status(w.id, Status.COMPLETED, exit_code=0, fence=taken[0])
    assert done.status is Status.COMPLETED


def test_a_released_lease_is_free_at_once(store: Store) -> None:
    got = store.acquire_lease("a", "a-1", 15)
    assert got is not None
    store.release_lease(got[0])
    assert store.get_lease().expired
    assert store.acquire_lease("b", "b-1", 15) is not None
    store.release_lease(got[0])  # no longer a's: changes nothing
    assert not store.get_lease().expired


def test_claims_take_only_pending_workloads_and_record_each(store: Store) -> None:
    fence = store.acquire_lease("a", "a-1", 15)
    assert fence is not None
    ws = [store.create_workload(owner="u", spec=SPEC)[0] for _ in range(5)]
    store.update_workload_status(ws[1].id, Status.KILLED)
    ids = [w.id for w in ws]
    claimed = store.claim_workloads([*ids, ids[0], "0" * 26], node="a", fence=fence[0])
    assert [c.id for c in claimed] == [ids[0], *ids[2:]]
    for c in claimed:
        assert c.status is Status.RUNNING and c.node == "a" and c.started_at
        got = store.get_workload(c.id)
        assert got == c
        events = store.list_events(c.id)
        assert [(e.from_status, e.to_status, e.actor) for e in events[1:]] == [
            (Status.PENDING, Status.RUNNING, "scheduler")
        ]
    assert store.claim_workloads(ids, node="a", fence=fence[0]) == []  # none pending now
    assert store.get_workload(ids[1]).status is Status.KILLED
    with pytest.raises(InvalidTransitionError):
        store.update_workload_status(ids[0], Status.RUNNING)


def test_pending_ids_and_get_workloads(store: Store) -> None:
    ws = [store.create_workload(owner="u", spec=SPEC)[0] for _ in range(3)]
    store.update_workload_status(ws[0].id, Status.KILLED)
    assert store.pending_ids() == sorted(w.id for w in ws[1:])
    more = sorted(
        [
            *(w.id for w in ws[1:]),
            *(store.create_workload(owner="u", spec=SPEC)[0].id for _ in range(3)),
        ]
    )
    pages, after = [], None
    while page := store.pending_ids(after=after, limit=2):  # as the safety poll reads them
        pages.append(page)
        after = page[-1]
    assert pages == [more[0:2], more[2:4], more[4:]]
    assert store.pending_ids(after=more[2]) == more[3:] and store.pending_ids(limit=1) == more[:1]
    got = store.get_workloads([ws[2].id, ws[0].id, "0" * 26, ws[2].id])
    assert [w.id for w in got] == sorted([ws[0].id, ws[2].id])


def test_a_live_server_keeps_its_name(store: Store) -> None:
    assert store.register_server(server("a", "a-1", pid=10), live_seconds=15) is None
    held = store.register_server(server("a", "a-2", pid=11), live_seconds=15)
    assert held is not None and held.instance == "a-1" and held.pid == 10
    assert (
        store.register_server(server("a", "a-2"), live_seconds=15, replace_instance="a-1") is None
    )
    assert not store.heartbeat("a", "a-1")  # its name was taken over
    assert store.heartbeat("a", "a-2", capacity={"cpus": 2.0})
    (only,) = store.list_servers()
    assert (only.name, only.instance, only.capacity) == ("a", "a-2", {"cpus": 2.0})
    assert only.last_seen and only.started_at


def test_a_server_not_seen_within_the_window_loses_its_name(store: Store) -> None:
    store.register_server(server("a", "a-1"), live_seconds=15)
    time.sleep(0.06)
    assert store.register_server(server("a", "a-2"), live_seconds=0.05) is None
    assert [s.instance for s in store.list_servers()] == ["a-2"]


def test_a_meta_value_is_the_first_writers(store: Store) -> None:
    assert store.meta_value("ray_namespace", "first") == "first"
    assert store.meta_value("ray_namespace", "second") == "first"


def test_claims_come_back_in_the_order_given_and_an_empty_one_checks_the_fence(
    store: Store,
) -> None:
    got = store.acquire_lease("a", "a-1", 15)
    assert got is not None
    ws = [store.create_workload(owner="u", spec=SPEC)[0] for _ in range(4)]
    order = [ws[2].id, ws[0].id, ws[3].id, ws[1].id]
    assert [c.id for c in store.claim_workloads(order, node="a", fence=got[0])] == order
    assert store.claim_workloads([], node="a", fence=got[0]) == []
    assert store.acquire_lease("a", "a-2", 15, replace_instance="a-1") is not None
    with pytest.raises(FencedError):
        store.claim_workloads([], node="a", fence=got[0])


def _open(kind: str, url: str) -> Store:
    """This process's own store on the database at ``url``."""
    if kind == "postgresql":
        from corral.store.postgres import PostgresStore
        from tests.blocking import BlockingStore

        return BlockingStore(PostgresStore(url, migrate_schema=False))  # type: ignore[return-value]
    return SQLiteStore(url.removeprefix("sqlite:///"))


def _lease_racer(kind: str, url: str, index: int, rounds: int, barrier: Any, results: Any) -> None:
    store = _open(kind, url)
    won: list[tuple[int, int]] = []
    try:
        for rnd in range(rounds):
            barrier.wait(timeout=60)
            got = store.acquire_lease(f"s{index}", f"s{index}-1", 15)
            barrier.wait(timeout=60)  # every racer has tried before the winner lets go
            if got is not None:
                won.append((rnd, got[0].epoch))
                store.release_lease(got[0])
    finally:
        store.close()
        results.put((index, won))


def test_processes_racing_for_a_free_lease_one_wins_each_epoch(
    store: Store, store_kind: str
) -> None:
    rounds, racers = 40, 3
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(racers)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_lease_racer, args=(store_kind, store.url, i, rounds, barrier, results))
        for i in range(racers)
    ]
    for p in procs:
        p.start()
    won = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    winners = sorted((rnd, epoch, index) for index, rounds_won in won for rnd, epoch in rounds_won)
    assert [(rnd, epoch) for rnd, epoch, _ in winners] == [(r, r + 1) for r in range(rounds)]
    lease = store.get_lease()
    assert lease.epoch == rounds and lease.expired


def test_claims_racing_kills_from_another_server_never_both_leave_pending(
    store_factory: Callable[[], Store],
) -> None:
    leader, api = store_factory(), store_factory()
    got = leader.acquire_lease("a", "a-1", 60)
    assert got is not None
    fence = got[0]
    ids = [api.create_workload(owner="u", spec=SPEC)[0].id for _ in range(60)]
    barrier = threading.Barrier(2)
    claimed: list[str] = []

    def claim(wid: str) -> None:
        claimed.extend(c.id for c in leader.claim_workloads([wid], node="a", fence=fence))

    def kill(wid: str) -> None:
        api.update_workload_status(wid, Status.KILLED, actor="api")

    def racer(move: Callable[[str], None]) -> None:
        try:
            for wid in ids:
                barrier.wait(timeout=60)
                move(wid)
        except BaseException:
            barrier.abort()  # the other one stops waiting
            raise

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(racer, claim), pool.submit(racer, kill)]:
            done.result(timeout=120)
    for wid in ids:
        moves = [(e.from_status, e.to_status) for e in leader.list_events(wid)[1:]]
        if wid in claimed:  # the claim first, then the kill of the running workload
            assert moves == [(Status.PENDING, Status.RUNNING), (Status.RUNNING, Status.KILLED)]
        else:
            assert moves == [(Status.PENDING, Status.KILLED)]
        assert leader.get_workload(wid).status is Status.KILLED
