"""What an executor is: it starts, signals and reports; it never writes a status.

The scheduler owns every status change. An executor tells it what happened through
one callback, with an ``Outcome``; the scheduler turns that into a transition.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal as signals
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from corral.logs import FileLogs
from corral.model import Workload


@dataclass(frozen=True, slots=True)
class Capacity:
    """What an executor can run at once."""

    cpus: float
    memory_mb: int
    gpus: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a workload's process ended; exactly one of the four after the id is set."""

    workload_id: str
    exit_code: int | None = None
    signal: int | None = None
    spawn_error: str | None = None
    lost: str | None = None
    log_bytes: int | None = field(default=None, compare=False)
    """The final size of its log, when the executor knows it (for
    ``corral_log_bytes_total``): the local executor's (and a Ray node's) stat of it."""

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signals.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"


OnExit = Callable[[Outcome], None]
OnChange = Callable[[], None]
"""Called (on the loop) when the executor's capacity or nodes changed."""


@dataclass(frozen=True, slots=True)
class Node:
    """A machine workloads run on: this one for the local executor, a Ray node."""

    id: str
    address: str
    capacity: Capacity
    alive: bool = True


@dataclass(frozen=True, slots=True)
class RunAs:
    """The Unix account a workload runs as (its owner's ``unix_user``)."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    """Supplementary groups, the primary one included (as ``getgrouplist`` gives them)."""
    name: str
    home: str


def resolve_run_as(unix_user: str) -> RunAs:
    """The account named ``unix_user``, from the password and group databases, read
    now (a later change to them applies to later launches). Raises ``ValueError`` for
    an unknown account."""
    try:
        entry = pwd.getpwnam(unix_user)
    except KeyError:
        raise ValueError(f"no Unix user named {unix_user!r}") from None
    groups = tuple(dict.fromkeys(os.getgrouplist(entry.pw_name, entry.pw_gid)))
    return RunAs(entry.pw_uid, entry.pw_gid, groups, entry.pw_name, entry.pw_dir)


class SpawnError(Exception):
    """The workload's process could not be started; the message is the OS's."""


class NotStartedError(Exception):
    """From ``adopt``: no process ever ran the workload (an earlier server stopped
    between claiming it and starting it), so it can be started now and still runs
    at most once."""


class Executor(Protocol):
    """Runs processes for the scheduler; every method is called on the event loop."""

    kind: Literal["local", "ray"]
    """Its name, as ``--executor`` and ``GET /v1/status`` give it."""
    capacity: Capacity
    """What may run at once, in all (the sum over alive nodes)."""
    placement: bool
    """True when a node must be found for a workload before it is claimed (``place``);
    False when it may be claimed and launched at once (the local executor)."""
    logs: FileLogs
    """Where the API reads workloads' logs."""

    async def open(self) -> None:
        """Connect (a cluster), before ``start`` and ``adopt``; the local one has
        nothing to do."""
        ...

    def start(self, on_exit: OnExit, on_change: OnChange | None = None) -> None:
        """Begin reporting: ``on_exit`` is called (on the loop) once per launched or
        adopted workload, when its process is over; ``on_change`` when the capacity or
        the nodes changed."""
        ...

    def nodes(self) -> list[Node]:
        """The machines workloads may run on, with their whole capacity."""
        ...

    def place(self, workload: Workload) -> asyncio.Future[str]:
        """(``placement`` only) Find a node for the pending workload: a future of its
        id, set once its resources there are reserved for it."""
        ...

    def unplace(self, workload_id: str) -> None:
        """(``placement`` only) Drop a placement (made or still looked for) of a
        workload that will not be launched."""
        ...

    def placing_reason(self, workload: Workload) -> str:
        """(``placement`` only) Why a placement is not made yet, as a pending reason."""
        ...

    def node_of(self, workload_id: str) -> str | None:
        """The node a launched (or placed) workload is on."""
        ...

    def launch(
        self, workload: Workload, gpu_devices: Sequence[int], run_as: RunAs | None = None
    ) -> Awaitable[None]:
        """Start the workload's process: raise ``SpawnError`` now, or return an
        awaitable that ends once the process runs and is watched (or raises
        ``SpawnError``). From this call on, a ``terminate`` is not lost: the process
        is stopped as soon as it exists. With ``run_as`` the process runs as that
        account (its groups, ``HOME``, ``USER``, ``LOGNAME``); what watches and stops
        it keeps the server's rights. A failure to change to it is a ``SpawnError``
        or a spawn-error outcome, and runs nothing."""
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
        """Stop watching; the processes keep running (a restart adopts them). The local
        executor first waits (up to 5 s) for the shims it forked just before to be
        findable by a restart (``LocalExecutor._await_named``)."""
        ...
