"""``e2e_ps``: ``true`` workloads submitted over HTTP and completed, per second.

A ``corral serve --executor local`` with room for everything (workloads ask for 0
CPUs); the load generator submits M workloads over 8 keep-alive connections as fast
as it can; the clock runs from its first connection to the moment the list endpoint
shows nothing pending or running. Bound: ``spawn_ps``, Python spawning and reaping
``true`` as fast as it can: ``os.posix_spawn`` + ``waitpid`` on one thread and on
four (four threads use both cores), the better of the two. Three rounds, each a
bound measurement followed by an e2e run of M/3 workloads on the same server; value
and bound are the medians of the rounds.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import Metric, Server, fresh_dir, request
from bench.http_load import encode_request, finish_load, start_load

SUBMITTERS = 8
SPAWN_THREADS = (1, 4)
ROUNDS = 3
LOCAL_ENV = {"CORRAL_CPUS": "100000", "CORRAL_KILL_GRACE_SECONDS": "10"}
"""Settings for every local-executor server of the benchmark (CLI-flag independent)."""


def local_server(name: str, db: str | None = None) -> Server:
    return Server(fresh_dir(name), "local", env=LOCAL_ENV, db=db)


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


def e2e(port: int, m: int, resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """M ``true`` workloads (asking for ``resources``, default 0 CPUs) end to end."""
    body = json.dumps({"command": ["true"], "resources": resources or {"cpus": 0}}).encode()
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


def file_create_us(data_dir: Path, n: int = 200) -> float:
    """The median time, in µs, to create an empty file in a new directory of
    ``data_dir`` (as the server creates each workload's log). On ext4 it grows with
    the files removed near it in the last 60-360 s (the kernel's inode allocator
    skips them one by one, ``recently_deleted``): 11 µs to over 1 ms on this VM, the
    same directory minutes apart (docs/benchmarks.md, issue 13)."""
    scratch = Path(tempfile.mkdtemp(prefix="creates-", dir=data_dir))
    times = []
    try:
        for i in range(n):
            start = time.perf_counter()
            os.close(os.open(scratch / f"{i}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            times.append((time.perf_counter() - start) * 1e6)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return statistics.median(times)


def run(quick: bool, only: set[str]) -> dict[str, Metric]:
    return {"e2e_ps": e2e_metric(quick)}


def e2e_metric(quick: bool, db: str | None = None) -> Metric:
    """``e2e_ps`` against ``spawn_ps``, on a server of its own on ``db`` (default: a
    SQLite file in its data dir)."""
    m, n_spawn = (600, 1200) if quick else (6000, 6000)
    # Bound and subject take turns on one server (as create_rps and bare_rps do), so a
    # noisy neighbour slows both alike: each round measures spawns on 1 and 4 threads
    # (the round's bound is the better), then runs M/ROUNDS workloads end to end. The
    # figures are the medians of the rounds.
    per_round = n_spawn // (ROUNDS * len(SPAWN_THREADS))
    rounds: list[dict[int, float]] = []
    results: list[dict[str, Any]] = []
    creates: list[float] = []
    with local_server("e2e", db) as srv:
        for _ in range(ROUNDS):
            rounds.append(spawn_rounds(per_round))
            creates.append(file_create_us(srv.data_dir))
            results.append(e2e(srv.port, m // ROUNDS))
    value = statistics.median(r["rate"] for r in results)
    limit = statistics.median(max(r.values()) for r in rounds)
    keys = ("non_2xx", "conn_errors", "unfinished", "not_completed")
    errors = sum(r[k] for r in results for k in keys)
    detail: dict[str, Any] = {
        "workloads": m,
        "rounds": ROUNDS,
        "runs_rate": [round(r["rate"], 1) for r in results],
        "runs_submit_rps": [r["submit_rps"] for r in results],
        **{k: sum(r[k] for r in results) for k in keys},
        "spawns": per_round * ROUNDS * len(SPAWN_THREADS),
        "submitters": SUBMITTERS,
        # Each workload's log is a new file in the data dir: what one costs there.
        "file_create_us": [round(c, 1) for c in creates],
    }
    for threads in SPAWN_THREADS:
        detail[f"spawn_ps_{threads}_thread_rounds"] = [round(r[threads], 1) for r in rounds]
    return Metric(value, "workloads/s", limit, "spawn_ps", errors, detail)
