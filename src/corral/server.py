"""``corral serve``: build the store, scheduler and app, and run uvicorn."""

from __future__ import annotations

import ipaddress
import sys
from typing import TYPE_CHECKING

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
    import uvicorn

    from corral.api import create_app
    from corral.scheduler import Scheduler
    from corral.store import open_store

    if not is_loopback(settings.host):
        raise ServeError(
            f"refusing to listen on {settings.host}: corral runs commands for whoever can"
            " reach it, and authentication is not available yet; use 127.0.0.1"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    executor = _executor(settings)
    store = open_store(settings.db_url, server=True)
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
    print(
        f"corral serving http://{settings.host}:{settings.port}"
        f" ({where}; data in {settings.data_dir})",
        file=sys.stderr,
        flush=True,
    )
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
        )
    finally:
        store.close()


def _executor(settings: Settings) -> LocalExecutor | None:
    if settings.executor == "none":
        return None
    from corral.executors.local import LocalExecutor, detect_capacity
    from corral.executors.shim import ShimBuildError

    capacity = detect_capacity(settings.cpus, settings.memory_mb, settings.gpus)
    try:
        return LocalExecutor(
            settings.data_dir, capacity=capacity, kill_grace_seconds=settings.kill_grace_seconds
        )
    except ShimBuildError as exc:
        raise ServeError(str(exc)) from None
