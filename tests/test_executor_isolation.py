"""The local executor keeps workloads apart: private files whatever the umask, the
umask the server was started with for workloads, and (as root) workloads run as
the Unix user their owner maps to.

These drive ``LocalExecutor`` directly on a real event loop, with real shims and
processes: the scheduler's part (handing over ``RunAs``) is tested with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from corral.executors.base import Capacity, Outcome
from corral.executors.local import LocalExecutor, kill_all
from corral.executors.shim import state_file
from corral.ids import new_id
from corral.logs import log_path
from corral.model import Resources, Status, Workload

T = TypeVar("T")


def make_workload(
    command: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None
) -> Workload:
    stamp = "2026-01-01T00:00:00.000000Z"
    return Workload(
        id=new_id(),
        owner="tester",
        name=None,
        command=command,
        env=env or {},
        cwd=cwd,
        resources=Resources(cpus=0),
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
    """One ``LocalExecutor`` started on the running loop; outcomes by workload id."""

    def __init__(
        self, data_dir: Path, *, grace: float = 1.0, workload_umask: int | None = None
    ) -> None:
        self.executor = LocalExecutor(
            data_dir,
            capacity=Capacity(cpus=2, memory_mb=1024, gpus=1),
            kill_grace_seconds=grace,
            workload_umask=workload_umask,
        )
        self.outcomes: dict[str, asyncio.Future[Outcome]] = {}
        self.executor.start(self._on_exit)

    def _on_exit(self, outcome: Outcome) -> None:
        self._future(outcome.workload_id).set_result(outcome)

    def _future(self, workload_id: str) -> asyncio.Future[Outcome]:
        if workload_id not in self.outcomes:
            self.outcomes[workload_id] = asyncio.get_running_loop().create_future()
        return self.outcomes[workload_id]

    async def launch(self, workload: Workload, gpu_devices: Sequence[int] = ()) -> None:
        await self.executor.launch(workload, gpu_devices)

    async def outcome(self, workload: Workload, timeout: float = 10.0) -> Outcome:
        return await asyncio.wait_for(asyncio.shield(self._future(workload.id)), timeout)

    def log(self, workload: Workload) -> Path:
        return log_path(self.executor.data_dir, workload.id)


async def until(predicate: Callable[[], T], timeout: float = 5.0, what: str = "") -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)
    return value


def run(main: Callable[[], Coroutine[object, object, None]]) -> None:
    asyncio.run(main())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "data"
    yield data
    kill_all(data / "run")


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_files_are_0600_whatever_the_umask_and_workloads_get_the_servers(
    data_dir: Path, tmp_path: Path
) -> None:
    """The test process runs with umask 000 (so does the launcher it starts, and every
    shim): the log, the pid, devices, status and launcher files are 0600 all the same,
    and the workload gets the umask it is given (the server's original one), not the
    shim's; a ``CORRAL_SHIM_UMASK`` of the workload's own is dropped."""
    flag = tmp_path / "go"
    script = f"umask; env | grep -c CORRAL_SHIM; while [ ! -e {flag} ]; do sleep 0.02; done"
    w = make_workload(["sh", "-c", script], env={"CORRAL_SHIM_UMASK": "0000"})

    async def main() -> None:
        h = Harness(data_dir, workload_umask=0o027)
        try:
            await h.launch(w, [0])
            state = h.executor.run_dir / w.id
            await until(lambda: state_file(state, "pid").exists(), what="the pid file")
            for path in (h.log(w), state_file(state, "pid"), state_file(state, "devices")):
                assert mode(path) == 0o600, path
            flag.touch()
            outcome = await h.outcome(w)
            assert outcome.exit_code == 0
            assert mode(state_file(state, "status")) == 0o600
            assert mode(h.executor.run_dir / "launcher.log") == 0o600
            assert h.log(w).read_text() == "0027\n0\n"
        finally:
            h.executor.close()

    with umask(0):
        run(main)


def test_without_a_workload_umask_the_workload_keeps_the_shims(data_dir: Path) -> None:
    w = make_workload(["sh", "-c", "umask"])

    async def main() -> None:
        h = Harness(data_dir)
        try:
            await h.launch(w)
            assert (await h.outcome(w)).exit_code == 0
            assert h.log(w).read_text() == "0077\n"
        finally:
            h.executor.close()

    with umask(0o077):
        run(main)
