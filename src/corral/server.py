"""``corral serve``: build the store, scheduler and app, and run uvicorn."""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import resource
import socket
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import uvicorn

from corral.config import Settings

if TYPE_CHECKING:
    from corral.executors.local import LocalExecutor


class ServeError(Exception):
    """A setting that keeps the server from starting; the message says which."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: Settings) -> None:
    from corral.api import create_app
    from corral.scheduler import Scheduler
    from corral.store import open_store

    if not is_loopback(settings.host):
        raise ServeError(
            f"refusing to listen on {settings.host}: corral runs commands for whoever can"
            " reach it, and authentication is not available yet; use 127.0.0.1"
        )
    # Take the port first: a second server on the same port must fail before it
    # touches the data dir (and its running workloads).
    sock = _listen(settings.host, settings.port)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServeError(f"cannot use data dir {settings.data_dir}: {exc.strerror}") from None
    lock = _lock_data_dir(settings.data_dir)
    workload_open_files = _raise_open_files_limit()
    executor = _executor(settings, workload_open_files)
    try:
        store = open_store(settings.db_url, server=True)
    except (ValueError, OSError, sqlite3.Error) as exc:
        raise ServeError(f"cannot open the database {settings.db_url}: {exc}") from None
    scheduler = Scheduler(store, executor)
    app = create_app(
        store,
        data_dir=settings.data_dir,
        scheduler=scheduler,
        max_body_bytes=settings.max_body_bytes,
    )
    where = f"executor {settings.executor}"
    if executor is not None:
        cap = executor.capacity
        where += f": {cap.cpus:g} CPUs, {cap.memory_mb} MB, {cap.gpus} GPUs"
    banner = (
        f"corral serving http://{settings.host}:{settings.port}"
        f" ({where}; data in {settings.data_dir})"
    )
    config = uvicorn.Config(
        app, loop="uvloop", http="httptools", access_log=False, log_level="warning"
    )
    try:
        _Server(config, banner).run(sockets=[sock])
    finally:
        store.close()
        sock.close()
        lock.close()


def _lock_data_dir(data_dir: Path) -> TextIO:
    """Hold ``DATA_DIR/server.lock`` for the life of the process: two servers on one
    data dir would each take the other's running workloads for lost and kill them.
    (The kernel drops the lock when the process dies, however it dies; the file is
    close-on-exec, so workloads never hold it.)"""
    path = data_dir / "server.lock"
    try:
        lock = open(path, "a+")  # noqa: SIM115 - held until the server exits
    except OSError as exc:
        raise ServeError(f"cannot use data dir {data_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise ServeError(
            f"another corral serve (pid {holder}) is using {data_dir};"
            " stop it, or give this one another --data-dir"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _raise_open_files_limit() -> int | None:
    """Each running workload holds a descriptor (its pidfd); the usual soft limit of
    1,024 would make the 1,000th workload fail to start. Raise it to the hard limit,
    as service managers do, and return the soft limit it had (the one workloads get:
    a huge limit slows programs that close every possible descriptor, and breaks
    select()), or None when it was not changed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return None
    return soft


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a ``ServeError`` that says why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = (
            " (is another corral serve running? choose another port with --port)"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, announcing itself once it answers requests (a banner printed
    earlier would claim a port the server may not get)."""

    def __init__(self, config: uvicorn.Config, banner: str) -> None:
        super().__init__(config)
        self.banner = banner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            print(self.banner, file=sys.stderr, flush=True)


def _executor(settings: Settings, workload_open_files: int | None) -> LocalExecutor | None:
    if settings.executor == "none":
        return None
    from corral.executors.local import LocalExecutor, detect_capacity
    from corral.executors.shim import ShimBuildError

    capacity = detect_capacity(settings.cpus, settings.memory_mb, settings.gpus)
    try:
        return LocalExecutor(
            settings.data_dir,
            capacity=capacity,
            kill_grace_seconds=settings.kill_grace_seconds,
            workload_open_files=workload_open_files,
        )
    except ShimBuildError as exc:
        raise ServeError(str(exc)) from None
