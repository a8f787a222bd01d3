"""What an executor is: it starts, signals and reports; it never writes a status.

The scheduler owns every status change. An executor tells it what happened through
one callback, with an ``Outcome``; the scheduler turns that into a transition.
"""

from __future__ import annotations

import signal as signals
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from corral.model import Workload


@dataclass(frozen=True, slots=True)
class Capacity:
    """What an executor can run at once."""

    cpus: float
    memory_mb: int
    gpus: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a workload's process ended; exactly one of the fields is set."""

    workload_id: str
    exit_code: int | None = None
    signal: int | None = None
    spawn_error: str | None = None
    lost: str | None = None

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signals.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"


OnExit = Callable[[Outcome], None]


class SpawnError(Exception):
    """The workload's process could not be started; the message is the OS's."""


class NotStartedError(Exception):
    """From ``adopt``: no process ever ran the workload (an earlier server stopped
    between claiming it and starting it), so it can be started now and still runs
    at most once."""


class Executor(Protocol):
    """Runs processes for the scheduler; every method is called on the event loop."""

    capacity: Capacity

    def start(self, on_exit: OnExit) -> None:
        """Begin reporting: ``on_exit`` is called (on the loop) once per launched or
        adopted workload, when its process is over."""
        ...

    def launch(self, workload: Workload, gpu_devices: Sequence[int]) -> Awaitable[None]:
        """Start the workload's process: raise ``SpawnError`` now, or return an
        awaitable that ends once the process runs and is watched (or raises
        ``SpawnError``). From this call on, a ``terminate`` is not lost: the process
        is stopped as soon as it exists."""
        ...

    def adopt(self, workload: Workload) -> list[int] | None:
        """Take over a workload left ``running`` by an earlier server. Returns its GPU
        devices while it still runs (its exit is reported later), or None when it is
        already over (reported at once through ``on_exit``). Raises
        ``NotStartedError`` when provably no process of it ever ran."""
        ...

    def stop_unadopted(self) -> list[str]:
        """After every ``running`` workload was offered to ``adopt``: stop the processes
        an earlier server left for workloads no longer running in the store (killed,
        say, between the store's commit and the signal), as ``terminate`` does, and
        drop their state once they are over. Returns their workload ids."""
        ...

    def terminate(self, workload_id: str) -> None:
        """Stop the workload: SIGTERM to its process group, SIGKILL after the grace
        period. Its exit is still reported through ``on_exit``."""
        ...

    def forget(self, workload_id: str) -> None:
        """The outcome is recorded; drop what was kept to report it after a restart."""
        ...

    def active(self) -> set[str]:
        """Ids of workloads whose processes have not been reported over yet."""
        ...

    def close(self) -> None:
        """Stop watching; the processes keep running (a restart adopts them)."""
        ...
