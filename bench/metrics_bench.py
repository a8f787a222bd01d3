"""``metrics_scrape_ms``: ``GET /metrics`` at 10^6 workloads, beside the same at 10^3.

Two ``corral serve --executor none`` run at once, one on ``list_bench``'s database of
10^6 workloads (quick: 10^5), one on 10^3 rows built the same way (both cached by
``list_bench.cached_db``). Once each has counted its workloads (its refresher reads
them at start, then every 15 s off the request path; a scrape reads that copy),
``GET /metrics`` goes to each in turn (in alternating order) over one keep-alive
connection with the admin key, for ``SECONDS`` (quick: ``QUICK_SECONDS``): long
enough for two refreshes of each to fall inside the full run. The metric is the
scrape's **median** at the large size; the bound is the median at 10^3 (``ratio``:
small / large, 1.0 when the cost is flat); ``detail`` has both p50 and p99, their
ratios, and what the refresher's count costs at each size (``count_by_status`` in
process: what the server pays every 15 s, off the path). ``pg_bench`` runs the same
on PostgreSQL (``scrape_metric``).
"""

from __future__ import annotations

import http.client
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import list_bench
from bench.common import Metric, Server, auth, fresh_dir, percentile
from corral.store.sqlite import SQLiteStore

SMALL = 1_000
SECONDS, QUICK_SECONDS = 35.0, 4.0
WARMUP = 20
"""Scrapes of each server before the timed ones."""
COUNTED = b'corral_workloads{status="completed"}'
"""In a scrape once the server has counted its workloads."""


class Scrape:
    """``GET /metrics`` over one keep-alive connection; counts wrong answers."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = auth(port)
        self.errors = 0

    def __call__(self) -> bytes:
        self.conn.request("GET", "/metrics", headers=self.headers)
        resp = self.conn.getresponse()
        body = resp.read()
        if resp.status != 200 or COUNTED not in body:
            self.errors += 1
        return body

    def counted(self) -> bool:
        self.conn.request("GET", "/metrics", headers=self.headers)
        resp = self.conn.getresponse()
        return COUNTED in resp.read()

    def close(self) -> None:
        self.conn.close()


def measure(scrapes: dict[int, Scrape], seconds: float) -> dict[int, list[float]]:
    """Each server's scrape in turn, in ms, for ``seconds``, after ``WARMUP`` each."""
    deadline = time.monotonic() + 120
    while not all(s.counted() for s in scrapes.values()):
        if time.monotonic() > deadline:
            raise RuntimeError("a server has not counted its workloads within 120 s")
        time.sleep(0.1)
    for scrape in scrapes.values():
        for _ in range(WARMUP):
            scrape()
    times: dict[int, list[float]] = {name: [] for name in scrapes}
    order = list(scrapes.items())
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for name, scrape in order:
            t0 = time.perf_counter()
            scrape()
            times[name].append((time.perf_counter() - t0) * 1000)
        order.reverse()  # neither always goes first
    return times


def scrape_metric(
    servers: dict[int, Server],
    quick: bool,
    count_ms: dict[int, float],
    detail: dict[str, Any],
) -> Metric:
    """``servers``: the small and the large one, by size, started; ``count_ms``: the
    in-process count at each size."""
    (small, large) = sorted(servers)
    scrapes = {n: Scrape(srv.port) for n, srv in servers.items()}
    try:
        by = measure(scrapes, QUICK_SECONDS if quick else SECONDS)
    finally:
        for s in scrapes.values():
            s.close()
    p50 = {n: statistics.median(t) for n, t in by.items()}
    p99 = {n: percentile(t, 99) for n, t in by.items()}
    detail = {
        **detail,
        "workloads": large,
        "small": small,
        "measured": "HTTP GET /metrics, each server in turn, one keep-alive connection each",
        "scrapes": {n: len(t) for n, t in by.items()},
        **{f"at_{n}": {"p50": round(p50[n], 3), "p99": round(p99[n], 3)} for n in (small, large)},
        "p50_large_over_small": round(p50[large] / p50[small], 3),
        "p99_large_over_small": round(p99[large] / p99[small], 3),
        "count_by_status_ms": {n: round(ms, 1) for n, ms in count_ms.items()},
    }
    return Metric(
        p50[large],
        "ms",
        p50[small],
        f"scrape_{small}_ms",
        sum(s.errors for s in scrapes.values()),
        detail,
        lower_is_better=True,
    )


def count_time(count: Callable[[], object], rounds: int = 3) -> float:
    """The median time of ``count()``, in ms."""
    took = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        count()
        took.append((time.perf_counter() - t0) * 1000)
    return statistics.median(took)


def _sqlite_count_ms(db: Path) -> float:
    store = SQLiteStore(db, migrate_schema=False)
    try:
        return count_time(store.count_by_status)
    finally:
        store.close()


def run(quick: bool, only: set[str]) -> dict[str, Metric]:
    large = 100_000 if quick else 1_000_000
    dirs = {n: list_bench.cached_db(n)[0] for n in (SMALL, large)}
    count_ms = {n: _sqlite_count_ms(d / "corral.db") for n, d in dirs.items()}
    logs = fresh_dir("metrics")
    servers = {n: Server(d, "none", log_dir=logs) for n, d in dirs.items()}
    try:
        for srv in servers.values():
            srv.start()
        metric = scrape_metric(servers, quick, count_ms, {"db": "sqlite"})
    finally:
        for srv in servers.values():
            srv.stop()
    return {"metrics_scrape_ms": metric}
