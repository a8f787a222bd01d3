"""``e2e_ps``: ``true`` workloads submitted over HTTP and completed, per second.

A ``corral serve --executor local`` with room for everything (workloads ask for 0
CPUs); the load generator submits M workloads over 8 keep-alive connections as fast
as it can; the clock runs from its first connection to the moment the list endpoint
shows nothing pending or running. Bound: ``spawn_ps``, Python spawning and reaping
``true`` as fast as it can: ``os.posix_spawn`` + ``waitpid`` (the call corral uses to
start a workload's shim) on one thread and on four, the higher of the two (four
threads use both cores), each the best of two rounds on each side of the e2e run.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from typing import Any

from bench.common import Metric, Server, fresh_dir, request
from bench.http_load import encode_request, finish_load, start_load

SUBMITTERS = 8
SPAWN_THREADS = (1, 4)
LOCAL_ENV = {"CORRAL_CPUS": "100000", "CORRAL_KILL_GRACE_SECONDS": "10"}
"""Settings for every local-executor server of the benchmark (CLI-flag independent)."""


def local_server(name: str) -> Server:
    return Server(fresh_dir(name), "local", env=LOCAL_ENV)


def _spawn_loop(n: int) -> None:
    true = shutil.which("true") or "/bin/true"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for _ in range(n):
        os.waitpid(os.posix_spawn(true, [true], env), 0)


def spawn_ps(n: int, threads: int) -> float:
    """Spawns and reaps of ``true`` per second, ``n`` in all over ``threads`` threads."""
    _spawn_loop(20)  # warm-up
    workers = [threading.Thread(target=_spawn_loop, args=(n // threads,)) for _ in range(threads)]
    start = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return (n // threads) * threads / (time.perf_counter() - start)


def spawn_rounds(n: int) -> dict[int, float]:
    """One round per thread count: {threads: spawns per second}."""
    return {threads: spawn_ps(n, threads) for threads in SPAWN_THREADS}


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
    # Two rounds of each thread count on each side of the e2e run; the bound is the best.
    per_round = n_spawn // 4
    rounds = [spawn_rounds(per_round), spawn_rounds(per_round)]
    with local_server("e2e") as srv:
        result = e2e(srv.port, m)
    rounds += [spawn_rounds(per_round), spawn_rounds(per_round)]
    limit = max(rate for r in rounds for rate in r.values())
    errors = sum(result[k] for k in ("non_2xx", "conn_errors", "unfinished", "not_completed"))
    detail = {**result, "spawns": n_spawn, "submitters": SUBMITTERS}
    detail.pop("rate")
    for threads in SPAWN_THREADS:
        detail[f"spawn_ps_{threads}_thread_rounds"] = [round(r[threads], 1) for r in rounds]
    return {"e2e_ps": Metric(result["rate"], "workloads/s", limit, "spawn_ps", errors, detail)}
