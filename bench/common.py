"""Shared pieces: the result type, servers under test, /proc readers, machine facts."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corral.executors.local import is_alive, kill_all

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("CORRAL_BENCH_CACHE", "/tmp/corral-bench-cache"))
PYTHON = sys.executable


@dataclass
class Metric:
    """One measured number and the bound it is compared with (measured in the same run)."""

    value: float
    unit: str
    limit: float | None = None
    limit_name: str | None = None
    errors: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    lower_is_better: bool = False

    @property
    def ratio(self) -> float | None:
        """value / limit; limit / value for latencies (so 1.0 is "as fast as the limit")."""
        if self.limit is None or not self.value or not self.limit:
            return None
        return self.limit / self.value if self.lower_is_better else self.value / self.limit


class GroupSkipped(Exception):
    """A group that cannot run on this machine; the message says why (``bench.run``
    lists it under ``skipped`` and goes on)."""


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


LISTEN_PORTS = (20000, 32767)
"""Where ``free_port`` looks: below Linux's ephemeral range (32768-60999 by default),
where the kernel picks the local port of every outgoing connection (a port found free
could be such a connection's by the time a server binds it), and above Ray's worker
ports (10002-19999)."""


def free_port() -> int:
    """A loopback port free now, for a server to listen on soon: a random one of
    ``LISTEN_PORTS`` (below the ephemeral range, if it starts higher), checked by
    binding it. Under pytest-xdist, only ports whose remainder by the number of
    workers is this worker's index: a port one worker found free (or frees, to start
    a server on it again) is never one another worker finds."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    low, high = LISTEN_PORTS
    with contextlib.suppress(OSError, ValueError):
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        high = min(high, ephemeral - 1) if ephemeral > low + 1000 else high
    for _ in range(1000):
        port = random.randrange(low, high + 1)
        if port % workers != index % workers:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


_FRESH: list[Path] = []


def fresh_dir(name: str) -> Path:
    """A new temporary directory, removed by ``remove_fresh_dirs``."""
    path = Path(tempfile.mkdtemp(prefix=f"corral-bench-{name}-"))
    _FRESH.append(path)
    return path


def remove_fresh_dirs() -> None:
    while _FRESH:
        path = _FRESH.pop()
        for _ in range(3):  # a dying process may still be writing into it
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                break
            time.sleep(0.2)


# --- servers under test ------------------------------------------------------------


class Server:
    """A server subprocess on a free loopback port (``corral serve`` by default, on
    ``db`` when given, else ``argv`` with ``{port}`` replaced), stopped with SIGTERM
    (then SIGKILL) and, for a local executor, with every workload process group it
    leaves behind killed."""

    def __init__(
        self,
        data_dir: Path,
        executor: str = "none",
        *,
        env: Mapping[str, str] | None = None,
        argv: Sequence[str] | None = None,
        log_dir: Path | None = None,
        db: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Keys are on, as in production (every request pays for the guard); the rate
        # limit is off: a benchmark is one client submitting as fast as it can.
        self.env = {**os.environ, "CORRAL_RATE_LIMIT": "0", **(env or {})}
        self.argv = [a.replace("{port}", str(self.port)) for a in argv] if argv else [
            PYTHON, "-m", "corral.cli", "serve", "--port", str(self.port),
            "--data-dir", str(data_dir), "--executor", executor,
            *(["--db", db] if db else []),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = (log_dir or data_dir) / f"server-{self.port}.log"

    def start(self, timeout: float = 60.0) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, env=self.env, cwd=REPO, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if request(self.port, "GET", "/healthz")[0] == 200:
                    token = self.data_dir / "token"
                    if token.exists():
                        TOKENS[self.port] = token.read_text().strip()
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"server did not become healthy: {self.log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_all(self.data_dir / "run")  # first, so the server reaps its shims
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        kill_all(self.data_dir / "run")

    def __enter__(self) -> Server:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_first_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


TOKENS: dict[int, str] = {}
"""The admin key of each server under test, by port (read from its data dir)."""


def auth(port: int) -> dict[str, str]:
    """The ``Authorization`` header for the server on ``port`` (none for a bare app)."""
    token = TOKENS.get(port)
    return {"Authorization": f"Bearer {token}"} if token else {}


def request(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One HTTP request on a new connection; the JSON answer (or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = auth(port)
        if payload:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, payload, headers)
        resp = conn.getresponse()
        raw = resp.read()
        ctype = resp.getheader("Content-Type") or ""
        return resp.status, json.loads(raw) if "json" in ctype else raw.decode()
    finally:
        conn.close()


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


# --- /proc -----------------------------------------------------------------------


def pid_gone(pid: int) -> bool:
    """True when ``pid`` has exited; a zombie counts as gone (PID 1 here does not reap)."""
    return not is_alive(pid)


def proc_kb(pid: int, key: str, file: str = "status") -> int:
    """A ``kB`` field (``VmRSS``, ``Pss``…) of ``/proc/PID/status`` or ``smaps_rollup``."""
    with open(f"/proc/{pid}/{file}") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


# --- machine -----------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next(
            (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model
        )
    mem_kb = 0
    with contextlib.suppress(OSError, StopIteration), open("/proc/meminfo") as f:
        mem_kb = int(next(ln for ln in f if ln.startswith("MemTotal:")).split()[1])
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return {
        "cpu_model": model,
        "cores": len(os.sched_getaffinity(0)),
        "memory_mb": mem_kb // 1024,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "corral_commit": commit or None,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
