"""A corral API server with a ``LogProxy``, as ``corral serve`` runs one once server
identity is wired (docs/postgres.md, Phase 2): the real app on the real store, under
``corral serve``'s uvicorn settings (uvloop, httptools), without an executor. For
``tests/test_logproxy.py``, through ``LiveServer`` (``module``)::

    python -m tests.logproxy_server serve --port P --data-dir D --db URL --name NAME \\
        [--executor-kind local|ray] [--answer-seconds S] [--allowed-host NAME …]

Its ``servers`` row is the test's to register (``store.register_server``).
``--allowed-host`` (repeatable) replaces the guard's allowed ``Host`` names (default
the loopback ones), so that a test can have a keeper refuse the Host its row names.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import uvicorn

from corral import serverlog
from corral.api import create_app
from corral.api.guard import LOOPBACK_HOSTS, AccessPolicy
from corral.api.logproxy import ANSWER_SECONDS, LogProxy
from corral.store import open_store


async def serve(args: argparse.Namespace, config: uvicorn.Config) -> None:
    store = open_store(args.db, server=True)
    try:
        proxy = LogProxy(
            store,
            this_server=args.name,
            executor_kind=args.executor_kind,
            answer_seconds=args.answer_seconds,
        )
        policy = AccessPolicy(allowed_hosts=frozenset(args.allowed_host or LOOPBACK_HOSTS))
        config.app = create_app(store, data_dir=args.data_dir, log_proxy=proxy, policy=policy)
        await uvicorn.Server(config).serve()
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="logproxy_server")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--executor-kind", default="local", choices=["local", "ray"])
    parser.add_argument("--answer-seconds", type=float, default=ANSWER_SECONDS)
    parser.add_argument("--allowed-host", action="append")
    args = parser.parse_args()
    serverlog.configure("text")
    config = uvicorn.Config(
        None,  # type: ignore[arg-type]  # set once the store is open, on the loop
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        log_level=None,
    )
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve(args, config))


if __name__ == "__main__":
    main()
