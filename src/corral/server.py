"""``corral serve``: build the store, scheduler and app, and run uvicorn."""

from __future__ import annotations

import ipaddress
import sys

from corral.config import Settings


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
    if settings.executor != "none":
        raise ServeError(
            f"executor {settings.executor!r} is not available yet; use --executor none"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.db_url)
    scheduler = Scheduler()
    app = create_app(
        store,
        data_dir=settings.data_dir,
        scheduler=scheduler,
        max_body_bytes=settings.max_body_bytes,
    )
    print(
        f"corral serving http://{settings.host}:{settings.port}"
        f" (executor {settings.executor}, data {settings.data_dir})",
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
