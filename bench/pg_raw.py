"""Raw psycopg on PostgreSQL: the bound for ``PostgresStore``'s create and transition.

Each figure runs the store's own statements (imported from ``corral.store.postgres``)
and nothing else, on psycopg 3's async connections as the store does, each
transaction pipelined (its statements sent together, as the store sends them), on a
migrated database of a throw-away cluster (``bench/pg_server.py``, ``fsync=on``):

- ``create_rate``: the two-insert create, ``BEGIN``; the workload ``INSERT``; its
  ``created`` event ``INSERT``; ``COMMIT``: one round trip.
- ``transition_rate``: pending→running as the store does it, ``BEGIN``; ``SELECT …
  FOR UPDATE`` (read: the status decides); the ``UPDATE … RETURNING``; the event
  ``INSERT`` with its ``seq`` subquery; ``COMMIT``: two round trips.

Both over ``connections`` connections, each running its transactions one after
another: a figure per connection count (1: the latency-bound rate; 8: what
concurrent requests get from a pool). What the store adds is Python: building
arguments and the ``Workload``, the pool, and the call.

``python -m bench.pg_raw [seconds]`` starts a cluster, prints the four figures and
stops it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from bench.pg_server import start
from corral.ids import new_id, now_rfc3339
from corral.model import Status, WorkloadCreate
from corral.store import migrate
from corral.store.postgres import (
    _INSERT_EVENT,
    _INSERT_NEXT_EVENT,
    _INSERT_WORKLOAD,
    _LOCK_STATUS,
    _UPDATE_STATUS,
)

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
SPEC = WorkloadCreate.model_validate(
    {"command": ["python", "-c", "print(1)"], "labels": {}, "env": {"A": "1"}}
)


def _workload_params(workload_id: str, now: str) -> tuple[Any, ...]:
    """The store's parameters of ``_INSERT_WORKLOAD`` for ``SPEC`` (JSON as text)."""
    res = SPEC.resources
    return (
        workload_id,
        SPEC.name,
        '["python","-c","print(1)"]',
        '{"A":"1"}',
        SPEC.cwd,
        res.cpus,
        res.memory_mb,
        res.gpus,
        "{}",
        SPEC.priority,
        SPEC.timeout_seconds,
        Status.PENDING.value,
        now,
        now,
        "bench",
        "[]",
        SPEC.dependency_type,
        None,
        None,
        None,
    )


async def _create(conn: Conn) -> None:
    workload_id, now = new_id(), now_rfc3339()
    async with conn.pipeline(), conn.transaction():
        await conn.execute(_INSERT_WORKLOAD, _workload_params(workload_id, now))
        await conn.execute(
            _INSERT_EVENT,
            (workload_id, 1, "created", None, Status.PENDING.value, now, None, "bench"),
        )


async def _run(
    url: str,
    connections: int,
    seconds: float,
    step: Callable[[Conn, int], Awaitable[None]],
) -> float:
    """Transactions per second of ``step`` over ``connections`` connections, each
    running its own one after another for ``seconds``."""
    conns = [
        await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(connections)
    ]
    counts = [0] * connections
    deadline = 0.0

    async def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            await step(conns[i], i)
            counts[i] += 1

    try:
        for conn in conns:  # warm: each connection's statements prepared
            for _ in range(10):
                await _create(conn)
        begin = time.perf_counter()
        deadline = begin + seconds
        await asyncio.gather(*(worker(i) for i in range(connections)))
        return sum(counts) / (time.perf_counter() - begin)
    finally:
        for conn in conns:
            await conn.close()


async def create_rate(url: str, *, connections: int, seconds: float = 2.0) -> float:
    """Two-insert creates per second over ``connections`` connections."""

    async def step(conn: Conn, _: int) -> None:
        await _create(conn)

    return await _run(url, connections, seconds, step)


async def transition_rate(url: str, *, connections: int, seconds: float = 2.0) -> float:
    """pending→running transitions per second over ``connections`` connections, each
    on workloads of its own (made beforehand, as two-insert creates)."""
    pending: list[list[str]] = [[] for _ in range(connections)]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for queue in pending:
            async with conn.pipeline(), conn.transaction():
                for _ in range(int(6_000 * seconds / connections) + 100):
                    workload_id, now = new_id(), now_rfc3339()
                    await conn.execute(_INSERT_WORKLOAD, _workload_params(workload_id, now))
                    await conn.execute(
                        _INSERT_EVENT,
                        (workload_id, 1, "created", None, "pending", now, None, "bench"),
                    )
                    queue.append(workload_id)

    async def step(conn: Conn, i: int) -> None:
        workload_id = pending[i].pop()
        async with conn.pipeline(), conn.transaction():
            cur = await conn.execute(_LOCK_STATUS, (workload_id,))
            row = await cur.fetchone()
            assert row is not None and row[0] == "pending"
            now = now_rfc3339()
            updated = await conn.execute(
                _UPDATE_STATUS,
                ("running", None, None, None, now, now, None, "bench", workload_id),
            )
            await conn.execute(
                _INSERT_NEXT_EVENT,
                (workload_id, workload_id, "transition", "pending", "running", now, None, "bench"),
            )
        assert await updated.fetchone() is not None

    return await _run(url, connections, seconds, step)


def main(seconds: float = 2.0) -> None:
    server = start()
    try:
        for name, rate in [("create", create_rate), ("transition", transition_rate)]:
            for connections in (1, 8):
                url = server.create_database(f"{name}_{connections}")
                migrate.upgrade(url)
                value = asyncio.run(rate(url, connections=connections, seconds=seconds))
                print(f"raw psycopg {name:<10} {connections} connection(s): {value:8.0f}/s")
    finally:
        server.stop()


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)
