"""Start and kill latency on an idle ``corral serve --executor local``, one at a time.

- ``start_latency_*``: client clock just before the POST → the timestamp the
  workload's own process prints (``date +%s.%N``, which starts in about a
  millisecond). Bound: the same command spawned straight from Python.
- ``kill_latency_p99_ms``: just before the DELETE → the workload's ``sleep 300``
  is gone (``/proc/PID/stat`` polled every 0.5 ms; a zombie counts as gone). Bound:
  ``os.killpg(SIGTERM)`` on a ``sleep 300`` in its own session → gone.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from bench.common import Metric, Server, auth, percentile, pid_gone, read_first_int, wait_until
from bench.process_bench import local_server
from corral.logs import log_path

POLL = 0.0005
DATE = shutil.which("date") or "/bin/date"
SLEEP = shutil.which("sleep") or "/bin/sleep"


def _post(conn: http.client.HTTPConnection, body: dict[str, Any]) -> dict[str, Any]:
    headers = {**auth(conn.port), "Content-Type": "application/json"}
    conn.request("POST", "/v1/workloads", json.dumps(body), headers)
    resp = conn.getresponse()
    data: dict[str, Any] = json.loads(resp.read())
    if resp.status != 201:
        raise RuntimeError(f"POST answered {resp.status}: {data}")
    return data


def _call(conn: http.client.HTTPConnection, method: str, path: str) -> tuple[int, Any]:
    conn.request(method, path, headers=auth(conn.port))
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def _finished(conn: http.client.HTTPConnection, workload_id: str) -> bool:
    status, data = _call(conn, "GET", f"/v1/workloads/{workload_id}")
    return status == 200 and data["status"] in ("completed", "failed", "killed")


def _printed_time(path: Path) -> float | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    if not text.endswith("\n"):
        return None
    return float(text.split()[-1])


def start_latencies(
    srv: Server, n: int, cpus: float = 0, ids: list[str] | None = None
) -> list[float]:
    """Submit → the time the workload printed, in ms, ``n`` times one at a time (the
    log read from the server's ``DATA_DIR/logs``); the workloads' ids appended to
    ``ids``."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    body = {"command": ["date", "+%s.%N"], "resources": {"cpus": cpus}}
    out = []
    try:
        for _ in range(n):
            t0 = time.time()
            wid = _post(conn, body)["id"]
            if ids is not None:
                ids.append(wid)
            log = log_path(srv.data_dir, wid)
            printed = wait_until(functools.partial(_printed_time, log), 30, POLL)
            out.append((printed - t0) * 1000)
            wait_until(functools.partial(_finished, conn, wid), 30, 0.002)
            time.sleep(0.005)
    finally:
        conn.close()
    return out


def raw_start_latencies(n: int) -> list[float]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    out = []
    for _ in range(n):
        r, w = os.pipe()
        t0 = time.time()
        pid = os.posix_spawn(
            DATE, [DATE, "+%s.%N"], env, file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)]
        )
        os.close(w)
        with os.fdopen(r) as f:
            printed = float(f.read())
        os.waitpid(pid, 0)
        out.append((printed - t0) * 1000)
    return out


def _sleep_started(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "sleep"
    except FileNotFoundError:
        return False


def kill_latencies(srv: Server, n: int) -> tuple[list[float], list[float]]:
    """(DELETE → process gone, DELETE → response), in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    body = {"command": ["sleep", "300"], "resources": {"cpus": 0}}
    gone, answered = [], []
    try:
        for _ in range(n):
            wid = _post(conn, body)["id"]
            pid_file = srv.data_dir / "run" / f"{wid}.pid"
            pid = wait_until(functools.partial(read_first_int, pid_file), 30, 0.001)
            wait_until(functools.partial(_sleep_started, pid), 30, 0.001)
            time.sleep(0.01)
            t0 = time.perf_counter()
            status, data = _call(conn, "DELETE", f"/v1/workloads/{wid}")
            answered.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                raise RuntimeError(f"DELETE answered {status}: {data}")
            wait_until(functools.partial(pid_gone, pid), 30, POLL)
            gone.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    return gone, answered


def raw_kill_latencies(n: int) -> list[float]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    out = []
    for _ in range(n):
        pid = os.posix_spawn(SLEEP, [SLEEP, "300"], env, setsid=True)
        try:
            wait_until(functools.partial(_sleep_started, pid), 30, 0.001)
            t0 = time.perf_counter()
            os.killpg(pid, signal.SIGTERM)
            wait_until(functools.partial(pid_gone, pid), 30, POLL)
            out.append((time.perf_counter() - t0) * 1000)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return out


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3),
    }


def run(quick: bool, only: set[str]) -> dict[str, Metric]:
    n_start, n_kill = (50, 15) if quick else (200, 60)
    out: dict[str, Metric] = {}
    with local_server("latency") as srv:
        if only & {"start_latency_p50_ms", "start_latency_p99_ms"}:
            raw = raw_start_latencies(n_start)
            ours = start_latencies(srv, n_start)
            detail = {"samples": n_start, "corral": _summary(ours), "raw": _summary(raw)}
            for pct in (50, 99):
                out[f"start_latency_p{pct}_ms"] = Metric(
                    percentile(ours, pct), "ms", percentile(raw, pct), f"spawn_latency_p{pct}_ms",
                    detail=detail, lower_is_better=True,
                )  # fmt: skip
        if "kill_latency_p99_ms" in only:
            raw = raw_kill_latencies(n_kill)
            gone, answered = kill_latencies(srv, n_kill)
            detail = {
                "samples": n_kill,
                "corral": _summary(gone),
                "delete_response": _summary(answered),
                "raw": _summary(raw),
            }
            out["kill_latency_p99_ms"] = Metric(
                percentile(gone, 99), "ms", percentile(raw, 99), "raw_killpg_ms",
                detail=detail, lower_is_better=True,
            )  # fmt: skip
    return out
