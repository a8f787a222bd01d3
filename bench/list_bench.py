"""``list_p99_ms``: a filtered list (statuses + one label, limit 100) over 10^6 workloads.

The database is built fast: ``SQLiteStore`` migrates an empty file, then rows go
straight into ``workloads``, ``workload_labels`` and ``events`` (one ``created``
event each) with ``executemany``. It is cached under ``CACHE_DIR`` keyed by size and
schema, so reruns skip the build. The metric is the p99 of the HTTP request through
``corral serve --executor none`` on that database; the in-process
``store.list_workloads`` and the bound, the same SQL in raw ``sqlite3``, are
measured on the same queries.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import random
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import CACHE_DIR, Metric, Server, auth, fresh_dir, percentile
from corral.keys import default_admin
from corral.model import Status
from corral.store.sqlite import BUSY_TIMEOUT_MS, SQLiteStore, list_query

BUILD_VERSION = "3"
COLUMNS = (
    "id, name, command, env, cwd, cpus, memory_mb, gpus, labels, priority, timeout_seconds,"
    " status, exit_code, signal, reason, created_at, updated_at, started_at, finished_at, owner"
)
OWNER = default_admin()
"""Every workload is the admin's, whose key the HTTP queries use: a user listing their
own workloads (the owner filter is part of every query, as for any user)."""
STATUS_WEIGHTS = {"completed": 80, "failed": 10, "killed": 5, "pending": 3, "running": 2}
TEAMS = [f"t{i}" for i in range(10)]
ENVS = ["prod", "staging", "dev"]
QUERY_STATUSES = [
    ["completed"], ["failed"], ["killed"], ["pending"], ["running"],
    ["failed", "killed"], ["pending", "running"],
]  # fmt: skip
SPAN_MS = 90 * 86_400_000  # the workloads were submitted over 90 days
_B32 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghjkmnpqrstvwxyz")


def encode_id(ms: int, rand: int) -> str:
    """corral's id format: 26 Crockford base32 chars of (48-bit ms << 80 | 80 random bits)."""
    raw = base64.b32encode(((ms << 80) | rand).to_bytes(20, "big"))
    return raw.translate(_B32)[-26:].decode()


def _ts(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}000Z"


def _rows(n: int, rng: random.Random) -> Iterator[tuple[tuple[Any, ...], list[tuple[str, str]]]]:
    statuses = rng.choices(list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values()), k=n)
    start = int(time.time() * 1000) - SPAN_MS
    step = SPAN_MS // n
    for i in range(n):
        ms = start + i * step
        status = statuses[i]
        labels = {"team": TEAMS[rng.randrange(10)], "env": ENVS[i % 3], "app": f"app{i % 50}"}
        created, started, finished = _ts(ms), _ts(ms + 800), _ts(ms + 60_000)
        terminal = status in ("completed", "failed", "killed")
        exit_code = {"completed": 0, "failed": 1}.get(status)
        reason = {"completed": "exit code 0", "failed": "exit code 1"}.get(status)
        if status == "killed":
            reason = "killed by request"
        row = (
            encode_id(ms, rng.getrandbits(80)),
            f"job-{i}",
            json.dumps(["python3", "job.py", "--shard", str(i % 64)]),
            json.dumps({"RUN_MODE": "batch", "SHARD": str(i % 64)}),
            None, 1.0, 512, 0, json.dumps(labels), 0, None,
            status, exit_code, None, reason, created,
            finished if terminal else started if status == "running" else created,
            None if status == "pending" else started,
            finished if terminal else None,
            OWNER,
        )  # fmt: skip
        yield row, list(labels.items())


def _schema_key() -> str:
    import corral.store.migrations.versions as versions

    names = sorted(p.name for p in Path(versions.__path__[0]).glob("*.py"))
    return hashlib.sha256(f"{BUILD_VERSION} {names}".encode()).hexdigest()[:10]


def build(n: int, path: Path) -> None:
    SQLiteStore(path).close()  # migrate
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -200000")
    insert_w = f"INSERT INTO workloads ({COLUMNS}) VALUES ({', '.join('?' * 20)})"
    insert_l = "INSERT INTO workload_labels (key, value, workload_id) VALUES (?, ?, ?)"
    insert_e = (
        "INSERT INTO events (workload_id, seq, type, from_status, to_status, at, reason, actor)"
        " VALUES (?, 1, 'created', NULL, 'pending', ?, NULL, 'api')"
    )
    rows = _rows(n, random.Random(42))
    conn.execute("BEGIN")
    while True:
        batch = [next(rows, None) for _ in range(20_000)]
        chunk = [b for b in batch if b is not None]
        if not chunk:
            break
        conn.executemany(insert_w, [r for r, _ in chunk])
        conn.executemany(insert_l, [(k, v, r[0]) for r, labels in chunk for k, v in labels])
        conn.executemany(insert_e, [(r[0], r[15]) for r, _ in chunk])
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def cached_db(n: int) -> tuple[Path, float]:
    """The data dir holding a database of ``n`` workloads, and the build time (0 if cached)."""
    target = CACHE_DIR / f"list-{n}-{_schema_key()}"
    if (target / "corral.db").exists():
        return target, 0.0
    tmp = CACHE_DIR / f".building-{n}-{time.time_ns()}"
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    try:
        build(n, tmp / "corral.db")
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, time.perf_counter() - start


def _queries(k: int) -> list[tuple[list[str], str]]:
    rng = random.Random(7)
    return [(rng.choice(QUERY_STATUSES), rng.choice(TEAMS)) for _ in range(k)]


def _sql(statuses: list[str], team: str) -> tuple[str, list[Any]]:
    """corral's own SQL for this filter (``list_query``), so the bound runs exactly
    the query the store runs, without the store's Python around it."""
    return list_query(
        statuses=[Status(s) for s in statuses],
        labels=[("team", team)],
        cursor=None,
        limit=101,
        owner=OWNER,
    )


class RawQuery:
    """The list query in plain ``sqlite3`` with the store's pragmas."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA foreign_keys = ON")

    def __call__(self, statuses: list[str], team: str) -> None:
        sql, params = _sql(statuses, team)
        self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self.conn.close()


class StoreQuery:
    """``SQLiteStore.list_workloads``, in process."""

    def __init__(self, path: Path) -> None:
        self.store = SQLiteStore(path, migrate_schema=False)

    def __call__(self, statuses: list[str], team: str) -> None:
        sts = [Status(s) for s in statuses]
        self.store.list_workloads(statuses=sts, labels=[("team", team)], limit=100, owner=OWNER)

    def close(self) -> None:
        self.store.close()


class HttpQuery:
    """``GET /v1/workloads`` over one keep-alive connection; counts wrong answers."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = auth(port)
        self.errors = 0

    def __call__(self, statuses: list[str], team: str) -> None:
        query = "&".join(f"status={s}" for s in statuses) + f"&label=team={team}&limit=100"
        self.conn.request("GET", f"/v1/workloads?{query}", headers=self.headers)
        resp = self.conn.getresponse()
        body = resp.read()
        if resp.status != 200 or len(json.loads(body)["items"]) != 100:
            self.errors += 1

    def close(self) -> None:
        self.conn.close()


Query = RawQuery | StoreQuery | HttpQuery


def measure(
    runners: dict[str, Query], queries: list[tuple[list[str], str]]
) -> dict[str, list[float]]:
    """Each query through every runner in turn (so noise hits them alike), in ms, after
    one warm-up pass over every distinct query."""
    for distinct, team in sorted({(tuple(s), t) for s, t in queries}):
        for runner in runners.values():
            runner(list(distinct), team)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for statuses, team in queries:
        for name, runner in runners.items():
            t0 = time.perf_counter()
            runner(statuses, team)
            times[name].append((time.perf_counter() - t0) * 1000)
    return times


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 3), "p99": round(percentile(values, 99), 3)}


def run(quick: bool, only: set[str]) -> dict[str, Metric]:
    n, k = (100_000, 60) if quick else (1_000_000, 300)
    data_dir, built_in = cached_db(n)
    db = data_dir / "corral.db"
    with Server(data_dir, "none", log_dir=fresh_dir("list")) as srv:
        http_query = HttpQuery(srv.port)
        runners: dict[str, Query] = {
            "http": http_query,
            "store": StoreQuery(db),
            "raw": RawQuery(db),
        }
        try:
            times = measure(runners, _queries(k))
        finally:
            for runner in runners.values():
                runner.close()
    over_http, raw, errors = times["http"], times["raw"], http_query.errors
    detail = {
        "workloads": n,
        "queries": k,
        "measured": "HTTP GET /v1/workloads through corral serve",
        **{name: _summary(values) for name, values in times.items()},
        "build_seconds": round(built_in, 1),
        "db": str(db),
    }
    return {
        "list_p99_ms": Metric(
            percentile(over_http, 99),
            "ms",
            percentile(raw, 99),
            "raw_sqlite_p99_ms",
            errors,
            detail,
            lower_is_better=True,
        ),
    }
