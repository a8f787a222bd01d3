"""Raw psycopg on PostgreSQL: the bound for ``PostgresStore``'s create and transition.

Each figure runs the store's own statements (imported from ``corral.store.postgres``)
and nothing else, on psycopg 3's async connections as the store does, each
transaction pipelined (its statements sent together, as the store sends them), on a
migrated database of a throw-away cluster (``bench/pg_server.py``, ``fsync=on``):

- a create (``create_once``): the store's ``_CREATE_PLAIN``, one statement (its own
  transaction) inserting the workload, its labels and its ``created`` event and
  notifying ``corral_wake``: one round trip, one create per transaction. (The store
  writes all the creates of a loop turn in one such statement, its group commit; the
  bound does not.) ``values=True`` sends the same rows as a pipelined transaction of
  plain ``INSERT … VALUES``, a statement per row (the workload, each label, the
  event), then ``pg_notify``, as pgbench's two-insert transaction does, for
  comparison.
- a transition (``transition_once``): pending→running as the store does it,
  ``BEGIN``; ``SELECT … FOR UPDATE`` (read: the status decides); the ``UPDATE …
  RETURNING``; the event ``INSERT`` with its ``seq`` subquery; ``COMMIT``: two round
  trips.

``create_rate`` and ``transition_rate`` run them over ``connections`` connections,
each running its transactions one after another (1: the latency-bound rate; 8: what
concurrent requests get from a pool). What the store adds is Python: building
arguments and the ``Workload``, the pool, and the call. The JSON of the spec is
encoded once, beforehand: the bound pays for none of it.

``python -m bench.pg_raw [seconds]`` starts a cluster, prints the figures over 1, 2,
4, 8, 16 and 32 connections and stops it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from bench.pg_server import start
from corral.ids import new_id, now_rfc3339
from corral.model import WorkloadCreate
from corral.store import migrate
from corral.store.postgres import (
    _CREATE_PLAIN,
    _INSERT_CREATED_EVENTS,
    _INSERT_LABELS,
    _INSERT_NEXT_EVENT,
    _INSERT_WORKLOADS,
    _LOCK_STATUS,
    _UPDATE_STATUS,
    _columns,
)
from corral.store.postgres_cluster import NOTIFY_SQL, WAKE
from corral.store.sqlite import _COLUMNS, _json_text

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
SPEC = WorkloadCreate.model_validate(
    {"command": ["python", "-c", "print(1)"], "labels": {}, "env": {"A": "1"}}
)
CONNECTIONS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Creates:
    """What a create of ``spec`` sends, its JSON encoded once."""

    spec: WorkloadCreate
    command: str
    env: str
    labels: str

    @classmethod
    def of(cls, spec: WorkloadCreate) -> Creates:
        return cls(spec, _json_text(spec.command), _json_text(spec.env), _json_text(spec.labels))

    def workload_row(self, workload_id: str, now: str) -> tuple[Any, ...]:
        """One row of the store's ``_INSERT_WORKLOADS`` for ``spec``."""
        spec, res = self.spec, self.spec.resources
        return (
            workload_id,
            spec.name,
            self.command,
            self.env,
            spec.cwd,
            res.cpus,
            res.memory_mb,
            res.gpus,
            self.labels,
            spec.priority,
            spec.timeout_seconds,
            now,
            "bench",
            "[]",
            spec.dependency_type,
            None,
            None,
            None,
        )

    def plain_params(self) -> list[Any]:
        """The parameters of ``_CREATE_PLAIN`` for one create."""
        workload_id, now = new_id(), now_rfc3339()
        labels = [(k, v, workload_id) for k, v in self.spec.labels.items()]
        return [
            *_columns([self.workload_row(workload_id, now)]),
            *(_columns(labels) if labels else [[], [], []]),
            [workload_id],
            [now],
            ["bench"],
            WAKE,
            workload_id,
        ]

    async def queue(self, conn: Conn, n: int = 1) -> list[str]:
        """Queue the store's statements for ``n`` creates in ``conn``'s transaction
        (one statement per table, as the store's group commit); their ids."""
        rows = [self.workload_row(new_id(), now_rfc3339()) for _ in range(n)]
        await conn.execute(_INSERT_WORKLOADS, _columns(rows))
        if self.spec.labels:
            labels = [(k, v, r[0]) for r in rows for k, v in self.spec.labels.items()]
            await conn.execute(_INSERT_LABELS, _columns(labels))
        await conn.execute(_INSERT_CREATED_EVENTS, _columns([(r[0], r[11], "bench") for r in rows]))
        return [r[0] for r in rows]

    async def queue_values(self, conn: Conn) -> str:
        """Queue one create as plain ``INSERT … VALUES`` statements, a row each (the
        form the store used before its inserts took arrays); its id."""
        workload_id, now = new_id(), now_rfc3339()
        row = self.workload_row(workload_id, now)
        await conn.execute(_VALUES_WORKLOAD, (*row[:11], "pending", now, *row[11:]))
        if self.spec.labels:
            await conn.cursor().executemany(
                _VALUES_LABEL, [(k, v, workload_id) for k, v in self.spec.labels.items()]
            )
        await conn.execute(_VALUES_EVENT, (workload_id, now, "bench"))
        return workload_id


_VALUES_WORKLOAD = (
    f"INSERT INTO workloads ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
    " %s, NULL, NULL, NULL, %s, %s, NULL, NULL, %s, %s, %s, %s, %s, %s, NULL)"
)
_VALUES_LABEL = "INSERT INTO workload_labels (key, value, workload_id) VALUES (%s, %s, %s)"
_VALUES_EVENT = (
    "INSERT INTO events (workload_id, seq, type, from_status, to_status, at, reason, actor)"
    " VALUES (%s, 1, 'created', NULL, 'pending', %s, NULL, %s)"
)


async def create_once(conn: Conn, creates: Creates, *, values: bool = False) -> None:
    """One create, in a transaction of its own, its wake-up notified (``values``: as
    plain ``INSERT … VALUES``)."""
    if not values:
        await conn.execute(_CREATE_PLAIN, creates.plain_params())
        return
    async with conn.pipeline(), conn.transaction():
        workload_id = await creates.queue_values(conn)
        await conn.execute(NOTIFY_SQL, (WAKE, workload_id))


async def fill(conn: Conn, n: int, creates: Creates | None = None) -> list[str]:
    """``n`` pending workloads (transactions of up to 500, no notification); their ids."""
    creates = creates or Creates.of(SPEC)
    ids: list[str] = []
    while len(ids) < n:
        async with conn.pipeline(), conn.transaction():
            ids += await creates.queue(conn, min(500, n - len(ids)))
    return ids


async def transition_once(conn: Conn, workload_id: str) -> None:
    """pending→running of ``workload_id``, as the store does it."""
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


async def connect(url: str) -> Conn:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def _run(
    url: str,
    connections: int,
    seconds: float,
    step: Callable[[Conn, int], Awaitable[None]],
    warm: Creates,
) -> float:
    """Transactions per second of ``step`` over ``connections`` connections, each
    running its own one after another for ``seconds``."""
    conns = [await connect(url) for _ in range(connections)]
    counts = [0] * connections
    deadline = 0.0

    async def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            await step(conns[i], i)
            counts[i] += 1

    try:
        for conn in conns:  # warm: each connection's statements prepared
            for _ in range(10):
                await create_once(conn, warm)
        begin = time.perf_counter()
        deadline = begin + seconds
        await asyncio.gather(*(worker(i) for i in range(connections)))
        return sum(counts) / (time.perf_counter() - begin)
    finally:
        for conn in conns:
            await conn.close()


async def create_rate(
    url: str,
    *,
    connections: int,
    seconds: float = 2.0,
    spec: WorkloadCreate = SPEC,
    values: bool = False,
) -> float:
    """Creates of ``spec`` per second over ``connections`` connections (``values``: as
    plain ``INSERT … VALUES``)."""
    creates = Creates.of(spec)

    async def step(conn: Conn, _: int) -> None:
        await create_once(conn, creates, values=values)

    return await _run(url, connections, seconds, step, creates)


async def transition_rate(url: str, *, connections: int, seconds: float = 2.0) -> float:
    """pending→running transitions per second over ``connections`` connections, each
    on workloads of its own (made beforehand)."""
    per_connection = int(6_000 * seconds / connections) + 100
    async with await connect(url) as conn:
        pending = [await fill(conn, per_connection) for _ in range(connections)]

    async def step(conn: Conn, i: int) -> None:
        await transition_once(conn, pending[i].pop())

    return await _run(url, connections, seconds, step, Creates.of(SPEC))


def main(seconds: float = 2.0) -> None:
    from bench.api_bench import BODY

    body = WorkloadCreate.model_validate_json(BODY)
    server = start()
    try:
        rates: list[tuple[str, Callable[..., Awaitable[float]], dict[str, Any]]] = [
            ("create", create_rate, {}),
            ("create (create_rps's body)", create_rate, {"spec": body}),
            ("create (that, INSERT … VALUES)", create_rate, {"spec": body, "values": True}),
            ("transition", transition_rate, {}),
        ]
        for name, rate, kwargs in rates:
            for connections in CONNECTIONS:
                url = server.create_database(f"db_{new_id().lower()}")
                migrate.upgrade(url)
                value = asyncio.run(rate(url, connections=connections, seconds=seconds, **kwargs))
                print(f"raw psycopg {name:<28} {connections:>2} connection(s): {value:8.0f}/s")
    finally:
        server.stop()


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)
