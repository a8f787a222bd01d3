"""Run a real ``corral serve`` subprocess on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from bench.common import free_port as free_port  # one rule for every port (xdist)

from corral.executors.local import is_alive

T = TypeVar("T")


class LiveServer:
    """``corral serve`` with the given flags; ``url`` once healthy."""

    module = "corral.cli"
    """What runs as ``python -m MODULE serve --port P --data-dir D ARGS``."""

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        open_files: int | tuple[int, int] | None = None,
        log: Path | None = None,
        umask: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.args = args
        # No rate limit unless a test asks for one: tests submit faster than people.
        self.env = {**os.environ, "CORRAL_RATE_LIMIT": "0", **(env or {})}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = log or data_dir / f"server-{self.port}.log"
        """The server's stdout and stderr (``log``: somewhere else than the data dir,
        e.g. when that is on a file system a test fills up)."""
        self.umask = umask
        """The umask the server is started with (None: the test's)."""
        self.open_files = open_files
        """The server's open-files limit for tests: N (soft and hard) or (soft, hard)."""

    def start(self, timeout: float = 30.0, *, verify: bool = True) -> LiveServer:
        if self.running():
            # A second start would answer /healthz from the first process and leak it.
            raise RuntimeError(f"the server on port {self.port} is running already")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", self.module, "serve", "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir), *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=log, env=self.env, preexec_fn=self._limits
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1, verify=verify).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not become healthy: {self.log.read_text()}")

    @property
    def token(self) -> str | None:
        """The admin key the server wrote to ``DATA_DIR/token`` (None without one)."""
        try:
            return (self.data_dir / "token").read_text().strip() or None
        except FileNotFoundError:
            return None

    @property
    def headers(self) -> dict[str, str]:
        """``Authorization`` for the admin key, when the server has one."""
        token = self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def http(self, *, timeout: float = 30.0, token: str | None = None) -> httpx.Client:
        """An HTTP client for this server, sending the admin key (or ``token``)."""
        headers = {"Authorization": f"Bearer {token}"} if token else self.headers
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    @property
    def cli_env(self) -> dict[str, str]:
        """The environment for a ``corral`` CLI process aimed at this server."""
        env = {**os.environ, "CORRAL_URL": self.url}
        if self.token:
            env["CORRAL_TOKEN"] = self.token
        return env

    def _limits(self) -> None:
        if self.umask is not None:
            os.umask(self.umask)
        if self.open_files is not None:
            limit = self.open_files
            if isinstance(limit, int):
                limit = (limit, limit)
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> LiveServer:
        """Starts the server unless it runs already (``serve(...)`` started it)."""
        return self if self.running() else self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def wait_until(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def pid_gone(pid: int) -> bool:
    """True when ``pid`` has exited; a zombie counts as gone (PID 1 here does not reap)."""
    return not is_alive(pid)


TERMINAL = {"completed", "failed", "killed"}


class Api:
    """The admin's view of one live server, for end-to-end tests."""

    wait_seconds = 30.0
    """How long ``wait`` waits unless told."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.http = server.http()

    def submit(self, command: list[str], **body: Any) -> dict[str, Any]:
        r = self.http.post("/v1/workloads", json={"command": command, **body})
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def batch(self, items: list[dict[str, Any]], **body: Any) -> list[dict[str, Any]]:
        r = self.http.post("/v1/workloads/batch", json={"items": items, **body})
        assert r.status_code == 201, r.text
        return r.json()["items"]  # type: ignore[no-any-return]

    def get(self, wid: str) -> dict[str, Any]:
        return self.http.get(f"/v1/workloads/{wid}").json()  # type: ignore[no-any-return]

    def events(self, wid: str) -> list[dict[str, Any]]:
        return self.http.get(f"/v1/workloads/{wid}/events").json()["items"]  # type: ignore[no-any-return]

    def logs(self, wid: str, **params: Any) -> str:
        return self.http.get(f"/v1/workloads/{wid}/logs", params=params).text

    def wait(
        self, wid: str, statuses: set[str] = TERMINAL, timeout: float | None = None
    ) -> dict[str, Any]:
        return wait_until(
            lambda: (w := self.get(wid))["status"] in statuses and w, timeout or self.wait_seconds
        )

    def kill_all(self, *, all_users: bool = False) -> httpx.Response:
        """Kill every pending and running workload (every user's: ``all_users``)."""
        body = {"status": ["pending", "running"], "all_users": all_users}
        return self.http.post("/v1/workloads/kill", json=body)

    def drain(self, timeout: float = 30.0) -> None:
        """Kill every user's pending and running workloads and wait until each killed
        one's process is over (``stopping`` false): on a shared Ray cluster a
        workload's placement group goes only once its exit is reported, so a server
        stopped before then leaves the group (and its CPUs) held in a namespace no
        later server uses. Ask the server that schedules (the leader)."""
        r = self.kill_all(all_users=True)
        assert r.status_code == 200, r.text

        def over() -> bool:
            if self.listed(["pending", "running"], limit=1):
                return False
            return not any(w["stopping"] for w in self.listed(["killed"]))

        wait_until(over, timeout, interval=0.1)

    def listed(self, statuses: list[str], limit: int | None = None) -> list[dict[str, Any]]:
        """Every user's workloads in any of ``statuses`` (all pages; at most ``limit``)."""
        found: list[dict[str, Any]] = []
        cursor = ""
        while True:
            params = {"status": statuses, "all_users": True, "limit": 200, "cursor": cursor}
            r = self.http.get("/v1/workloads", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            found += page["items"]
            cursor = page.get("next_cursor") or ""
            if not cursor or (limit is not None and len(found) >= limit):
                return found[:limit]
