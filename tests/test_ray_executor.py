"""The Ray executor on the session's 2-node cluster: what only a cluster has (where
workloads land, nodes joining and leaving, agents dying, placement groups). What both
executors share is tested in ``test_local_executor.py``.

Ray is imported inside the tests only: it reads its auth mode once, at import, and
the session's cluster sets it first (see ``conftest.ray_cluster``)."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.executors.base import Capacity, Outcome
from corral.serverlog import extra_fields
from tests.conftest import RAY_NODE_CPUS, RAY_NODE_MEMORY, RayCluster
from tests.executors import Harness, make_workload, until
from tests.server import pid_gone


@pytest.fixture
def rx(ray_cluster: RayCluster, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness("ray", tmp_path / "data", ray_cluster)
    yield harness
    harness.close()


def _groups(name: str) -> list[dict[str, Any]]:
    """The placement groups called ``name`` not removed yet."""
    from ray.util.placement_group import placement_group_table

    table: dict[str, dict[str, Any]] = placement_group_table()
    return [g for g in table.values() if g["name"] == name and g["state"] != "REMOVED"]


def test_the_capacity_and_nodes_are_the_clusters(rx: Harness) -> None:
    nodes = rx.executor.nodes()
    assert len(nodes) == 2 and all(n.alive for n in nodes)
    each = Capacity(cpus=RAY_NODE_CPUS, memory_mb=RAY_NODE_MEMORY >> 20, gpus=0)
    assert {n.capacity for n in nodes} == {each}
    assert rx.executor.capacity == Capacity(cpus=4, memory_mb=2 * (RAY_NODE_MEMORY >> 20), gpus=0)


def test_workloads_land_on_both_nodes_and_never_more_than_fit(rx: Harness) -> None:
    """Eight 1-CPU workloads on two nodes of 2 CPUs: four are placed at once, the
    others wait for Ray with a reason saying so; each runs where it was placed (its
    own ``CORRAL_NODE`` says), both nodes are used, and no node ever runs more than 2
    at a time (from the workloads' own start and end times)."""
    script = 'echo "$CORRAL_NODE $(date +%s.%N)"; sleep 0.4; echo "$CORRAL_NODE $(date +%s.%N)"'

    async def main() -> None:
        workloads = [make_workload(["sh", "-c", script], cpus=1) for _ in range(8)]
        placed = {w.id: rx.executor.place(w) for w in workloads}
        # (A liveness bound, not a speed one: the session's one Ray cluster may still be
        # giving back an earlier test's resources, or be slow on a loaded machine; CI
        # once timed out at 5 s here.)
        await until(lambda: sum(f.done() for f in placed.values()) == 4, 30)
        await asyncio.sleep(0.2)
        assert sum(f.done() for f in placed.values()) == 4
        waiting = next(w for w in workloads if not placed[w.id].done())
        expected = (
            "waiting for Ray to place it: 1 CPU on one node; the most free on one node: 0 CPUs"
        )
        await until(lambda: rx.executor.placing_reason(waiting) == expected, 5)

        async def run(w: Any) -> str:
            node: str = await placed[w.id]
            assert rx.executor.node_of(w.id) == node
            await rx.executor.launch(w, [], None)
            assert (await rx.outcome(w)).exit_code == 0
            return node

        nodes = await asyncio.gather(*(run(w) for w in workloads))
        spans: dict[str, list[tuple[float, float]]] = {}
        for w, node in zip(workloads, nodes, strict=True):
            (on, start), (again, end) = (line.split() for line in rx.log(w).splitlines())
            assert on == again == node
            spans.setdefault(node, []).append((float(start), float(end)))
        assert len(spans) == 2, spans
        for node, times in spans.items():
            events = sorted([(t, 1) for t, _ in times] + [(t, -1) for _, t in times])
            running = most = 0
            for _, step in events:
                running += step
                most = max(most, running)
            assert most <= RAY_NODE_CPUS, (node, times)

    rx.run(main())


def test_a_removed_node_loses_its_workloads_and_nothing_else(
    rx: Harness, ray_cluster: RayCluster
) -> None:
    """A node joins (capacity grows, an agent starts on it, its GPUs are handed out);
    removed, its workloads are ``lost`` within 2 s, naming it, and their processes
    are gone; the other nodes' workloads run on untouched."""
    cluster = ray_cluster.cluster

    async def main() -> None:
        blockers = [make_workload(["sleep", "300"], cpus=1) for _ in range(4)]
        for w in blockers:
            await rx.start(w)  # the two first nodes are full
        changes = rx.changes
        extra = {"num_cpus": 2, "num_gpus": 2, "memory": 1 << 30, "object_store_memory": 80 << 20}
        node = cluster.add_node(**extra)  # on the main thread (Ray sets a signal handler)
        await until(lambda: len(rx.executor.nodes()) == 3 and rx.changes > changes, 10)
        assert rx.executor.capacity == Capacity(cpus=6, memory_mb=5120, gpus=2)
        script = "echo $CUDA_VISIBLE_DEVICES; exec sleep 300"
        doomed = [make_workload(["sh", "-c", script], cpus=1, gpus=1) for _ in range(2)]
        for w in doomed:
            await rx.start(w)  # waits for the new node's agent if need be
        assert {rx.executor.node_of(w.id) for w in doomed} == {node.node_id}
        await until(lambda: all(rx.log(w) for w in doomed))
        assert sorted(rx.log(w).strip() for w in doomed) == ["0", "1"]
        pids = [await rx.pid(w) for w in doomed]
        blocker_pids = [await rx.pid(w) for w in blockers]
        address = next(n.address for n in rx.executor.nodes() if n.id == node.node_id)

        changes = rx.changes
        cluster.remove_node(node)
        removed = time.monotonic()
        for w in doomed:
            lost = Outcome(w.id, lost=f"Ray node {node.node_id} ({address}) died")
            assert await rx.outcome(w, timeout=5) == lost
        assert time.monotonic() - removed < 2
        await until(lambda: rx.changes > changes, 5)
        assert rx.executor.capacity == Capacity(cpus=4, memory_mb=4096, gpus=0)
        await asyncio.sleep(0.3)
        assert {o.workload_id for o in rx.reported} == {w.id for w in doomed}
        assert rx.executor.active() == {w.id for w in blockers}
        assert not any(pid_gone(p) for p in blocker_pids)
        for w in blockers:
            rx.executor.terminate(w.id)
        for w in blockers:
            assert (await rx.outcome(w)).signal is not None
        await until(lambda: all(pid_gone(p) for p in pids), 2, "the lost processes to end")

    rx.run(main())


def test_a_dead_agent_loses_its_workloads_and_a_new_one_takes_over(
    rx: Harness, ray_cluster: RayCluster
) -> None:
    import ray

    async def main() -> None:
        w = await rx.start(make_workload(["sleep", "300"], cpus=1))
        node = rx.executor.node_of(w.id)
        pid = await rx.pid(w)
        name = f"corral-agent-{node}"
        agent = ray.get_actor(name, namespace=ray_cluster.namespace)
        old = (await agent.hello.remote())["pid"]
        address = next(n.address for n in rx.executor.nodes() if n.id == node)
        ray.kill(agent)
        lost = Outcome(w.id, lost=f"the corral agent on Ray node {node} ({address}) died")
        assert await rx.outcome(w, timeout=5) == lost
        # The new agent finds the workload's shim and stops it (if it was not gone
        # with its agent already).
        await until(lambda: pid_gone(pid), 5, "the workload's process to end")
        agent = ray.get_actor(name, namespace=ray_cluster.namespace)
        assert (await agent.hello.remote())["pid"] != old
        fill = [make_workload(["true"], cpus=1) for _ in range(4)]
        nodes = set()
        for f in fill:
            await rx.start(f)
            nodes.add(rx.executor.node_of(f.id))
        assert node in nodes
        assert [(await rx.outcome(f)).exit_code for f in fill] == [0] * 4

    rx.run(main())


def test_a_restart_stops_strays_removes_their_groups_and_loses_the_unknown(rx: Harness) -> None:
    """The next server: a workload the store does not run is stopped and its placement
    group removed; one claimed on a node not in the cluster, or on none, is lost."""
    stray = rx.run(rx.start(make_workload(["sleep", "300"], cpus=0.5)))
    pid = rx.run(rx.pid(stray))
    assert len(_groups(f"corral-{stray.id}")) == 1
    rx.stop()
    elsewhere = make_workload(["true"]).model_copy(update={"node": "ab" * 28})
    nowhere = make_workload(["true"])
    adopted = rx.restart(adopt=[elsewhere, nowhere])
    assert adopted == {elsewhere.id: None, nowhere.id: None}
    assert rx.stopped == [stray.id]

    async def main() -> None:
        assert await rx.outcome(elsewhere) == Outcome(
            elsewhere.id, lost=f"Ray node {'ab' * 28} is not in the cluster"
        )
        assert await rx.outcome(nowhere) == Outcome(
            nowhere.id, lost="no corral agent knows it, and no Ray node was recorded for it"
        )
        await until(lambda: pid_gone(pid), 5, "the stray to stop")
        await until(lambda: not _groups(f"corral-{stray.id}"), 5, "its group to go")

    rx.run(main())
    assert stray.id not in {o.workload_id for o in rx.reported}


def test_an_exit_removes_the_group_and_once_forgotten_the_nodes_files(
    rx: Harness, ray_cluster: RayCluster
) -> None:
    """After the exit is reported its placement group goes; once the outcome is
    forgotten (the harness forgets at once, as the scheduler does once it is stored)
    so do the node's log and state files. ``unplace`` drops a group too."""

    async def main() -> None:
        w = await rx.start(make_workload(["echo", "hello"], cpus=1))
        node_files = ray_cluster.node_dir / str(rx.executor.node_of(w.id))
        assert (node_files / "logs" / f"{w.id}.log").exists()
        assert (await rx.outcome(w)).exit_code == 0
        assert rx.log(w) == "hello\n"
        await until(lambda: not _groups(f"corral-{w.id}"), 5, "its group to go")
        await until(lambda: not list(node_files.glob(f"*/{w.id}.*")), 5, "its node files to go")
        never = make_workload(["true"], cpus=1)
        await rx.place(never)
        assert len(_groups(f"corral-{never.id}")) == 1
        rx.executor.unplace(never.id)
        await until(lambda: not _groups(f"corral-{never.id}"), 5, "its group to go")
        assert rx.executor.node_of(never.id) is None

    rx.run(main())


def test_log_records_carry_no_ray_field(ray_cluster: RayCluster) -> None:
    """``import ray`` makes every log record carry ``_ray_timestamp_ns``, which the
    server log would print on each line: the Ray executor's module undoes it."""
    import ray._private.log

    from corral.executors.ray import keep_log_records_plain

    def record() -> logging.LogRecord:
        return logging.getLogger("t").makeRecord("t", logging.INFO, "f", 1, "m", None, None)

    ray._private.log._setup_log_record_factory()  # as ``import ray`` does
    assert "_ray_timestamp_ns" in extra_fields(record())
    keep_log_records_plain()
    assert extra_fields(record()) == {}


def test_an_agent_takes_its_node_directory_only_when_it_is_private(tmp_path: Path) -> None:
    """The shim that runs every workload lives below the node directory (in a shared
    /tmp by default): one that someone else made, or may enter, or a link, is refused."""
    from corral.executors.ray_agent import private_dir

    made = tmp_path / "made" / "node"
    private_dir(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    private_dir(made)  # its own, again: taken
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o755)
    with pytest.raises(RuntimeError, match="mode 0755"):
        private_dir(loose)
    link = tmp_path / "link"
    link.symlink_to(made)
    with pytest.raises(RuntimeError, match="a link"):
        private_dir(link)
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(RuntimeError, match="uid 65534"):
            private_dir(theirs)


def test_a_poll_answer_serves_every_workload_with_new_output(tmp_path: Path) -> None:
    """Eight workloads that keep ahead of the pull (over a CHUNK_BYTES each pending at
    every answer) and a ninth with three bytes: within a few answers the ninth gets
    them. (Measured end to end: ``echo hi`` submitted beside ten 160 MB/s writers
    stayed ``running`` 10 s after it exited.)"""
    from corral.executors.ray_agent import ANSWER_BYTES, CHUNK_BYTES, Agent
    from corral.logs import FileLogs

    class _Local:
        logs = FileLogs(tmp_path)

    (tmp_path / "logs").mkdir()
    agent = Agent.__new__(Agent)  # only ``_chunks`` is used: no Ray, no node
    agent._local = _Local()  # type: ignore[assignment]
    floods = [f"flood{i}" for i in range(ANSWER_BYTES // CHUNK_BYTES)]
    for wid in floods:
        _Local.logs.path(wid).write_bytes(b"x" * 2 * CHUNK_BYTES)
    _Local.logs.path("probe").write_bytes(b"hi\n")
    offsets = dict.fromkeys([*floods, "probe"], 0)
    served = False
    for _ in range(4):
        chunks, _cut = agent._chunks(offsets)
        served = served or "probe" in chunks
        for wid, data in chunks.items():
            offsets[wid] += len(data)
        for wid in floods:  # they keep writing: always more than a chunk ahead
            with open(_Local.logs.path(wid), "ab") as f:
                f.write(b"x" * CHUNK_BYTES)
    assert served
