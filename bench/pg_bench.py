"""The ``postgres`` group: ``pg_create_rps``, ``pg_transition_ps``, ``pg_e2e_ps``,
``pg_list_p99_ms`` and ``pg_metrics_scrape_ms``, the SQLite metrics of the same names
measured the same way on PostgreSQL (issues 11 and 12).

Each run starts its own throw-away cluster (``bench/pg_server.py``: initdb + pg_ctl in a
temporary directory, ``fsync=on``), a database of its own per metric, and stops it at
the end. Every server is ``corral serve --db postgresql://…`` with the flags, the
environment and the client load of the SQLite metric (``bench/api_bench.py``,
``bench/process_bench.py``, ``bench/list_bench.py``); the store's pool is the default
(``CORRAL_DB_POOL_SIZE`` unset: 10 connections at most).

Bounds, measured in the same run and taking turns with corral:

- ``pg_create_rps``: raw psycopg running the store's own create statement for the
  same body (``_CREATE_PLAIN``), one create per statement, which is its transaction
  (``bench/pg_raw.py``), each connection running its creates one after another: the
  better of one connection and eight in each round (as ``spawn_ps`` takes the better
  of one thread and four), the median of the rounds. Eight: the server has 32
  requests in flight and a pool of 10, so the database could be handed up to 10
  transactions at once, and eight is the connection count of the issue's pgbench
  figure; one: on two cores shared with the load generator and the server, more
  connections are not always faster (``python -m bench.pg_raw`` prints the curve
  over 1-32). The store's group commit writes many creates per statement, which the
  bound does not: the ratio may exceed 1, and does when commits are slow.
- ``pg_transition_ps``: ``PostgresStore.update_workload_status`` awaited one after
  another on uvloop (as ``transition_ps`` does with the SQLite store), against raw
  psycopg doing the store's own transition statements one after another over one
  connection: the same one-at-a-time load, in alternating blocks.
- ``pg_e2e_ps``: ``spawn_ps``, as ``e2e_ps`` (``process_bench.e2e_metric``).
- ``pg_list_p99_ms``: the same list queries over HTTP against the store's own SQL in
  raw psycopg (and the store in process, in ``detail``), each query through all three
  in turn. The database (10^6 workloads, quick: 10^5, the rows ``list_bench`` builds)
  is copied from ``list_bench``'s SQLite file with ``COPY``, then ``VACUUM ANALYZE``d
  (statistics and visibility map, as autovacuum would have by then).
- ``pg_metrics_scrape_ms``: ``GET /metrics`` of a server on that database beside one
  on 10^3 workloads copied the same way, as ``metrics_scrape_ms``
  (``bench/metrics_bench.py``); the bound is the scrape at 10^3. The list databases
  are built once per run and shared by both metrics (``list_database``).

Without PostgreSQL's server binaries the group is skipped, saying why (under
``CI=true`` it fails instead).
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg
import uvloop

from bench import list_bench, metrics_bench
from bench.api_bench import BODY, _detail, _errors, _load, _median_run
from bench.common import GroupSkipped, Metric, Server, fresh_dir
from bench.http_load import encode_request
from bench.pg_raw import Creates, connect, create_rate, fill, transition_once
from bench.pg_server import PgServer, PgUnavailableError, start
from bench.process_bench import e2e_metric
from bench.store_bench import SPEC as TRANSITION_SPEC
from corral.model import Status, WorkloadCreate
from corral.store import migrate
from corral.store.base import NewWorkload
from corral.store.postgres import _LISTING, PostgresStore, _sql

NAMES = (
    "pg_create_rps",
    "pg_transition_ps",
    "pg_e2e_ps",
    "pg_list_p99_ms",
    "pg_metrics_scrape_ms",
)
RAW_CREATE_CONNECTIONS = (1, 8)
"""The raw create bound of a round is the better of one connection and eight."""


def run(quick: bool, only: set[str]) -> dict[str, Metric]:
    try:
        pg = start()
    except PgUnavailableError as exc:
        if os.environ.get("CI") == "true":
            raise
        raise GroupSkipped(str(exc)) from None
    try:
        facts = _facts(pg)
        measures: list[tuple[str, Callable[[], Metric]]] = [
            ("pg_create_rps", lambda: create_metric(pg, quick)),
            ("pg_transition_ps", lambda: transition_metric(pg, quick)),
            ("pg_e2e_ps", lambda: e2e_metric(quick, pg.create_database("e2e"))),
            ("pg_list_p99_ms", lambda: list_metric(pg, quick)),
            ("pg_metrics_scrape_ms", lambda: metrics_metric(pg, quick)),
        ]
        out: dict[str, Metric] = {}
        for name, measure in measures:
            if name in only:
                started = time.monotonic()
                out[name] = measure()
                out[name].detail["postgresql"] = facts
                out[name].detail["taken_seconds"] = round(time.monotonic() - started, 1)
        return out
    finally:
        pg.stop()


def _facts(pg: PgServer) -> dict[str, Any]:
    with psycopg.connect(pg.url()) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('server_version', 'fsync', 'synchronous_commit', 'wal_sync_method',"
            " 'shared_buffers', 'max_connections')"
        ).fetchall()
    return {str(name): str(setting) for name, setting in rows}


# --- pg_create_rps -------------------------------------------------------------------


def create_metric(pg: PgServer, quick: bool) -> Metric:
    """``POST /v1/workloads`` as ``create_rps``, against raw psycopg creates."""
    warmup, duration, rounds = (0.5, 2.0, 1) if quick else (1.5, 10.0, 3)
    body = WorkloadCreate.model_validate_json(BODY)
    raw_url = pg.create_database("create_raw")
    migrate.upgrade(raw_url)
    raw_runs: dict[int, list[float]] = {n: [] for n in RAW_CREATE_CONNECTIONS}
    create_runs: list[dict[str, Any]] = []
    with Server(fresh_dir("pg-api"), db=pg.create_database("create")) as srv:
        request = [encode_request("POST", "/v1/workloads", BODY, srv.port)]
        seconds = duration / rounds
        for _ in range(rounds):  # taking turns, medians of each (as create_rps)
            for connections, runs in raw_runs.items():
                rate = create_rate(raw_url, connections=connections, seconds=seconds, spec=body)
                runs.append(uvloop.run(rate))
            create_runs.append(_load(srv.port, request, warmup, seconds))
    create = _median_run(create_runs)
    bounds = [max(runs) for runs in zip(*raw_runs.values(), strict=True)]
    detail = {
        **_detail(create),
        "runs_rps": [round(r["rps"], 1) for r in create_runs],
        "raw_runs_ps": [round(r, 1) for r in bounds],
        **{
            f"raw_{n}_connection_runs_ps": [round(r, 1) for r in runs]
            for n, runs in raw_runs.items()
        },
        "pool_size": os.environ.get("CORRAL_DB_POOL_SIZE") or "default",
    }
    errors = sum(_errors(r) for r in create_runs)
    bound = statistics.median(bounds)
    return Metric(create["rps"], "req/s", bound, "raw_psycopg_create_ps", errors, detail)


# --- pg_transition_ps ----------------------------------------------------------------


async def _store_fill(store: PostgresStore, n: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        items = [NewWorkload(TRANSITION_SPEC, "alice", None, "bench")] * min(500, n - len(ids))
        for result in await store.create_workloads(items):
            assert not isinstance(result, Exception), result
            ids.append(result[0].id)
    return ids


async def _store_block(store: PostgresStore, ids: list[str]) -> float:
    start = time.perf_counter()
    for wid in ids:
        await store.update_workload_status(wid, Status.RUNNING, actor="bench")
    return time.perf_counter() - start


async def _raw_block(conn: psycopg.AsyncConnection[Any], ids: list[str]) -> float:
    start = time.perf_counter()
    for wid in ids:
        await transition_once(conn, wid)
    return time.perf_counter() - start


def transition_metric(pg: PgServer, quick: bool) -> Metric:
    """The store's transitions one at a time, against raw psycopg's over one connection."""
    n, block = (1_000, 250) if quick else (6_000, 1_000)
    raw_url = pg.create_database("transition_raw")
    migrate.upgrade(raw_url)
    store = PostgresStore(pg.create_database("transition"))
    loop = uvloop.new_event_loop()
    raw_s = ours_s = 0.0
    try:
        conn = loop.run_until_complete(connect(raw_url))
        try:
            raw_ids = loop.run_until_complete(fill(conn, n, Creates.of(TRANSITION_SPEC)))
            ids = loop.run_until_complete(_store_fill(store, n))
            for i in range(0, n, block):  # alternating blocks, so noise hits both alike
                raw_s += loop.run_until_complete(_raw_block(conn, raw_ids[i : i + block]))
                ours_s += loop.run_until_complete(_store_block(store, ids[i : i + block]))
        finally:
            loop.run_until_complete(conn.close())
    finally:
        loop.run_until_complete(store.close())
        loop.close()
    ours, raw = n / ours_s, n / raw_s
    detail = {
        "transitions": n,
        "seconds": round(ours_s, 3),
        "raw_seconds": round(raw_s, 3),
        "us_per_transition": round(1e6 / ours, 1),
        "raw_us_per_transition": round(1e6 / raw, 1),
        "raw_connections": 1,
    }
    return Metric(ours, "tx/s", raw, "raw_psycopg_ps", 0, detail)


# --- pg_list_p99_ms ------------------------------------------------------------------


def build(n: int, url: str) -> float:
    """The rows of ``list_bench``'s database of ``n`` workloads (built and cached by
    it), copied into ``url`` (``COPY``), then ``VACUUM ANALYZE``; the seconds taken."""
    data_dir, _ = list_bench.cached_db(n)
    start = time.perf_counter()
    migrate.upgrade(url)
    source = sqlite3.connect(f"file:{data_dir / 'corral.db'}?mode=ro", uri=True)
    tables = [
        ("workloads", list_bench.COLUMNS),
        ("workload_labels", "key, value, workload_id"),
        ("events", "workload_id, seq, type, from_status, to_status, at, reason, actor"),
    ]
    try:
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
            for table, columns in tables:
                with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in source.execute(f"SELECT {columns} FROM {table}"):
                        copy.write_row(row)
    finally:
        source.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # as autovacuum would have: visibility map too
    return time.perf_counter() - start


class PgRawQuery:
    """The store's list SQL in plain psycopg (one connection, UTC, and never prepared:
    as the store runs it)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("SET TIME ZONE 'UTC'")

    def __call__(self, statuses: list[str], team: str) -> None:
        sql, params = list_bench._sql(statuses, team)
        self.conn.execute(_sql(sql), params, prepare=_LISTING).fetchall()

    def close(self) -> None:
        self.conn.close()


class PgStoreQuery:
    """``PostgresStore.list_workloads``, in process, on a uvloop loop of its own."""

    def __init__(self, url: str) -> None:
        self.loop = uvloop.new_event_loop()
        self.store = PostgresStore(url, migrate_schema=False)

    def __call__(self, statuses: list[str], team: str) -> None:
        sts = [Status(s) for s in statuses]
        self.loop.run_until_complete(
            self.store.list_workloads(
                statuses=sts, labels=[("team", team)], limit=100, owner=list_bench.OWNER
            )
        )

    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()


_LIST_DATABASES: dict[tuple[str, int], tuple[str, float]] = {}
"""The list databases built by this run, by cluster and size: read only, so
``pg_list_p99_ms`` and ``pg_metrics_scrape_ms`` share them."""


def list_database(pg: PgServer, n: int) -> tuple[str, float]:
    """The URL of a database of ``list_bench``'s ``n`` workloads, and the seconds its
    build took (0 when this run had built it)."""
    key = (pg.url(), n)
    if key in _LIST_DATABASES:
        return _LIST_DATABASES[key][0], 0.0
    url = pg.create_database(f"list_{n}")
    _LIST_DATABASES[key] = (url, build(n, url))
    return _LIST_DATABASES[key]


def list_metric(pg: PgServer, quick: bool) -> Metric:
    n, k = (100_000, 60) if quick else (1_000_000, 300)
    url, built_in = list_database(pg, n)
    with Server(fresh_dir("pg-list"), "none", db=url) as srv:
        http_query = list_bench.HttpQuery(srv.port)
        runners: dict[str, Any] = {
            "http": http_query,
            "store": PgStoreQuery(url),
            "raw": PgRawQuery(url),
        }
        try:
            times = list_bench.measure(runners, list_bench._queries(k))
        finally:
            for runner in runners.values():
                runner.close()
    detail = {
        "workloads": n,
        "queries": k,
        "measured": "HTTP GET /v1/workloads through corral serve --db postgresql://…",
        **{name: list_bench._summary(values) for name, values in times.items()},
        "build_seconds": round(built_in, 1),
    }
    return Metric(
        list_bench.percentile(times["http"], 99),
        "ms",
        list_bench.percentile(times["raw"], 99),
        "raw_psycopg_p99_ms",
        http_query.errors,
        detail,
        lower_is_better=True,
    )


# --- pg_metrics_scrape_ms ------------------------------------------------------------


def metrics_metric(pg: PgServer, quick: bool) -> Metric:
    """``metrics_scrape_ms`` on PostgreSQL: the list databases of 10^6 (quick: 10^5)
    and 10^3 workloads, a server on each, scraped in turn (``bench/metrics_bench.py``)."""
    large = 100_000 if quick else 1_000_000
    urls = {n: list_database(pg, n)[0] for n in (metrics_bench.SMALL, large)}
    count_ms = {n: _pg_count_ms(url) for n, url in urls.items()}
    logs = fresh_dir("pg-metrics")
    servers = {
        n: Server(fresh_dir(f"pg-metrics-{n}"), "none", db=url, log_dir=logs)
        for n, url in urls.items()
    }
    try:
        for srv in servers.values():
            srv.start()
        return metrics_bench.scrape_metric(servers, quick, count_ms, {"db": "postgresql"})
    finally:
        for srv in servers.values():
            srv.stop()


def _pg_count_ms(url: str) -> float:
    loop = uvloop.new_event_loop()
    store = PostgresStore(url, migrate_schema=False)
    try:
        return metrics_bench.count_time(lambda: loop.run_until_complete(store.count_by_status()))
    finally:
        loop.run_until_complete(store.close())
        loop.close()
