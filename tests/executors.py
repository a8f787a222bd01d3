"""An executor of either kind, opened and started on a loop of its own, driven the way
the scheduler drives it: placed first when it places (Ray), then launched; each
outcome kept, then forgotten (as the scheduler does once it is stored)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from corral.executors.base import Capacity, Executor, NotStartedError, Outcome, RunAs
from corral.executors.local import LocalExecutor, kill_all
from corral.ids import new_id
from corral.model import Resources, Status, Workload
from tests.conftest import RayCluster

T = TypeVar("T")
GRACE_SECONDS = 1.0
"""The kill grace of every executor here (the agents of the session's cluster are
made once, with it)."""


def make_workload(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    cpus: float = 0.1,
    memory_mb: int = 0,
    gpus: int = 0,
) -> Workload:
    stamp = "2026-01-01T00:00:00.000000Z"
    return Workload(
        id=new_id(),
        owner="tester",
        name=None,
        command=command,
        env=env or {},
        cwd=cwd,
        resources=Resources(cpus=cpus, memory_mb=memory_mb, gpus=gpus),
        labels={},
        priority=0,
        timeout_seconds=None,
        status=Status.RUNNING,
        exit_code=None,
        signal=None,
        reason=None,
        created_at=stamp,
        updated_at=stamp,
        started_at=stamp,
        finished_at=None,
    )


class Harness:
    """One opened and started executor (``kind``: ``local`` or ``ray``)."""

    def __init__(self, kind: str, data_dir: Path, cluster: RayCluster | None = None) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.cluster = cluster
        self.loop = asyncio.new_event_loop()
        self.outcomes: dict[str, asyncio.Future[Outcome]] = {}
        self.reported: list[Outcome] = []
        self.stopped: list[str] = []
        self.changes = 0
        self.log_size_at_exit: dict[str, int] = {}
        self.executor: Any = None
        self.executor, _ = self.run(self._open([]))
        if kind == "ray":
            try:
                self._wait_cluster_idle()
            except BaseException:
                self.close()  # disconnected from Ray, as every test leaves it
                raise

    def _wait_cluster_idle(self, timeout: float = 15.0) -> None:
        """Every CPU of the session's Ray cluster free (the placement groups an earlier
        harness left in this namespace are being removed by ``stop_unadopted``), or
        fail naming the groups that hold them, and remove those (so that one test
        fails, not every one after it): a test that stops a server before its
        workloads' exits are reported leaves their groups in a namespace no later
        server uses, and the tests here would wait for a placement for ever."""
        import ray
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import (
            PlacementGroup,
            placement_group_table,
            remove_placement_group,
        )

        deadline = time.monotonic() + timeout
        while True:
            total = ray.cluster_resources().get("CPU", 0.0)
            free = ray.available_resources().get("CPU", 0.0)
            if free >= total:
                return
            if time.monotonic() > deadline:
                left = [g for g in placement_group_table().values() if g["state"] != "REMOVED"]
                for group in left:
                    group_id = PlacementGroupID(bytes.fromhex(group["placement_group_id"]))
                    with contextlib.suppress(Exception):  # (the error below says more)
                        remove_placement_group(PlacementGroup(group_id))
                held = [(g["name"], g["state"], list(g["bundles"].values())) for g in left]
                raise AssertionError(
                    f"{total - free} of the Ray cluster's {total} CPUs are still held after"
                    f" {timeout} s, by what an earlier test left: placement groups {held}"
                    " (removed now)"
                )
            time.sleep(0.1)

    def _make(self) -> Any:
        if self.kind == "local":
            capacity = Capacity(cpus=4, memory_mb=4096, gpus=0)
            return LocalExecutor(self.data_dir, capacity=capacity, kill_grace_seconds=GRACE_SECONDS)
        from corral.executors.ray import RayExecutor

        assert self.cluster is not None
        return RayExecutor(
            self.data_dir,
            address=self.cluster.address,
            namespace=self.cluster.namespace,
            kill_grace_seconds=GRACE_SECONDS,
            node_dir=self.cluster.node_dir,
        )

    async def _open(
        self, adopt: Sequence[Workload]
    ) -> tuple[Executor, dict[str, list[int] | NotStartedError | None]]:
        """Open and start an executor, offer it ``adopt`` and stop the rest, as the
        scheduler does (all in one loop turn)."""
        executor: Executor = self._make()
        await executor.open()
        self.executor = executor
        executor.start(self._on_exit, self._on_change)
        adopted: dict[str, list[int] | NotStartedError | None] = {}
        for workload in adopt:
            try:
                adopted[workload.id] = executor.adopt(workload)
            except NotStartedError as exc:
                adopted[workload.id] = exc
        self.stopped = executor.stop_unadopted()
        return executor, adopted

    def _on_exit(self, outcome: Outcome) -> None:
        self.reported.append(outcome)
        try:
            self.log_size_at_exit[outcome.workload_id] = os.stat(
                self.executor.logs.path(outcome.workload_id)
            ).st_size
        except FileNotFoundError:
            self.log_size_at_exit[outcome.workload_id] = 0
        future = self._future(outcome.workload_id)
        if not future.done():
            future.set_result(outcome)
        self.executor.forget(outcome.workload_id)

    def _on_change(self) -> None:
        self.changes += 1

    def _future(self, workload_id: str) -> asyncio.Future[Outcome]:
        if workload_id not in self.outcomes:
            self.outcomes[workload_id] = self.loop.create_future()
        return self.outcomes[workload_id]

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def place(self, workload: Workload, timeout: float = 30.0) -> str | None:
        """Its node, once placed (None: the local executor places nothing). The
        timeout is a liveness bound: a loaded machine's Ray may take seconds (CI once
        timed out at 10 s placing the first of four workloads)."""
        if not self.executor.placement:
            return None
        node: str = await asyncio.wait_for(self.executor.place(workload), timeout)
        return node

    async def start(
        self, workload: Workload, devices: Sequence[int] = (), run_as: RunAs | None = None
    ) -> Workload:
        """Place (if the executor places) and launch ``workload``; returns it once
        its process runs and is watched."""
        await self.place(workload)
        await self.executor.launch(workload, devices, run_as)
        return workload

    async def outcome(self, workload: Workload, timeout: float = 15.0) -> Outcome:
        return await asyncio.wait_for(asyncio.shield(self._future(workload.id)), timeout)

    def log(self, workload: Workload) -> str:
        try:
            return self.executor.logs.path(workload.id).read_text()  # type: ignore[no-any-return]
        except FileNotFoundError:
            return ""

    def run_dir(self, workload: Workload) -> Path:
        """Where the workload's shim keeps its state (on its node, for Ray)."""
        if self.kind == "local":
            return self.data_dir / "run"
        assert self.cluster is not None
        return self.cluster.node_dir / self.executor.node_of(workload.id) / "run"

    async def pid(self, workload: Workload) -> int:
        """The workload's own pid (its process group), once its shim wrote it."""
        pidfile = self.run_dir(workload) / f"{workload.id}.pid"
        text = await until(
            lambda: pidfile.exists() and pidfile.read_text().strip(), 5, str(pidfile)
        )
        return int(text.split()[0])  # (a second line, once it ended: its status)

    def stop(self) -> None:
        """Close the executor, as a server stopping does (its workloads run on)."""
        self.executor.close()

    def restart(
        self, adopt: Sequence[Workload] = ()
    ) -> dict[str, list[int] | NotStartedError | None]:
        """A new executor instance (after ``stop``), as a restarted server makes:
        what ``adopt`` answered for each of ``adopt``; ``stopped`` holds what
        ``stop_unadopted`` stopped."""
        self.executor, adopted = self.run(self._open(adopt))
        return adopted

    def close(self) -> None:
        try:
            self.executor.close()
        finally:
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()
            for run_dir in self._run_dirs():
                kill_all(run_dir)  # what a failed test left running

    def _run_dirs(self) -> list[Path]:
        if self.kind == "local":
            return [self.data_dir / "run"]
        assert self.cluster is not None
        return [d for d in self.cluster.run_dirs() if os.path.isdir(d)]


async def until(predicate: Any, timeout: float = 10.0, what: str = "") -> Any:
    """Wait on the loop until ``predicate()`` is truthy; its value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)
    return value
