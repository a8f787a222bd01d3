"""``RayExecutor``: workloads placed by Ray and run by a corral agent on each node.

Only this module imports Ray, and nothing imports it unless the Ray executor is
chosen. See docs/ray.md ("Built as") for the design; the decisions taken here:

- **Placement** (``place``): a detached placement group named ``corral-<workload
  id>`` in corral's namespace, one ``STRICT_PACK`` bundle of the workload's
  ``CPU``/``memory`` (bytes)/``GPU`` (zero amounts omitted). Its creation and removal
  run on one thread of their own (``_gcs``), in order, so a removal asked while the
  creation is under way still finds the group; the future is set to the node id from
  ``placement_group_table`` once ``pg.ready()`` (awaited on the loop) resolves. A
  workload asking for nothing gets no group: it goes to the node with an agent that
  runs the fewest of corral's workloads. A group that cannot be created sets the
  future's exception (``SpawnError``). Groups are removed when the workload's exit
  is reported, on ``unplace`` or a failed launch, and in ``stop_unadopted`` for
  groups of this namespace whose workloads are not running.
- **Waiting reasons** (``placing_reason``) name the most of each asked resource free
  on one node, from ``ray._private.state.available_resources_per_node()`` (a
  DeveloperAPI, one GCS call; ``ray.util.state.list_nodes`` needs the dashboard, which
  a corral-started head does not run): the node watch's look when it is under
  ``FREE_FRESH_SECONDS`` old, else a new one on the loop (~1 ms).
- **Launch** sends the workload to the agent of the node its placement gave; a node
  just joined whose agent is still starting is waited for (``AGENT_WAIT_SECONDS``).
  The agent's error answer, or its death, is a ``SpawnError`` (and the group goes).
- **Agents**: one detached async actor per alive node (``ray_agent.Agent``), found by
  name or created (``get_if_exists``) at ``open`` and when a node appears; a node
  whose agent cannot be started is retried every ``AGENT_RETRY_SECONDS``. Every
  node must import the same corral (the agent class is pickled by reference). An
  agent found by name keeps what it was made with (``node_dir``, the kill grace, the
  umask and open-files limit of workloads, the log cap): a server restarted with other values
  gets them only on agents it creates.
- **Exits and logs**: one long-poll task per agent. Log chunks are appended to
  ``DATA_DIR/logs/<id>.log`` (0600, emptied at launch); an exit is reported only once
  that copy has the outcome's ``log_size`` bytes (or the node has no more to give).
  With a log cap (``--max-log-bytes``) the nodes' shims cap the logs, and the copy
  follows: only the head while the workload runs (the tail is in the node's ring,
  not copied: a ring rewritten in place has no offset to copy from), then the marker
  and the tail, appended at its end, when the node's log is finished.
- **Lost**: the node watch (``ray.nodes()`` every ``NODE_WATCH_SECONDS``, on a
  thread) reports every workload of a node gone ALIVE→DEAD as ``lost: Ray node <id>
  (<address>) died``; a poll failing with ``ActorDiedError`` looks at the nodes at
  once (the same report when the node is dead), else reports the agent's workloads
  ``lost: the corral agent on Ray node … died`` and starts a new agent, which stops
  what its predecessor left (nothing is left to report).
- **Restarts** (``adopt``): from the agents' ``hello`` answers and ``workload.node``;
  a workload claimed on an alive node that no agent knows is ``NotStartedError``,
  and stays placed on that node (its group kept) so a direct launch runs it there.
- ``capacity`` and ``nodes()`` count every alive node (an agent-less one too: Ray may
  place a workload there, whose launch then fails saying so).
- **Token auth**: Ray reads ``RAY_AUTH_MODE`` once, when ``ray._raylet`` loads (at
  ``import ray``), and ``ray.init`` then needs the token (``RAY_AUTH_TOKEN``, or
  ``RAY_AUTH_TOKEN_PATH``): whoever chooses this executor sets them in ``os.environ``
  before importing this module.
- **Log records**: ``import ray`` installs a log record factory that adds
  ``_ray_timestamp_ns`` to every record of the process; this module puts the plain
  one back (``keep_log_records_plain``), or the server log would print it as a field.
- ``close`` stops the tasks and disconnects (``ray.shutdown`` on a thread, waited
  for: ``close`` is synchronous); agents and their workloads keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.util.placement_group import (
    PlacementGroup,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from corral.errors import CorralError
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
from corral.executors.ray_agent import Agent, Ended
from corral.executors.shim import ensure_shim
from corral.logs import FileLogs
from corral.model import Workload

log = logging.getLogger(__name__)

NODE_WATCH_SECONDS = 0.5
POLL_WAIT_SECONDS = 0.5
"""How long an agent holds a poll with nothing to say (exits and launches end it)."""
AGENT_RETRY_SECONDS = 10.0
AGENT_WAIT_SECONDS = 30.0
FREE_FRESH_SECONDS = 0.1
"""A waiting reason reads the nodes' free resources again (one GCS call, on the loop)
when the last look is older than this: reasons asked together share one."""
GROUP_PREFIX = "corral-"
AGENT_PREFIX = "corral-agent-"
FILE_MODE = 0o600
_MB = 1 << 20


class RayJoinError(CorralError):
    """The Ray cluster could not be joined; the message says why."""


class _NotOnMainThread(logging.Filter):
    """Ray warns that it set no SIGTERM handler when joined from a thread: corral's
    choice (the server handles SIGTERM), so not worth a line in the server's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


logging.getLogger("ray._private.worker").addFilter(_NotOnMainThread())


def keep_log_records_plain() -> None:
    """Undo what ``import ray`` does to every log record of the process: its record
    factory adds ``_ray_timestamp_ns``, which corral's server log would write as a
    field of each line (it writes a record's extra attributes). Ray's own formatters
    do without it."""
    if getattr(logging.getLogRecordFactory(), "__module__", "") == "ray._private.log":
        logging.setLogRecordFactory(logging.LogRecord)


keep_log_records_plain()
_AgentActor = ray.remote(Agent)
# Ray's own annotations leave these untyped.
_ray_nodes: Callable[[], list[dict[str, Any]]] = ray.nodes
_free_per_node: Callable[[], dict[str, dict[str, float]]] = (
    ray._private.state.available_resources_per_node
)


@dataclass(slots=True)
class _Agent:
    node: Node
    handle: Any
    seq: int
    offsets: dict[str, int] = field(default_factory=dict)
    """The server's copy size of every workload of this agent whose log it follows."""
    forget: set[str] = field(default_factory=set)
    """Outcomes to drop at the next poll."""
    task: asyncio.Task[None] | None = None


class RayExecutor:
    """Workloads on a Ray cluster; see the module docstring."""

    kind: Literal["local", "ray"] = "ray"
    placement = True

    def __init__(
        self,
        data_dir: Path,
        *,
        address: str,
        namespace: str,
        kill_grace_seconds: float,
        node_dir: Path,
        workload_umask: int | None = None,
        workload_open_files: int | None = None,
        max_log_bytes: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.max_log_bytes = max_log_bytes
        self.address = address
        self.namespace = namespace
        self.kill_grace_seconds = kill_grace_seconds
        self.node_dir = node_dir
        self.workload_umask = workload_umask
        self.workload_open_files = workload_open_files
        self.logs = FileLogs(data_dir)
        self.capacity = Capacity(cpus=0.0, memory_mb=0, gpus=0)
        (data_dir / "logs").mkdir(parents=True, exist_ok=True)
        self._shim_path = ensure_shim(data_dir / "bin")
        self._shim = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_exit: OnExit | None = None
        self._on_change: OnChange | None = None
        self._nodes: dict[str, Node] = {}
        """Every node seen, by id, as the node watch last saw it."""
        self._free: dict[str, dict[str, float]] = {}
        """Alive nodes' free resources, as last seen (the node watch, a reason)."""
        self._free_at = 0.0
        self._agents: dict[str, _Agent] = {}
        self._connecting: set[str] = set()
        self._agent_failed: dict[str, float] = {}
        self._hellos: dict[str, dict[str, Any]] = {}
        """From ``open`` to ``stop_unadopted``: what each agent knew, for ``adopt``."""
        self._node_of: dict[str, str] = {}
        self._placing: dict[str, asyncio.Task[None]] = {}
        self._waiting: dict[str, asyncio.Future[str]] = {}
        """Placements asking for nothing, waiting for a node with an agent."""
        self._groups: dict[str, PlacementGroup] = {}
        """Placement groups by workload id: only ever used on the ``_gcs`` thread."""
        self._launching: set[str] = set()
        self._stop_on_start: set[str] = set()
        self._watched: dict[str, str] = {}
        """Launched or adopted workloads whose exit is not reported yet, with their node."""
        self._exits: dict[str, Ended] = {}
        """Exits received, waiting for the log copy (or for the launch answer)."""
        self._reported: dict[str, str] = {}
        """Exits reported and not forgotten yet, with their node."""
        self._strays: set[str] = set()
        self._log_gaps: set[str] = set()  # workloads whose log copy missed a chunk
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gcs = ThreadPoolExecutor(1, thread_name_prefix="corral-ray")

    # --- connect ----------------------------------------------------------------------

    def connect(self, timeout: float) -> None:
        """Join the cluster now, before the server starts, so that one that cannot be
        joined is one clear error (``RayJoinError``) rather than minutes of Ray's
        retries. ``ray.init`` runs on a thread of its own: Ray then leaves SIGTERM to
        the server (on the main thread it installs a handler that exits at once), and
        a join that hangs (a GCS that answers TCP but never Ray) is given up after
        ``timeout`` seconds."""
        failure: list[BaseException] = []

        def join() -> None:
            try:
                self._join()
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=join, name="corral-ray-join", daemon=True)
        thread.start()
        thread.join(timeout)
        hint = (
            "is its GCS at that address, and does it use token auth (then RAY_AUTH_TOKEN"
            " or RAY_AUTH_TOKEN_PATH must be set for corral serve)?"
        )
        if thread.is_alive():
            raise RayJoinError(
                f"cannot join the Ray cluster at {self.address}: no answer within"
                f" {timeout:g} s; {hint}"
            )
        if failure:
            first = (str(failure[0]).strip().splitlines() or [type(failure[0]).__name__])[0]
            raise RayJoinError(f"cannot join the Ray cluster at {self.address}: {first}; {hint}")

    def _join(self) -> None:
        ray.init(
            address=self.address,
            namespace=self.namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )

    async def open(self) -> None:
        """Join the cluster (unless ``connect`` did), find or start an agent on every
        alive node, ask each what it knows (for ``adopt``), and list this namespace's
        placement groups."""
        self._loop = asyncio.get_running_loop()
        self._shim = self._shim_path.read_bytes()
        if not ray.is_initialized():
            await self._loop.run_in_executor(self._gcs, self._join)
        nodes, free = await asyncio.to_thread(_look)
        self._nodes = nodes
        self._set_free(free)
        self.capacity = _sum(n for n in nodes.values() if n.alive)
        alive = [n for n in nodes.values() if n.alive]
        await asyncio.gather(*(self._add_agent(n, adopting=True) for n in alive))
        await self._loop.run_in_executor(self._gcs, self._find_groups)

    def start(self, on_exit: OnExit, on_change: OnChange | None = None) -> None:
        self._on_exit = on_exit
        self._on_change = on_change
        self._loop = asyncio.get_running_loop()
        for agent in self._agents.values():
            self._follow(agent)
        self._spawn(self._watch_nodes(), "corral-ray-nodes")

    def nodes(self) -> list[Node]:
        return [n for n in self._nodes.values() if n.alive]

    def node_of(self, workload_id: str) -> str | None:
        return self._node_of.get(workload_id)

    def active(self) -> set[str]:
        return set(self._watched)

    # --- placement --------------------------------------------------------------------

    def place(self, workload: Workload) -> asyncio.Future[str]:
        assert self._loop is not None, "open() first"
        future: asyncio.Future[str] = self._loop.create_future()
        bundle = _bundle(workload)
        if not bundle:
            self._waiting[workload.id] = future
            self._place_waiting()
            return future
        wid = workload.id
        task = self._loop.create_task(self._place(wid, bundle, future))
        self._placing[wid] = task
        task.add_done_callback(
            lambda t: self._placing.pop(wid) if self._placing.get(wid) is t else None
        )
        return future

    async def _place(self, wid: str, bundle: dict[str, float], future: asyncio.Future[str]) -> None:
        assert self._loop is not None
        try:
            group = await self._loop.run_in_executor(self._gcs, self._create_group, wid, bundle)
            await group.ready()
            table = await self._loop.run_in_executor(self._gcs, placement_group_table, group)
            node = str(table["bundles_to_node_id"][0])
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            log.warning("Ray could not place %s: %s", wid, exc)
            self._remove_group(wid)
            if not future.done():
                future.set_exception(SpawnError(f"Ray could not place it: {exc}"))
            return
        self._node_of[wid] = node
        if not future.done():
            future.set_result(node)

    def _place_waiting(self) -> None:
        """Give the placements that ask for nothing the node with an agent that runs
        the fewest of corral's workloads."""
        if not self._waiting or not self._agents:
            return
        load = dict.fromkeys(self._agents, 0)
        for node in self._node_of.values():
            if node in load:
                load[node] += 1
        for wid, future in list(self._waiting.items()):
            del self._waiting[wid]
            if future.done():
                continue
            node = min(load, key=lambda n: load[n])
            load[node] += 1
            self._node_of[wid] = node
            future.set_result(node)

    def unplace(self, workload_id: str) -> None:
        task = self._placing.pop(workload_id, None)
        if task is not None:
            task.cancel()
        future = self._waiting.pop(workload_id, None)
        if future is not None:
            future.cancel()
        self._node_of.pop(workload_id, None)
        self._remove_group(workload_id)

    def placing_reason(self, workload: Workload) -> str:
        res = workload.resources
        wanted = [(res.cpus, "CPU"), (res.memory_mb, "MB of memory"), (res.gpus, "GPU")]
        needs = ", ".join(_amount(v, unit) for v, unit in wanted if v)
        reason = f"waiting for Ray to place it: {needs} on one node"
        if time.monotonic() - self._free_at > FREE_FRESH_SECONDS:
            try:
                self._set_free(_free_now())
            except Exception as exc:
                log.warning("cannot read Ray's free resources: %s", exc)
        if not self._free:
            return reason
        most = {
            "CPU": max(f.get("CPU", 0.0) for f in self._free.values()),
            "MB of memory": max(f.get("memory", 0.0) for f in self._free.values()) // _MB,
            "GPU": max(f.get("GPU", 0.0) for f in self._free.values()),
        }
        free = ", ".join(_amount(most[unit], unit) for v, unit in wanted if v)
        return f"{reason}; the most free on one node: {free}"

    def _set_free(self, free: dict[str, dict[str, float]]) -> None:
        self._free, self._free_at = free, time.monotonic()

    # placement groups: on the ``_gcs`` thread only

    def _create_group(self, wid: str, bundle: dict[str, float]) -> PlacementGroup:
        self._drop_group(wid)  # one left for it (placed again after a restart)
        group: PlacementGroup = placement_group(
            [bundle], strategy="STRICT_PACK", name=GROUP_PREFIX + wid, lifetime="detached"
        )
        self._groups[wid] = group
        return group

    def _drop_group(self, wid: str) -> None:
        group = self._groups.pop(wid, None)
        if group is not None:
            try:
                remove_placement_group(group)
            except Exception as exc:
                log.warning("cannot remove the Ray placement group of %s: %s", wid, exc)

    def _remove_group(self, wid: str) -> None:
        with contextlib.suppress(RuntimeError):  # closed: the next server removes it
            self._gcs.submit(self._drop_group, wid)

    def _find_groups(self) -> None:
        """This namespace's groups (``get_placement_group`` looks names up in it)."""
        for info in placement_group_table().values():
            name = str(info.get("name", ""))
            if not name.startswith(GROUP_PREFIX) or info.get("state") == "REMOVED":
                continue
            with contextlib.suppress(ValueError):
                group = get_placement_group(name)
                if group.id.hex() == info["placement_group_id"]:
                    self._groups[name.removeprefix(GROUP_PREFIX)] = group

    def _drop_groups_except(self, keep: set[str]) -> None:
        for wid in [w for w in self._groups if w not in keep]:
            self._drop_group(wid)

    # --- launch, terminate ------------------------------------------------------------

    def launch(
        self, workload: Workload, gpu_devices: Sequence[int], run_as: RunAs | None = None
    ) -> Awaitable[None]:
        """See ``Executor.launch``: on the node its placement gave, by that node's
        agent (which picks the GPUs: ``gpu_devices`` are the scheduler's tokens). A
        node Ray placed it on whose agent is still starting (a node just joined) is
        waited for, up to ``AGENT_WAIT_SECONDS``."""
        wid = workload.id
        node = self._node_of.get(wid)
        if node is None:
            raise SpawnError("it has no Ray node (it was not placed)")
        try:
            fd = os.open(self.logs.path(wid), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            os.close(fd)
        except OSError as exc:
            self._fail_launch(wid)
            raise SpawnError(f"cannot open its log: {exc.strerror}") from None
        self._launching.add(wid)
        return self._launched(workload, node, run_as)

    async def _launched(self, workload: Workload, node: str, run_as: RunAs | None) -> None:
        wid = workload.id
        agent: _Agent | None = None
        try:
            agent = self._agents.get(node) or await self._agent_on(node)
            agent.offsets[wid] = 0
            try:
                result: dict[str, Any] = await agent.handle.launch.remote(workload, run_as)
            except RayActorError:
                where = f"Ray node {agent.node.id} ({agent.node.address})"
                raise SpawnError(f"the corral agent on {where} died") from None
            if "error" in result:
                raise SpawnError(str(result["error"]))
        except BaseException:
            self._launching.discard(wid)
            self._stop_on_start.discard(wid)
            if agent is not None:
                agent.offsets.pop(wid, None)
            self._exits.pop(wid, None)
            self._fail_launch(wid)
            raise
        self._launching.discard(wid)
        self._watched[wid] = node
        if wid in self._stop_on_start:
            self._stop_on_start.discard(wid)
            self.terminate(wid)
        assert self._loop is not None
        self._loop.call_soon(self._maybe_report, wid)  # an exit that came first

    async def _agent_on(self, node_id: str) -> _Agent:
        """The agent of ``node_id``, waited for while it may still come."""
        assert self._loop is not None
        deadline = self._loop.time() + AGENT_WAIT_SECONDS
        while (agent := self._agents.get(node_id)) is None:
            node = self._nodes.get(node_id)
            failed = node_id in self._agent_failed and node_id not in self._connecting
            if (node is not None and not node.alive) or failed or self._loop.time() > deadline:
                raise SpawnError(f"no corral agent runs on Ray node {node_id}")
            await asyncio.sleep(0.05)
        return agent

    def _fail_launch(self, wid: str) -> None:
        self._node_of.pop(wid, None)
        self._remove_group(wid)

    def terminate(self, workload_id: str) -> None:
        if workload_id in self._launching:
            self._stop_on_start.add(workload_id)
            return
        node = self._watched.get(workload_id)
        agent = self._agents.get(node) if node is not None else None
        if agent is not None:
            agent.handle.terminate.remote(workload_id)

    def forget(self, workload_id: str) -> None:
        node = self._reported.pop(workload_id, None)
        self._node_of.pop(workload_id, None)
        agent = self._agents.get(node) if node is not None else None
        if agent is not None:
            agent.forget.add(workload_id)

    # --- restart --------------------------------------------------------------------

    def adopt(self, workload: Workload) -> list[int] | None:
        """See ``Executor.adopt`` and the module docstring."""
        assert self._loop is not None, "open() first"
        wid = workload.id
        for known_on, hello in self._hellos.items():
            agent = self._agents[known_on]
            running: dict[str, list[int]] = hello["running"]
            ended: dict[str, Ended] = hello["ended"]
            if wid not in running and wid not in ended:
                continue
            self._node_of[wid] = known_on
            self._watched[wid] = known_on
            agent.offsets[wid] = self._copy_size(wid)
            if wid in running:
                return list(running[wid])
            self._exits[wid] = ended[wid]
            self._loop.call_soon(self._maybe_report, wid)
            return None
        node_id: str | None = getattr(workload, "node", None)
        if node_id is not None and node_id in self._agents:
            self._node_of[wid] = node_id  # claimed there, never started: start it there
            raise NotStartedError(wid)
        node = self._nodes.get(node_id) if node_id is not None else None
        if node is not None:
            why = f"Ray node {node.id} ({node.address}) died"
        elif node_id is not None:
            why = f"Ray node {node_id} is not in the cluster"
        else:
            why = "no corral agent knows it, and no Ray node was recorded for it"
        self._loop.call_soon(self._report_now, Outcome(wid, lost=why))
        return None

    def stop_unadopted(self) -> list[str]:
        """See ``Executor.stop_unadopted``: live workloads the agents know and the
        store does not run are stopped, outcomes nobody adopted forgotten, and the
        namespace's placement groups of workloads not running removed."""
        strays = []
        for node_id, hello in self._hellos.items():
            agent = self._agents[node_id]
            for wid in hello["running"]:
                if wid not in self._watched:
                    strays.append(wid)
                    self._stop_stray(agent, wid)
            agent.forget.update(w for w in hello["ended"] if w not in self._watched)
        self._hellos.clear()
        keep = set(self._watched) | set(self._node_of)
        with contextlib.suppress(RuntimeError):
            self._gcs.submit(self._drop_groups_except, keep)
        return strays

    def _stop_stray(self, agent: _Agent, wid: str) -> None:
        log.warning("stopping workload %s on Ray node %s: it is not running", wid, agent.node.id)
        self._strays.add(wid)
        agent.handle.terminate.remote(wid)

    # --- exits and logs -----------------------------------------------------------

    def _follow(self, agent: _Agent) -> None:
        agent.task = self._spawn(self._poll(agent), f"corral-ray-poll-{agent.node.id[:8]}")

    async def _poll(self, agent: _Agent) -> None:
        while True:
            forget, agent.forget = agent.forget, set()
            sent = dict(agent.offsets)
            try:
                answer = await agent.handle.poll.remote(
                    agent.seq, sent, sorted(forget), POLL_WAIT_SECONDS
                )
            except ActorUnavailableError:  # for now: it may come back
                agent.forget |= forget
                await asyncio.sleep(NODE_WATCH_SECONDS)
                continue
            except RayActorError as exc:
                agent.forget |= forget
                await self._agent_died(agent, exc)
                return
            except Exception as exc:
                log.warning("polling the corral agent on Ray node %s: %s", agent.node.id, exc)
                agent.forget |= forget
                await asyncio.sleep(NODE_WATCH_SECONDS)
                continue
            self._take(agent, sent, answer)

    def _take(self, agent: _Agent, sent: dict[str, int], answer: dict[str, Any]) -> None:
        """Append the chunks, keep the exits, report those whose log copy is whole."""
        agent.seq = int(answer["seq"])
        chunks: dict[str, bytes] = answer["chunks"]
        for wid, data in chunks.items():
            if wid in agent.offsets:
                # A chunk that cannot be written (a full disk) is skipped, not asked for
                # again: the copy has a gap, but the exit is still reported (as a local
                # workload's is, whose own writes fail), and nothing spins.
                self._append(wid, data)
                agent.offsets[wid] += len(data)
        ended: list[Ended] = answer["exits"]
        for end in ended:
            wid = end.outcome.workload_id
            if wid in self._strays:
                self._strays.discard(wid)
                agent.forget.add(wid)
            elif wid in agent.offsets:
                self._exits[wid] = end
            elif agent.node.id in self._hellos:  # adoption under way: for ``adopt``
                self._hellos[agent.node.id]["ended"][wid] = end
            else:  # not ours (an outcome an earlier agent or server left)
                agent.forget.add(wid)
        for wid in [w for w in self._exits if w in agent.offsets]:
            # Asked from its offset and nothing more came (uncut): the node has no more.
            complete = wid in sent and wid not in chunks and not answer["cut"]
            self._maybe_report(wid, complete=complete)

    def _maybe_report(self, wid: str, *, complete: bool = False) -> None:
        """Report ``wid``'s exit once it is watched and its log copy is whole (or
        ``complete``: the node had no more of it to give)."""
        end = self._exits.get(wid)
        node = self._watched.get(wid)
        if end is None or node is None:
            return
        agent = self._agents.get(node)
        if agent is not None and agent.offsets.get(wid, 0) < end.log_size and not complete:
            return
        self._report(wid, end.outcome)

    def _report(self, wid: str, outcome: Outcome) -> None:
        assert self._on_exit is not None, "start() first"
        node = self._watched.pop(wid)
        self._exits.pop(wid, None)
        agent = self._agents.get(node)
        if agent is not None:
            agent.offsets.pop(wid, None)
        self._reported[wid] = node
        self._log_gaps.discard(wid)
        self._remove_group(wid)
        self._on_exit(outcome)

    def _report_now(self, outcome: Outcome) -> None:
        assert self._on_exit is not None, "start() first"
        self._on_exit(outcome)

    def _copy_size(self, wid: str) -> int:
        try:
            return os.stat(self.logs.path(wid)).st_size
        except FileNotFoundError:
            fd = os.open(self.logs.path(wid), os.O_WRONLY | os.O_CREAT, FILE_MODE)
            os.close(fd)
            return 0

    def _append(self, wid: str, data: bytes) -> bool:
        """Append to the server's copy; a failure is logged once per workload."""
        try:
            fd = os.open(
                self.logs.path(wid), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                FILE_MODE,
            )  # fmt: skip
        except OSError as exc:
            self._cannot_write(wid, exc)
            return False
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            return True
        except OSError as exc:
            self._cannot_write(wid, exc)
            return False
        finally:
            os.close(fd)

    def _cannot_write(self, wid: str, exc: OSError) -> None:
        if wid not in self._log_gaps:
            self._log_gaps.add(wid)
            log.warning(
                "cannot write the log of %s: %s; its copy here misses that part", wid,
                exc.strerror,
            )  # fmt: skip

    # --- nodes and agents -----------------------------------------------------------

    async def _watch_nodes(self) -> None:
        while True:
            await asyncio.sleep(NODE_WATCH_SECONDS)
            try:
                nodes, free = await asyncio.to_thread(_look)
            except Exception as exc:
                log.warning("cannot list the Ray nodes: %s", exc)
                continue
            self._update_nodes(nodes, free)

    def _update_nodes(self, nodes: dict[str, Node], free: dict[str, dict[str, float]]) -> None:
        before = self._nodes
        self._nodes = nodes
        self._set_free(free)
        for node in nodes.values():
            was = before.get(node.id)
            if was is not None and was.alive and not node.alive:
                self._node_died(node)
            elif node.alive and node.id not in self._agents and node.id not in self._connecting:
                failed = self._agent_failed.get(node.id)
                if failed is None or time.monotonic() - failed > AGENT_RETRY_SECONDS:
                    self._spawn(self._add_agent(node, adopting=False), "corral-ray-agent")
        capacity = _sum(n for n in nodes.values() if n.alive)
        alive = {n.id for n in nodes.values() if n.alive}
        if capacity != self.capacity or alive != {n.id for n in before.values() if n.alive}:
            self.capacity = capacity
            if self._on_change is not None:
                self._on_change()

    def _node_died(self, node: Node) -> None:
        log.warning("Ray node %s (%s) died", node.id, node.address)
        self._lose(node, f"Ray node {node.id} ({node.address}) died")

    def _lose(self, node: Node, why: str) -> None:
        """Every workload of ``node``'s agent is lost; the agent is dropped."""
        agent = self._agents.pop(node.id, None)
        if agent is not None and agent.task is not None:
            agent.task.cancel()
        for wid in [w for w, n in self._watched.items() if n == node.id]:
            self._report(wid, Outcome(wid, lost=why))
        for wid in [w for w, n in self._reported.items() if n == node.id]:
            del self._reported[wid]  # nothing left there to forget

    async def _agent_died(self, agent: _Agent, exc: RayActorError) -> None:
        node = agent.node
        try:
            nodes, free = await asyncio.to_thread(_look)
        except Exception:
            nodes, free = self._nodes, self._free
        now = nodes.get(node.id)
        if now is None or not now.alive:
            self._update_nodes(nodes, free)  # reports the node's death
            return
        if self._agents.get(node.id) is not agent:
            return
        reason = "the corral agent on Ray node"
        log.warning("%s %s (%s) died: %s", reason, node.id, node.address, exc)
        self._lose(node, f"{reason} {node.id} ({node.address}) died")
        await self._add_agent(node, adopting=False)

    async def _add_agent(self, node: Node, *, adopting: bool) -> None:
        """Find or start the agent of ``node`` and ask what it knows: kept for
        ``adopt`` (``adopting``), else stopped and forgotten (a new node's agent knows
        nothing; a replaced agent's workloads were reported lost)."""
        self._connecting.add(node.id)
        try:
            handle: Any = _AgentActor.options(
                name=AGENT_PREFIX + node.id,
                namespace=self.namespace,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.id, soft=False),
            ).remote(
                str(self.node_dir),
                self._shim,
                self.kill_grace_seconds,
                self.workload_umask,
                self.workload_open_files,
                self.max_log_bytes,
            )
            hello: dict[str, Any] = await handle.hello.remote()
        except Exception as exc:
            log.error("cannot start the corral agent on Ray node %s: %s", node.id, exc)
            self._agent_failed[node.id] = time.monotonic()
            return
        finally:
            self._connecting.discard(node.id)
        current = self._nodes.get(node.id)
        if current is not None and not current.alive:
            return  # died meanwhile
        agent = _Agent(node, handle, int(hello["seq"]))
        self._agents[node.id] = agent
        self._agent_failed.pop(node.id, None)
        if adopting:
            self._hellos[node.id] = hello
        else:
            for wid in hello["running"]:
                self._stop_stray(agent, wid)
            agent.forget.update(hello["ended"])
        if self._on_exit is not None:
            self._follow(agent)
        self._place_waiting()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        assert self._loop is not None
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    def close(self) -> None:
        for task in [*self._tasks, *self._placing.values()]:
            task.cancel()
        for future in self._waiting.values():
            future.cancel()
        self._tasks.clear()
        self._placing.clear()
        self._waiting.clear()
        self._gcs.shutdown(wait=True)
        done = threading.Thread(target=ray.shutdown, name="corral-ray-shutdown")
        done.start()
        done.join()


def _look() -> tuple[dict[str, Node], dict[str, dict[str, float]]]:
    """The cluster's nodes (``ray.nodes()``) and alive nodes' free resources."""
    nodes = {}
    for info in _ray_nodes():
        res = info.get("Resources", {})
        capacity = Capacity(
            cpus=float(res.get("CPU", 0.0)),
            memory_mb=int(res.get("memory", 0)) // _MB,
            gpus=int(res.get("GPU", 0)),
        )
        node_id = str(info["NodeID"])
        address = str(info.get("NodeManagerAddress", ""))
        nodes[node_id] = Node(node_id, address, capacity, alive=bool(info.get("Alive")))
    return nodes, _free_now()


def _free_now() -> dict[str, dict[str, float]]:
    return {k: dict(v) for k, v in _free_per_node().items()}


def _sum(nodes: Iterable[Node]) -> Capacity:
    cpus, memory_mb, gpus = 0.0, 0, 0
    for node in nodes:
        cpus += node.capacity.cpus
        memory_mb += node.capacity.memory_mb
        gpus += node.capacity.gpus
    return Capacity(cpus=cpus, memory_mb=memory_mb, gpus=gpus)


def _bundle(workload: Workload) -> dict[str, float]:
    res = workload.resources
    amounts = {"CPU": res.cpus, "memory": float(res.memory_mb * _MB), "GPU": float(res.gpus)}
    return {k: v for k, v in amounts.items() if v}


def _amount(value: float, unit: str) -> str:
    """``2 GPUs``, ``1 CPU``, ``0.5 CPUs``, ``4096 MB of memory``."""
    text = str(int(value)) if float(value).is_integer() else f"{value:g}"
    plural = "" if value == 1 or unit.startswith("MB") else "s"
    return f"{text} {unit}{plural}"
