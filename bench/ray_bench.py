"""Issue 10: the Ray executor next to the local one, on a 2-node Ray cluster of this
machine.

The group starts one ``ray.cluster_utils.Cluster`` (a head and one more node, each
``NODE`` = 2 CPUs and 2 GB, an 80 MB object store, no dashboard, token auth), the way
the tests do, and a ``corral serve --executor ray --ray-address <it>`` on it (keys on,
rate limit off, as every server here). A local-executor server runs next to it, and
each figure has the local one from the same run beside it. At the end every process
of the cluster is gone (the agents, launchers, shims and workloads below it too) and
the process's environment is what it was.

- ``ray_e2e_ps``: as ``e2e_ps`` (``process_bench.e2e``): M ``true`` workloads asking
  for ``{"cpus": 0}`` over 8 connections, the clock from the first connection until
  nothing is pending or running; three rounds, each a local run then a Ray run of
  M/3; the medians. Bound: ``local_e2e_ps``, those local runs. A workload asking for
  nothing gets no Ray placement group (the executor hands it to the least busy
  agent). The full run also times ``{"cpus": 0.001}`` workloads, a placement group
  each, in ``detail.placement_group``, next to their own bound: a Ray driver of its
  own (a subprocess) doing only the Ray part of each (create a group, wait until it
  is ready, look up its node, remove it; all in flight at once).
- ``ray_start_latency_p50_ms`` / ``_p99_ms``: as ``start_latency_*``
  (``latency_bench.start_latencies``): one at a time, the client clock just before
  the POST → the time ``date +%s.%N`` prints, read from the server's copy of the log.
  The workloads ask for 0.01 CPU, so every start creates and waits for a placement
  group, as any workload asking for resources does. Not a whole CPU: one after
  another, 1-CPU groups on these two 2-CPU nodes run into Ray's stale view of the
  CPUs just freed (a group then waits ~0.9 s for the GCS to retry); the full run
  shows that in ``detail.one_cpu``. ``detail.no_placement_group``: ``{"cpus": 0}``.
  Bound: ``local_start_latency_p50/p99_ms``, the same on the local server, same run.
- ``ray_mb_per_workload``: N ``sleep 300`` workloads (``{"cpus": 0.01}``, a
  placement group each) running; the PSS (``smaps_rollup``) of what corral runs on
  the nodes (the agents, i.e. Ray workers running ``ray_agent.Agent``, their
  launchers and the shims) minus the same before, over N. The sleeps are the user's
  and not counted. ``detail.ray_processes_growth_kb_per_workload`` is the growth of
  Ray's own processes (GCS, raylets, ...) over the same time, for information.
- ``ray_node_mb``: what corral adds to each node when idle: an agent and its
  launcher (PSS), after a few workloads have run (so every launcher is up).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import corral
from bench import latency_bench, process_bench
from bench.common import (
    PYTHON,
    REPO,
    Metric,
    Server,
    fresh_dir,
    percentile,
    proc_kb,
    request,
    wait_until,
)
from corral.executors.local import find_shims, is_alive, kill_all
from corral.logs import log_path

NODE: dict[str, Any] = {"num_cpus": 2, "memory": 2 << 30, "object_store_memory": 80 << 20}
"""Each of the two nodes (as the tests' cluster)."""
ROUNDS = 3
PROFILE_VARIABLE = "CORRAL_BENCH_RAY_PROFILE"
"""Set to a path: the Ray server runs under cProfile and writes its profile there."""
LATENCY_CPUS = 0.01
"""What a start-latency workload asks for: a placement group, and not a whole CPU
(see the module docstring)."""
PG_CPUS = 0.001
"""What the placement-group variant of ``ray_e2e_ps`` asks for (3,000 fit in 3 CPUs)."""
SUBMITTERS = process_bench.SUBMITTERS
AGENT_TITLE = b"ray::Agent"
"""How a Ray worker running the corral agent names itself (``ray::Agent.poll`` …)."""
SHIM_NAME = b"corral-shim-"


# --- the cluster ---------------------------------------------------------------------


@contextlib.contextmanager
def ray_cluster() -> Iterator[Any]:
    """A 2-node ``ray.cluster_utils.Cluster`` with token auth, torn down with every
    process below it gone; the environment (and the log record factory, which
    ``import ray`` replaces) restored after."""
    if importlib.util.find_spec("ray") is None:
        raise RuntimeError("the Ray benchmarks need Ray: pip install 'corral[ray]'")
    if "ray._raylet" in sys.modules:  # Ray reads RAY_AUTH_MODE once, at import
        raise RuntimeError("Ray was imported before the benchmark could set token auth")
    saved = dict(os.environ)
    factory = logging.getLogRecordFactory()
    src = str(Path(corral.__file__).resolve().parents[1])  # the agents import this corral
    os.environ.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
    )
    cluster: Any = None
    try:
        from ray.cluster_utils import Cluster

        logging.setLogRecordFactory(factory)
        cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        try:
            if cluster is not None:
                _shutdown(cluster)
        finally:
            os.environ.clear()
            os.environ.update(saved)
            logging.setLogRecordFactory(factory)


def _shutdown(cluster: Any) -> None:
    ours = _cluster_processes(cluster)
    cluster.shutdown()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(is_alive(p) for p in ours):
        time.sleep(0.05)
    left = {p: _cmdline(p)[:120] for p in sorted(ours) if is_alive(p)}
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        raise RuntimeError(f"processes of the Ray cluster outlived it (killed): {left}")


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _below(roots: set[int], children: dict[int, list[int]]) -> set[int]:
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _cluster_processes(cluster: Any) -> set[int]:
    """The processes the cluster started (GCS, raylets, ...) and all below them
    (workers, the agents, their launchers, shims and workloads)."""
    roots = {
        info.process.pid
        for node in cluster.list_all_nodes()
        for infos in node.all_processes.values()
        for info in infos
    }
    return roots | _below(roots, _children())


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _pss_kb(pid: int) -> int:
    try:
        return proc_kb(pid, "Pss", "smaps_rollup")
    except (OSError, KeyError):
        return 0  # gone meanwhile


def corral_processes(cluster: Any) -> dict[str, list[int]]:
    """What corral runs on the cluster's nodes: ``agents`` (the Ray workers running
    an ``Agent``), ``launchers`` (an agent's ``corral-shim --launcher``), ``shims``
    (below a launcher, or an agent if the launcher could not be used), and ``ray``:
    every other process of the cluster except the workloads."""
    children = _children()
    everything = _cluster_processes(cluster)
    agents = [p for p in everything if _cmdline(p).startswith(AGENT_TITLE)]
    launchers: list[int] = []
    shims: list[int] = []
    for pid in _below(set(agents), children):
        argv = _cmdline(pid).split(b"\0")
        if SHIM_NAME not in argv[0]:
            continue
        (launchers if len(argv) > 1 and argv[1] == b"--launcher" else shims).append(pid)
    workloads = _below(set(shims), children)
    corral_side = set(agents) | set(launchers) | set(shims)
    ray = [p for p in everything if p not in corral_side and p not in workloads]
    return {"agents": agents, "launchers": launchers, "shims": shims, "ray": ray}


def _pss_by_kind(cluster: Any) -> dict[str, tuple[int, int]]:
    """{kind: (processes, PSS kB)} for ``corral_processes``."""
    return {
        kind: (len(pids), sum(_pss_kb(p) for p in pids))
        for kind, pids in corral_processes(cluster).items()
    }


# --- servers ---------------------------------------------------------------------------


class RayServer(Server):
    """``corral serve --executor ray`` joining ``address``, its nodes' directories in
    a fresh directory of their own (``node_dir``); under cProfile when
    ``CORRAL_BENCH_RAY_PROFILE`` names a file."""

    def __init__(self, address: str) -> None:
        self.node_dir = fresh_dir("ray-nodes")
        env = {
            "CORRAL_RAY_ADDRESS": address,
            "CORRAL_RAY_NODE_DIR": str(self.node_dir),
            **process_bench.LOCAL_ENV,
        }
        data_dir = fresh_dir("ray")
        profile = os.environ.get(PROFILE_VARIABLE)
        argv = None
        if profile:  # the whole server under cProfile, written when it stops
            serve = ["serve", "--port", "{port}", "--data-dir", str(data_dir), "--executor", "ray"]
            argv = [PYTHON, "-m", "cProfile", "-o", profile, "-m", "corral.cli", *serve]
        super().__init__(data_dir, "ray", env=env, argv=argv)

    def run_dirs(self) -> list[Path]:
        """The run directories of every node (``<node_dir>/<namespace>/<node id>/run``)."""
        return sorted(self.node_dir.glob("*/*/run"))

    def stop(self) -> None:
        """Kill its workloads, then stop it with SIGINT, its graceful shutdown (which
        writes a profile). (A SIGTERM once ended it at once; since ``ray.init`` runs
        on a thread, Ray sets no SIGTERM handler in the server: docs/benchmarks.md.)"""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                body = {"status": ["pending", "running"]}
                request(self.port, "POST", "/v1/workloads/kill", body)
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        super().stop()
        for run_dir in self.run_dirs():
            kill_all(run_dir)


# --- the measurements ---------------------------------------------------------------


def _e2e(srv: Server, m: int, cpus: float) -> dict[str, Any]:
    return process_bench.e2e(srv.port, m, resources={"cpus": cpus})


PG_LIFECYCLE = """
import asyncio, json, sys, time
from concurrent.futures import ThreadPoolExecutor
import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

async def main(n: int, cpus: float) -> float:
    loop = asyncio.get_running_loop()
    gcs = ThreadPoolExecutor(1)
    async def one(i: int) -> None:
        pg = await loop.run_in_executor(gcs, lambda: placement_group(
            [{"CPU": cpus}], strategy="STRICT_PACK", name=f"bound-{i}", lifetime="detached"))
        await pg.ready()
        await loop.run_in_executor(gcs, placement_group_table, pg)
        await loop.run_in_executor(gcs, remove_placement_group, pg)
    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - start)

ray.init(address=sys.argv[1], namespace="corral-bench-bound", log_to_driver=False,
         logging_level="WARNING")
try:
    print(json.dumps(asyncio.run(main(int(sys.argv[2]), float(sys.argv[3])))))
finally:
    ray.shutdown()
"""
"""A Ray driver of its own doing what the executor does with Ray for each workload
that asks for resources, all N in flight: create a placement group (on one thread, as
the executor does), wait until it is ready, look up its node, remove it."""


def pg_lifecycle_ps(address: str, n: int, cpus: float) -> float:
    """Placement groups created, ready, looked up and removed per second (N in flight),
    by a Ray driver of its own in a subprocess (this process stays no Ray driver)."""
    done = subprocess.run(
        [PYTHON, "-c", PG_LIFECYCLE, address, str(n), str(cpus)],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the placement-group bound failed: {done.stderr[-1000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _e2e_metric(ray_srv: RayServer, local_srv: Server, address: str, quick: bool) -> Metric:
    m = 600 if quick else 3000
    local, ray, pg, bound = [], [], [], []
    for _ in range(ROUNDS):
        local.append(_e2e(local_srv, m // ROUNDS, 0))
        ray.append(_e2e(ray_srv, m // ROUNDS, 0))
        if not quick:
            bound.append(pg_lifecycle_ps(address, m // ROUNDS, PG_CPUS))
            pg.append(_e2e(ray_srv, m // ROUNDS, PG_CPUS))
    keys = ("non_2xx", "conn_errors", "unfinished", "not_completed")
    errors = sum(r[k] for r in ray + pg for k in keys)
    detail: dict[str, Any] = {
        "workloads": m,
        "rounds": ROUNDS,
        "submitters": SUBMITTERS,
        "runs_rate": [round(r["rate"], 1) for r in ray],
        "runs_submit_rps": [r["submit_rps"] for r in ray],
        "local_runs_rate": [round(r["rate"], 1) for r in local],
        **{k: sum(r[k] for r in ray + pg) for k in keys},
    }
    if pg:
        detail["placement_group"] = {
            "cpus": PG_CPUS,
            "rate": round(statistics.median(r["rate"] for r in pg), 1),
            "runs_rate": [round(r["rate"], 1) for r in pg],
            "runs_submit_rps": [r["submit_rps"] for r in pg],
            "ray_pg_lifecycle_ps": round(statistics.median(bound), 1),
            "ray_pg_lifecycle_runs": [round(b, 1) for b in bound],
        }
    value = statistics.median(r["rate"] for r in ray)
    limit = statistics.median(r["rate"] for r in local)
    return Metric(value, "workloads/s", limit, "local_e2e_ps", errors, detail)


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3),
    }


def _launch_ms(srv: Server, ids: list[str]) -> list[float]:
    """Per workload: its ``running`` event (the claim, once placed) → the time its
    process printed, in ms (both clocks are this machine's)."""
    out = []
    for wid in ids:
        status, events = request(srv.port, "GET", f"/v1/workloads/{wid}/events")
        assert status == 200, events
        running = next(e["at"] for e in events["items"] if e["to_status"] == "running")
        at = datetime.fromisoformat(running.replace("Z", "+00:00")).timestamp()
        printed = latency_bench._printed_time(log_path(srv.data_dir, wid))
        assert printed is not None, wid
        out.append((printed - at) * 1000)
    return out


def _starts(srv: Server, n: int, cpus: float) -> tuple[list[float], dict[str, Any]]:
    """``start_latencies`` and their summary, with the split at the claim: submit →
    ``running`` (HTTP, and for Ray the placement) and ``running`` → printed (the launch)."""
    ids: list[str] = []
    total = latency_bench.start_latencies(srv, n, cpus=cpus, ids=ids)
    launch = _launch_ms(srv, ids)
    claim = [t - lt for t, lt in zip(total, launch, strict=True)]
    summary = {
        "cpus": cpus,
        **_summary(total),
        "submit_to_running_p50": round(percentile(claim, 50), 3),
        "running_to_output_p50": round(percentile(launch, 50), 3),
    }
    return total, summary


def _latency_metrics(ray_srv: RayServer, local_srv: Server, quick: bool) -> dict[str, Metric]:
    n = 50 if quick else 200
    local, local_summary = _starts(local_srv, n, 0)
    grouped, grouped_summary = _starts(ray_srv, n, LATENCY_CPUS)
    detail: dict[str, Any] = {
        "samples": n,
        "corral_ray": grouped_summary,
        "no_placement_group": _starts(ray_srv, n, 0)[1],
        "local": local_summary,
    }
    if not quick:  # whole CPUs, one after another: Ray's stale view of freed CPUs shows
        detail["one_cpu"] = _starts(ray_srv, n, 1)[1]
    out = {}
    for pct in (50, 99):
        out[f"ray_start_latency_p{pct}_ms"] = Metric(
            percentile(grouped, pct), "ms", percentile(local, pct),
            f"local_start_latency_p{pct}_ms", detail=detail, lower_is_better=True,
        )  # fmt: skip
    return out


def _sleeping(srv: RayServer, n: int) -> bool:
    status, page = request(srv.port, "GET", "/v1/workloads?status=running&limit=1000")
    if status != 200 or len(page["items"]) < n:
        return False
    shims = [p for d in srv.run_dirs() for p in find_shims(d).values()]
    if len(shims) < n:
        return False
    children = _children()
    started = 0
    for shim in shims:
        for child in children.get(shim, []):
            with contextlib.suppress(OSError):
                started += Path(f"/proc/{child}/comm").read_text().strip() == "sleep"
    return started >= n


def _memory_metrics(
    ray_srv: RayServer, cluster: Any, quick: bool, no_server: tuple[int, int]
) -> dict[str, Metric]:
    """See the module docstring; ``no_server``: Ray's own processes before the server
    joined (processes, PSS kB), for ``detail``."""
    n = 20 if quick else 100
    nodes = len(cluster.list_all_nodes())
    # A few short workloads first, so every agent has started its launcher.
    body = {"command": ["true"], "resources": {"cpus": 0}}
    for _ in range(2 * nodes):
        assert request(ray_srv.port, "POST", "/v1/workloads", body)[0] == 201
    wait_until(lambda: not _active(ray_srv), 60, 0.02)
    time.sleep(1.0)
    idle = _pss_by_kind(cluster)
    body = {"command": ["sleep", "300"], "resources": {"cpus": 0.01}}
    for _ in range(n):
        status, data = request(ray_srv.port, "POST", "/v1/workloads", body)
        if status != 201:
            raise RuntimeError(f"POST answered {status}: {data}")
    wait_until(lambda: _sleeping(ray_srv, n), 120, 0.05)
    time.sleep(1.0)
    busy = _pss_by_kind(cluster)
    request(ray_srv.port, "POST", "/v1/workloads/kill", {"status": ["pending", "running"]})
    wait_until(lambda: not _active(ray_srv), 60, 0.05)

    def corral_kb(sample: dict[str, tuple[int, int]]) -> int:
        return sum(sample[k][1] for k in ("agents", "launchers", "shims"))

    per_workload_kb = (corral_kb(busy) - corral_kb(idle)) / n
    node_kb = corral_kb(idle) / nodes
    detail: dict[str, Any] = {
        "workloads": n,
        "nodes": nodes,
        "idle": {k: {"processes": c, "pss_mb": round(kb / 1024, 2)} for k, (c, kb) in idle.items()},
        "busy": {k: {"processes": c, "pss_mb": round(kb / 1024, 2)} for k, (c, kb) in busy.items()},
        "agent_growth_kb_per_workload": round((busy["agents"][1] - idle["agents"][1]) / n, 1),
        "shim_pss_kb_each": round(busy["shims"][1] / max(1, busy["shims"][0]), 1),
        "ray_processes_growth_kb_per_workload": round((busy["ray"][1] - idle["ray"][1]) / n, 1),
        "ray_before_server": {"processes": no_server[0], "pss_mb": round(no_server[1] / 1024, 1)},
    }  # fmt: skip
    errors = 0 if busy["shims"][0] == n and idle["launchers"][0] == nodes else 1
    return {
        "ray_mb_per_workload": Metric(per_workload_kb / 1024, "MB", errors=errors, detail=detail),
        "ray_node_mb": Metric(node_kb / 1024, "MB", detail=detail),
    }


def _active(srv: Server) -> bool:
    status, page = request(srv.port, "GET", "/v1/workloads?status=pending&status=running&limit=1")
    return status != 200 or bool(page["items"])


def run(quick: bool, only: set[str]) -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    with ray_cluster() as cluster:
        ray_srv = RayServer(cluster.address)
        try:
            no_server = _pss_by_kind(cluster)["ray"]
            ray_srv.start(timeout=120)
            with process_bench.local_server("ray-local") as local_srv:
                if "ray_e2e_ps" in only:
                    out["ray_e2e_ps"] = _e2e_metric(ray_srv, local_srv, cluster.address, quick)
                if only & {"ray_start_latency_p50_ms", "ray_start_latency_p99_ms"}:
                    out.update(_latency_metrics(ray_srv, local_srv, quick))
            if only & {"ray_mb_per_workload", "ray_node_mb"}:
                out.update(_memory_metrics(ray_srv, cluster, quick, no_server))
        finally:
            ray_srv.stop()
    return out
