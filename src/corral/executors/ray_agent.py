"""The corral agent: one per Ray node, running that node's workloads.

``Agent`` is a plain class; ``ray.py`` makes it an async Ray actor (``num_cpus=0``,
detached, named ``corral-agent-<node id>``, pinned to its node, ``max_restarts=0``).
Nothing else imports this module, and it imports nothing of Ray at module level.

It wraps a ``LocalExecutor`` over ``<node_dir>/<node id>`` on its node (``logs/``,
``run/``, ``bin/``): the same shims, launcher, pidfd watch and state files as a local
server, so process groups, env, cwd, exit codes, signals and the kill grace behave
exactly as locally. Decisions:

- **The shim** comes from the server as bytes (its prebuilt shim), written 0700 into
  ``bin/`` under the name ``ensure_shim`` looks for (``shim_path``), so the node needs
  no compiler. corral must be the same version on every node (the name is the hash of
  this install's ``shim.c``; the bytes are the server's build of it).
- **The agent is watched by its shims** (``watch_pid=os.getpid()``): a shim whose
  agent is gone stops its workload, so nothing outlives a removed node or a killed
  agent.
- **GPUs**: the scheduler's device numbers are tokens for a placing executor; the
  agent picks free device numbers among its node's GPUs (``0 .. GPU-1`` from the node's
  Ray resources; Ray's reservation guarantees the count) and the workload gets them as
  ``CUDA_VISIBLE_DEVICES``.
- **``CORRAL_NODE``**: each workload gets its Ray node id in its environment (it may
  not set it itself).
- **Log cap** (``max_log_bytes``): the node's logs are capped by their shims as a local
  server's are (``corral.logs``); the node's log holds the head while the workload
  runs, and the finished log (head, marker, tail: appended to it) once it has
  ended, so the server's copy, read by offset, grows the same way.
- **Outcomes** are kept, numbered (``seq``), until the server names them in
  ``poll(forget=…)`` (after it stored them); each carries the log's final size, so the
  server reports an exit only once its copy of the log has that many bytes. ``forget``
  also deletes the node's log.
- **Long poll**: ``poll`` answers at once when it has an exit numbered after
  ``after``, log bytes beyond the server's offsets (at most ``CHUNK_BYTES`` per
  workload, ``ANSWER_BYTES`` in all), or a workload launched since that the server's
  offsets do not name yet (so the next poll follows its log); else it checks the logs
  every ``LOG_CHECK_SECONDS`` until ``wait`` seconds have passed. Exits and launches
  wake it at once (an ``asyncio.Event``).
- **A new agent adopts** what an earlier one left in ``run/`` (ids from the state
  files and the live shims), as ``LocalExecutor.adopt`` does for a restarted server;
  ``hello`` reports the live ones and the outcomes. An adopted workload's cwd is not
  known, so a chdir failure found that way names none.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.executors.base import Capacity, NotStartedError, Outcome, RunAs, SpawnError
from corral.executors.local import LocalExecutor, find_shims
from corral.executors.shim import shim_path
from corral.logs import ring_path
from corral.model import Workload

NODE_VARIABLE = "CORRAL_NODE"
"""The Ray node id a workload runs on, in its environment."""
CHUNK_BYTES = 1 << 20
"""Most log bytes of one workload in one ``poll`` answer."""
ANSWER_BYTES = 8 << 20
"""Most log bytes in one ``poll`` answer, over all workloads."""
LOG_CHECK_SECONDS = 0.2
"""How often a waiting ``poll`` looks whether a log grew."""
_STATE_SUFFIXES = (".pid", ".status", ".devices")


@dataclass(frozen=True, slots=True)
class Ended:
    """A workload's outcome as the agent keeps it until the server forgets it."""

    seq: int
    outcome: Outcome
    log_size: int


class Agent:
    """See the module docstring; every method is a coroutine run on the actor's loop."""

    def __init__(
        self,
        node_dir: str,
        shim: bytes,
        kill_grace_seconds: float,
        workload_umask: int | None = None,
        workload_open_files: int | None = None,
        max_log_bytes: int | None = None,
    ) -> None:
        import ray  # in the actor's process only

        self.node_id: str = ray.get_runtime_context().get_node_id()
        resources = _node_resources(self.node_id)
        capacity = Capacity(
            cpus=float(resources.get("CPU", 0)),
            memory_mb=int(resources.get("memory", 0)) >> 20,
            gpus=int(resources.get("GPU", 0)),
        )
        self.data_dir = Path(node_dir) / self.node_id
        private_dir(Path(node_dir))
        private_dir(self.data_dir)
        install_shim(self.data_dir / "bin", shim)
        self._local = LocalExecutor(
            self.data_dir,
            capacity=capacity,
            kill_grace_seconds=kill_grace_seconds,
            workload_umask=workload_umask,
            workload_open_files=workload_open_files,
            watch_pid=os.getpid(),
            max_log_bytes=max_log_bytes,
        )
        self._gpus = list(range(capacity.gpus))
        self._devices: dict[str, list[int]] = {}
        """Workloads launched or adopted and not over yet, with their GPUs."""
        self._ended: dict[str, Ended] = {}
        self._unannounced: set[str] = set()
        """Launched since the last poll that did not name them."""
        self._seq = 0
        self._wake: asyncio.Event | None = None

    # --- the actor's methods ---------------------------------------------------------

    async def hello(self) -> dict[str, Any]:
        """What this agent knows: live workloads (with their GPUs) and the outcomes
        not forgotten yet (``{id: Ended}``), and ``seq``, the number of its last exit."""
        await self._started()
        active = self._local.active()
        return {
            "pid": os.getpid(),
            "node_id": self.node_id,
            "seq": self._seq,
            "running": {w: d for w, d in self._devices.items() if w in active},
            "ended": dict(self._ended),
        }

    async def launch(self, workload: Workload, run_as: RunAs | None) -> dict[str, Any]:
        """Start ``workload`` here: ``{"devices": [...]}`` once its process runs and is
        watched, or ``{"error": why}`` when it could not be started."""
        wake = await self._started()
        wid = workload.id
        if wid in self._devices or wid in self._ended:
            return {"error": f"the corral agent on Ray node {self.node_id} already ran it"}
        used = {d for devices in self._devices.values() for d in devices}
        devices = [d for d in self._gpus if d not in used][: workload.resources.gpus]
        if len(devices) < workload.resources.gpus:
            return {"error": f"Ray node {self.node_id} has no {workload.resources.gpus} free GPUs"}
        env = {**workload.env, NODE_VARIABLE: self.node_id}
        # Without a cwd, a local workload starts where the server runs; here that would
        # be the agent's directory (Ray's, or corral's 0700 one): its account's home.
        cwd = workload.cwd or (run_as.home if run_as else os.environ.get("HOME", "/"))
        self._devices[wid] = devices
        self._unannounced.add(wid)
        wake.set()
        try:
            spec = workload.model_copy(update={"env": env, "cwd": cwd})
            await self._local.launch(spec, devices, run_as)
        except SpawnError as exc:
            self._devices.pop(wid, None)
            self._unannounced.discard(wid)
            return {"error": str(exc)}
        return {"devices": devices}

    async def terminate(self, workload_id: str) -> None:
        """As ``LocalExecutor.terminate``: SIGTERM to the group, SIGKILL after the grace."""
        await self._started()
        self._local.terminate(workload_id)

    async def poll(
        self, after: int, offsets: dict[str, int], forget: list[str], wait: float
    ) -> dict[str, Any]:
        """Forget ``forget``, then answer ``{"seq", "exits": [Ended…], "chunks": {id:
        bytes}, "cut": bool}`` (``cut``: some log bytes were left for the next answer)
        as the module docstring says."""
        wake = await self._started()
        for wid in forget:
            self._forget(wid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            wake.clear()
            exits = [e for e in self._ended.values() if e.seq > after]
            chunks, cut = self._chunks(offsets)
            new = self._unannounced - offsets.keys()
            self._unannounced.clear()
            left = deadline - loop.time()
            if exits or chunks or new or left <= 0:
                return {"seq": self._seq, "exits": exits, "chunks": chunks, "cut": cut}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(left, LOG_CHECK_SECONDS))

    # --- inside ------------------------------------------------------------------------

    async def _started(self) -> asyncio.Event:
        """Start the ``LocalExecutor`` on the actor's loop at the first call, adopting
        what an earlier agent left in ``run/``."""
        if self._wake is not None:
            return self._wake
        self._wake = asyncio.Event()
        self._local.start(self._exited)
        run_dir = self._local.run_dir
        ids = set(find_shims(run_dir))
        for path in run_dir.iterdir():
            for suffix in _STATE_SUFFIXES:
                if path.name.endswith(suffix):
                    ids.add(path.name.removesuffix(suffix))
        for wid in sorted(ids):
            try:
                devices = self._local.adopt(_stub(wid))
            except NotStartedError:
                self._local.forget(wid)  # a devices file, and no process ever ran
                continue
            if devices is not None:
                self._devices[wid] = devices
        self._local.stop_unadopted()  # nothing: every shim found was adopted
        await asyncio.sleep(0)  # the outcomes found are reported on this loop turn
        return self._wake

    def _exited(self, outcome: Outcome) -> None:
        wid = outcome.workload_id
        try:
            size = os.stat(self._local.logs.path(wid)).st_size
        except OSError:
            size = 0
        self._seq += 1
        self._ended[wid] = Ended(self._seq, outcome, size)
        self._devices.pop(wid, None)
        if self._wake is not None:
            self._wake.set()

    def _forget(self, workload_id: str) -> None:
        if workload_id in self._devices:
            return  # still running here: only an outcome is forgotten
        self._ended.pop(workload_id, None)
        self._local.forget(workload_id)
        path = self._local.logs.path(workload_id)
        for name in (path, ring_path(path)):  # a ring only if a capped log could not be finished
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    _turn = 0
    """Where the next answer starts among the server's workloads: where the last one
    ran out of room, so that a few fast writers cannot starve the others' logs (nor
    their exits, reported once their logs are whole)."""

    def _chunks(self, offsets: dict[str, int]) -> tuple[dict[str, bytes], bool]:
        chunks: dict[str, bytes] = {}
        budget = ANSWER_BYTES
        order = list(offsets)
        start = self._turn % len(order) if order else 0
        for k in range(len(order)):
            wid = order[(start + k) % len(order)]
            offset = offsets[wid]
            path = self._local.logs.path(wid)
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            if size <= offset:
                continue
            if budget <= 0:
                self._turn = start + k  # the next answer starts with this one
                return chunks, True
            try:
                with open(path, "rb") as f:
                    data = os.pread(f.fileno(), min(size - offset, CHUNK_BYTES, budget), offset)
            except OSError:
                continue
            if data:
                chunks[wid] = data
                budget -= len(data)
        return chunks, False


def private_dir(path: Path) -> None:
    """Create ``path`` (0700, parents as needed), or take it only if it is a real
    directory of this user that nobody else may enter: the shim that runs every
    workload (as root, on a root agent) is kept below it, and a directory someone
    else made in a shared ``/tmp`` could hold their program under the shim's name."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise RuntimeError(
            f"refusing the node directory {path}: it must be a directory of uid"
            f" {os.geteuid()} with mode 0700 (it is uid {st.st_uid}, mode"
            f" {stat.S_IMODE(st.st_mode):04o}{', a link' if stat.S_ISLNK(st.st_mode) else ''})"
        )


def install_shim(bin_dir: Path, shim: bytes) -> Path:
    """Write ``shim`` (mode 0700) where ``ensure_shim`` looks for it in ``bin_dir``,
    through a temporary file and a rename; kept when it is there already."""
    target = shim_path(bin_dir)
    if os.access(target, os.X_OK):
        return target
    bin_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=bin_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(shim)
        tmp.chmod(0o700)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _node_resources(node_id: str) -> dict[str, float]:
    """The whole resources of Ray node ``node_id`` (``CPU``, ``memory`` in bytes, ``GPU``)."""
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    for node in nodes:
        if node["NodeID"] == node_id:
            return dict(node.get("Resources", {}))
    return {}


def _stub(workload_id: str) -> Workload:
    """A workload known by its id only (what ``LocalExecutor.adopt`` reads: the id,
    and the cwd, unknown here)."""
    fields: dict[str, Any] = {"id": workload_id, "cwd": None}
    return Workload.model_construct(**fields)
