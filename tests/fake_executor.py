"""``FakeExecutor``: a real implementation of the ``Executor`` protocol whose
"processes" are records in memory, ended by the test, for testing the scheduler's
shells (claims, timeouts, exits, reconciliation) without timing a real process.

It keeps the protocol's promises the way the local executor does: a launch makes a
process at once; ``terminate`` sends SIGTERM, which ends a process unless it is
``stubborn`` (it ignores SIGTERM: the test ends it, as the SIGKILL after the grace
period would); every launched or adopted process's end is reported once through
``on_exit``, on the loop. The processes live on a ``FakeMachine``, which outlives an
executor: a scheduler that stops leaves them running, and the next one's executor
adopts them, finds those that ended meanwhile, or learns that one never started.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from corral.executors.base import (
    Capacity,
    Node,
    NotStartedError,
    OnChange,
    OnExit,
    Outcome,
    RunAs,
    SpawnError,
)
from corral.logs import FileLogs
from corral.model import Workload

NODE = "fake-node"


@dataclass
class FakeProcess:
    workload: Workload
    devices: list[int]
    run_as: RunAs | None
    stubborn: bool = False
    """It ignores SIGTERM."""
    signals: list[int] = field(default_factory=list)
    """What ``terminate`` sent it."""
    outcome: Outcome | None = None
    """How it ended (None: it runs)."""


class FakeMachine:
    """The processes of one machine, by workload id, across executors (servers)."""

    def __init__(self) -> None:
        self.processes: dict[str, FakeProcess] = {}
        self.launches: list[str] = []
        """Workload ids, once per launch, in order."""
        self.executor: FakeExecutor | None = None
        """The executor that watches the processes now (None: no server runs)."""
        self.stubborn: set[str] = set()
        """Workload ids whose processes will ignore SIGTERM once launched."""
        self.spawn_errors: dict[str, str] = {}
        """Workload ids whose launch will fail with this message."""

    def running(self) -> set[str]:
        return {wid for wid, p in self.processes.items() if p.outcome is None}

    def end(
        self, workload_id: str, *, exit_code: int | None = None, signal: int | None = None
    ) -> None:
        """The process ends (by itself, or by a signal) and says how; the executor
        watching it, if any, reports it."""
        self._over(Outcome(workload_id, exit_code=exit_code, signal=signal))

    def vanish(self, workload_id: str) -> None:
        """The process is gone without a word (its watcher was killed): lost."""
        self._over(Outcome(workload_id, lost="its process vanished without an exit status"))

    def _over(self, outcome: Outcome) -> None:
        process = self.processes[outcome.workload_id]
        assert process.outcome is None, f"{outcome.workload_id} is over already"
        process.outcome = outcome
        if self.executor is not None:
            self.executor._exited(outcome)


class FakeExecutor:
    """See the module docstring."""

    kind: Literal["local", "ray"] = "local"
    placement = False

    def __init__(self, machine: FakeMachine, data_dir: Path, capacity: Capacity) -> None:
        self.machine = machine
        self.capacity = capacity
        self.logs = FileLogs(data_dir)
        self._watched: set[str] = set()  # launched or adopted, not reported over yet
        self._on_exit: OnExit | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def open(self) -> None:
        pass

    def start(self, on_exit: OnExit, on_change: OnChange | None = None) -> None:
        assert self.machine.executor is None, "another executor watches this machine"
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self.machine.executor = self

    def nodes(self) -> list[Node]:
        return [Node(NODE, "localhost", self.capacity)]

    def node_of(self, workload_id: str) -> str | None:
        return NODE

    def place(self, workload: Workload) -> asyncio.Future[str]:
        raise NotImplementedError("this executor places nothing")

    def unplace(self, workload_id: str) -> None:
        raise NotImplementedError("this executor places nothing")

    def placing_reason(self, workload: Workload) -> str:
        raise NotImplementedError("this executor places nothing")

    def launch(
        self, workload: Workload, gpu_devices: Sequence[int], run_as: RunAs | None = None
    ) -> Awaitable[None]:
        assert workload.id not in self.machine.running(), f"{workload.id} launched twice"
        error = self.machine.spawn_errors.get(workload.id)
        if error is not None:
            raise SpawnError(error)
        stubborn = workload.id in self.machine.stubborn
        self.machine.processes[workload.id] = FakeProcess(
            workload, list(gpu_devices), run_as, stubborn
        )
        self.machine.launches.append(workload.id)
        self._watched.add(workload.id)
        return _running()

    def adopt(self, workload: Workload) -> list[int] | None:
        process = self.machine.processes.get(workload.id)
        if process is None:
            raise NotStartedError(workload.id)
        if process.outcome is not None:  # over while no server ran: reported now
            self._report_soon(process.outcome)
            return None
        self._watched.add(workload.id)
        return list(process.devices)

    def stop_unadopted(self) -> list[str]:
        strays = sorted(self.machine.running() - self._watched)
        for wid in strays:  # stopped, and forgotten once over: never reported
            process = self.machine.processes[wid]
            process.signals.append(signal.SIGTERM)
            if not process.stubborn:
                process.outcome = Outcome(wid, signal=signal.SIGTERM)
        return strays

    def terminate(self, workload_id: str) -> None:
        process = self.machine.processes.get(workload_id)
        if process is None or process.outcome is not None:
            return
        process.signals.append(signal.SIGTERM)
        if not process.stubborn:
            self.machine.end(workload_id, signal=signal.SIGTERM)

    def forget(self, workload_id: str) -> None:
        process = self.machine.processes.get(workload_id)
        if process is not None and process.outcome is not None:
            del self.machine.processes[workload_id]

    def active(self) -> set[str]:
        return set(self._watched)

    def close(self) -> None:
        """Stop watching; the processes keep running."""
        self._watched.clear()
        self._closed = True
        if self.machine.executor is self:
            self.machine.executor = None

    def _exited(self, outcome: Outcome) -> None:
        if outcome.workload_id in self._watched:
            self._report_soon(outcome)

    def _report_soon(self, outcome: Outcome) -> None:
        """Report on the loop, as the local executor does (never from inside the
        caller's own call)."""
        assert self._loop is not None and self._on_exit is not None, "start() first"
        self._loop.call_soon(self._report, outcome)

    def _report(self, outcome: Outcome) -> None:
        assert self._on_exit is not None
        if self._closed:
            return  # the next executor finds it over
        self._watched.discard(outcome.workload_id)
        self._on_exit(outcome)


async def _running() -> None:
    """The launch's awaitable: the process runs at once."""
