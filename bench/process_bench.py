"""``e2e_ps``: ``true`` workloads submitted over HTTP and completed, per second.

A ``corral serve --executor local`` with room for everything (workloads ask for 0
CPUs); the load generator submits M workloads over 8 keep-alive connections as fast
as it can; the clock runs from its first connection to the moment the list endpoint
shows nothing pending or running. Bound: ``spawn_ps``, Python spawning and reaping
``true`` as fast as it can (``os.posix_spawn`` + ``waitpid``, one thread, best of four
rounds), the same call corral uses to start a workload's shim.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

from bench.common import Metric, Server, fresh_dir, request
from bench.http_load import encode_request, finish_load, start_load

SUBMITTERS = 8
LOCAL_ENV = {"CORRAL_CPUS": "100000", "CORRAL_KILL_GRACE_SECONDS": "10"}
"""Settings for every local-executor server of the benchmark (CLI-flag independent)."""


def local_server(name: str) -> Server:
    return Server(fresh_dir(name), "local", env=LOCAL_ENV)


def spawn_ps(n: int) -> float:
    """Spawns and reaps of ``true`` per second, one thread."""
    true = shutil.which("true") or "/bin/true"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for _ in range(20):  # warm-up
        os.waitpid(os.posix_spawn(true, [true], env), 0)
    start = time.perf_counter()
    for _ in range(n):
        os.waitpid(os.posix_spawn(true, [true], env), 0)
    return n / (time.perf_counter() - start)


def _count(port: int, *statuses: str, limit: int = 1000) -> int:
    query = "&".join(f"status={s}" for s in statuses)
    status, page = request(port, "GET", f"/v1/workloads?{query}&limit={limit}")
    assert status == 200, page
    return len(page["items"])


def e2e(port: int, m: int) -> dict[str, Any]:
    body = json.dumps({"command": ["true"], "resources": {"cpus": 0}}).encode()
    req = encode_request("POST", "/v1/workloads", body, port).decode("latin-1")
    load = start_load({"port": port, "requests": [req], "conns": SUBMITTERS, "total": m})
    report = finish_load(load, timeout=600)
    submitted_in = report["end"] - report["start"]
    deadline = time.monotonic() + 300
    # Poll lightly (one row, every 5 ms): the probe must not load the server it times.
    while _count(port, "pending", "running", limit=1) and time.monotonic() < deadline:
        time.sleep(0.005)
    done = time.monotonic()
    unfinished = _count(port, "pending", "running")
    not_completed = _count(port, "failed", "killed")
    seconds = done - report["start"]
    return {
        "workloads": m,
        "seconds": round(seconds, 3),
        "submit_seconds": round(submitted_in, 3),
        "submit_rps": round(m / submitted_in, 1),
        "non_2xx": report["non_2xx"],
        "conn_errors": report["conn_errors"],
        "unfinished": unfinished,
        "not_completed": not_completed,
        "rate": (m - unfinished) / seconds,
    }


def run(quick: bool, only: set[str]) -> dict[str, Metric]:
    m, n_spawn = (500, 1000) if quick else (5000, 5000)
    # The bound is the best of four rounds, two on each side of the e2e run.
    rounds = [spawn_ps(n_spawn // 4), spawn_ps(n_spawn // 4)]
    with local_server("e2e") as srv:
        result = e2e(srv.port, m)
    rounds += [spawn_ps(n_spawn // 4), spawn_ps(n_spawn // 4)]
    limit = max(rounds)
    errors = sum(result[k] for k in ("non_2xx", "conn_errors", "unfinished", "not_completed"))
    detail = {**result, "spawns": n_spawn, "submitters": SUBMITTERS}
    detail.pop("rate")
    detail["spawn_ps_rounds"] = [round(r, 1) for r in rounds]
    return {"e2e_ps": Metric(result["rate"], "workloads/s", limit, "spawn_ps", errors, detail)}
