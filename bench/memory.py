"""``rss_idle_mb`` and ``rss_busy_mb``: what a ``corral serve --executor local`` keeps
resident.

Idle: the server's VmRSS after start-up. Busy: with N running ``sleep 300``
workloads (asking for 0 CPUs), the server's VmRSS plus the PSS of every per-workload
watcher (the shim, whose pid is in ``<data-dir>/run/<id>/shim``); the sleeps
themselves are the user's, not corral's, and are not counted.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from bench.common import (
    Metric,
    Server,
    auth,
    pid_gone,
    proc_kb,
    read_first_int,
    request,
    wait_until,
)
from bench.process_bench import local_server
from corral.executors.local import find_shims


def _submit(port: int, n: int) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"command": ["sleep", "300"], "resources": {"cpus": 0}})
    ids = []
    try:
        for _ in range(n):
            headers = {**auth(port), "Content-Type": "application/json"}
            conn.request("POST", "/v1/workloads", body, headers)
            resp = conn.getresponse()
            data = json.loads(resp.read())
            if resp.status != 201:
                raise RuntimeError(f"POST answered {resp.status}: {data}")
            ids.append(data["id"])
    finally:
        conn.close()
    return ids


def _all_running(srv: Server, ids: list[str]) -> list[int] | None:
    """The shim pids once every workload runs and its command has started, else None."""
    status, page = request(srv.port, "GET", "/v1/workloads?status=running&limit=1000")
    if status != 200 or len(page["items"]) < len(ids):
        return None
    run = srv.data_dir / "run"
    if not all(read_first_int(run / f"{wid}.pid") for wid in ids):
        return None
    shims = find_shims(run)
    return [shims[wid] for wid in ids] if all(wid in shims for wid in ids) else None


def _kill_all(srv: Server, ids: list[str], shims: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        for wid in ids:
            conn.request("DELETE", f"/v1/workloads/{wid}", headers=auth(srv.port))
            conn.getresponse().read()
    finally:
        conn.close()
    wait_until(lambda: all(pid_gone(p) for p in shims), 60, 0.05)


def run(quick: bool, only: set[str]) -> dict[str, Metric]:
    n = 500  # the issue fixes 500 sleeps; quick mode keeps it (about 5 s)
    with local_server("memory") as srv:
        time.sleep(1.0)
        idle_kb = proc_kb(srv.pid, "VmRSS")
        ids = _submit(srv.port, n)
        shims = wait_until(lambda: _all_running(srv, ids), 120, 0.05)
        time.sleep(0.5)
        server_kb = proc_kb(srv.pid, "VmRSS")
        server_pss_kb = proc_kb(srv.pid, "Pss", "smaps_rollup")
        shim_pss = [proc_kb(p, "Pss", "smaps_rollup") for p in shims]
        shim_rss = [proc_kb(p, "VmRSS") for p in shims]
        _kill_all(srv, ids, shims)
    busy_kb = server_kb + sum(shim_pss)
    detail: dict[str, Any] = {
        "workloads": n,
        "server_rss_mb": round(server_kb / 1024, 1),
        "server_pss_mb": round(server_pss_kb / 1024, 1),
        "shims_pss_mb": round(sum(shim_pss) / 1024, 2),
        "shim_pss_kb_each": round(sum(shim_pss) / n, 1),
        "shim_rss_kb_each": round(sum(shim_rss) / n, 1),
        "server_growth_kb_per_workload": round((server_kb - idle_kb) / n, 1),
    }
    return {
        "rss_idle_mb": Metric(idle_kb / 1024, "MB", detail={"server_rss_mb": idle_kb / 1024}),
        "rss_busy_mb": Metric(busy_kb / 1024, "MB", detail=detail),
    }
