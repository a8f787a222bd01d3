"""``GET /metrics``: the Prometheus text format (0.0.4), from a registry of the app's
own (never the global one: tests build many apps in one process).

Admin keys and metrics keys (``corral token create --metrics NAME``, which may read
nothing else: ``guard.py``); user keys get 403. No scrape runs a query whose cost
grows with the table:

- ``corral_workloads{status}``: the counts by status, refreshed off the request path
  (``Metrics.refresh_forever``, on the app's lifespan, every ``REFRESH_SECONDS``);
  pending and running are the scheduler's own, exact and live, where it schedules.
  The scheduling server publishes them (and its queue depth) with its heartbeat, as
  its capacity (``Metrics.publication``, ``cluster.Cluster``); every other server of
  the database serves what it published and runs no count query of its own.
- ``corral_transitions_total{from_status,to_status}`` and the
  ``corral_scheduling_latency_seconds`` histogram: the scheduler's ``Tally``
  (``corral/metrics.py``), counted where this process writes each change.
- ``corral_http_request_duration_seconds{route,method,status}``: observed by the
  access-log middleware (``api/access.py``); ``route`` is the path template
  (``/v1/workloads/{workload_id}``), never the raw path, ``unmatched`` for a path no
  route serves.
- ``corral_log_bytes_total``: the final size of each log, counted by the ``Tally``
  at each exit; ``corral_log_bytes_running``: the logs of the workloads running here,
  one ``stat`` each at scrape time (bounded by the running count, not the table).
- ``corral_capacity``, ``corral_capacity_used``, ``corral_capacity_free`` by
  ``resource`` (cpus, memory_bytes, gpus), ``corral_queue_depth``,
  ``corral_server_leader``: read from the scheduler at scrape time (``_Collector``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from starlette.responses import Response

from corral import __version__
from corral.api.guard import METRICS_PATH, principal
from corral.api.problems import responses
from corral.errors import ForbiddenError
from corral.model import KeyRole, Status
from corral.scheduler import Scheduler
from corral.store import Store

log = logging.getLogger("corral.metrics")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
REFRESH_SECONDS = 15.0
"""How often the counts by status are read from the database."""
MIB = 1 << 20


class Metrics:
    """The app's registry and what feeds it."""

    def __init__(
        self, store: Store, scheduler: Scheduler, refresh_seconds: float = REFRESH_SECONDS
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.refresh_seconds = refresh_seconds
        """How often ``refresh_forever`` refreshes the counts by status."""
        self.counts: dict[Status, int] | None = None
        """The last counts by status read from the database, or published by the
        scheduling server (None before the first)."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.http = Histogram(
            "corral_http_request_duration_seconds",
            "Time to answer a request, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.registry.register(_Collector(self))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http.labels(route, method, str(status)).observe(seconds)

    def scrape(self) -> bytes:
        return generate_latest(self.registry)

    async def refresh(self) -> None:
        """Read the counts by status, unless another server schedules and publishes
        them (then keep its copy: this server's counts if it takes over)."""
        published = self._published()
        if published is not None:
            self.counts = published[0]
            return
        self.counts = await self.store.count_by_status()

    def workload_counts(self) -> dict[Status, int]:
        """The counts by status served: the scheduling server's as it last published
        them, on any other server; else the last read, with pending and running the
        scheduler's own (exact and live) where it schedules."""
        published = self._published()
        if published is not None:
            return published[0]
        counts = dict(self.counts or {})
        live = self.scheduler.live_counts()
        if live is not None:
            counts[Status.PENDING], counts[Status.RUNNING] = live
        return counts

    def queue_depth(self) -> int | None:
        """The scheduler's queue depth; elsewhere the scheduling server's, as it
        published it (from an older server, which did not: the pending count)."""
        depth = self.scheduler.queue_depth()
        if depth is not None:
            return depth
        published = self._published()
        if published is not None and published[1] is not None:
            return published[1]
        return self.workload_counts().get(Status.PENDING)

    def publication(self) -> dict[str, Any]:
        """What the scheduling server adds to its heartbeat (``cluster.Cluster``) for
        the others' ``/metrics``: its counts by status and queue depth (nothing until
        its first count)."""
        if self.counts is None or self._published() is not None:
            return {}
        counts = self.workload_counts()
        return {
            "counts": {status.value: n for status, n in counts.items()},
            "queue_depth": self.scheduler.queue_depth(),
        }

    def _published(self) -> tuple[dict[Status, int], int | None] | None:
        """The counts and queue depth the scheduling server published, when it is
        another server (and published them)."""
        server = self.scheduler.server
        published = self.scheduler.published
        if server is None or published is None or server.leader in (None, server.name):
            return None
        counts = published.get("counts")
        if not isinstance(counts, dict):
            return None
        try:
            found = {Status(k): int(v) for k, v in counts.items()}
        except (ValueError, TypeError):
            return None
        depth = published.get("queue_depth")
        return found, depth if isinstance(depth, int) else None

    async def refresh_forever(self, period: float | None = None) -> None:
        """``refresh`` now, then every ``period`` seconds (default
        ``refresh_seconds``); a database fault is logged (once while it lasts) and the
        last counts kept."""
        period = self.refresh_seconds if period is None else period
        failing = False
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                if not failing:
                    log.warning("cannot count the workloads for /metrics (%s); retrying", exc)
                failing = True
            else:
                failing = False
            await asyncio.sleep(period)


class _Collector:
    """What is read at scrape time (no copy kept in step)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        scheduler = self.metrics.scheduler
        counts = self.metrics.workload_counts()
        workloads = GaugeMetricFamily("corral_workloads", "Workloads by status.", labels=["status"])
        for status in Status:
            if status in counts:
                workloads.add_metric([status.value], counts[status])
        yield workloads
        yield from scheduler.tally.collect()
        cap, free = scheduler.capacity(), scheduler.free()
        for name, doc, amounts in (
            ("corral_capacity", "What the executor may run at once.", cap),
            ("corral_capacity_free", "What the running workloads leave free.", free),
        ):
            family = GaugeMetricFamily(name, doc, labels=["resource"])
            family.add_metric(["cpus"], amounts.cpus)
            family.add_metric(["memory_bytes"], amounts.memory_mb * MIB)
            family.add_metric(["gpus"], amounts.gpus)
            yield family
        used = GaugeMetricFamily(
            "corral_capacity_used", "What the running workloads take.", labels=["resource"]
        )
        used.add_metric(["cpus"], round(max(cap.cpus - free.cpus, 0.0), 6))
        used.add_metric(["memory_bytes"], max(cap.memory_mb - free.memory_mb, 0) * MIB)
        used.add_metric(["gpus"], max(cap.gpus - free.gpus, 0))
        yield used
        depth = self.metrics.queue_depth()
        if depth is not None:
            yield GaugeMetricFamily(
                "corral_queue_depth", "Pending workloads waiting to start.", value=depth
            )
        running_logs = scheduler.running_log_bytes()
        if running_logs is not None:
            yield GaugeMetricFamily(
                "corral_log_bytes_running",
                "Bytes in the logs of the workloads running on this server now (a stat each).",
                value=running_logs,
            )
        _, role = scheduler.readiness()
        yield GaugeMetricFamily(
            "corral_server_leader",
            "1 on the server that schedules.",
            value=1 if role == "active" else 0,
        )
        info = InfoMetricFamily("corral_build", "This server's version.")
        info.add_metric([], {"version": __version__})
        yield info


def build_metrics_router(metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get(
        METRICS_PATH,
        response_class=PlainTextResponse,
        responses={
            200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
            **responses(403),
        },
        summary="Prometheus metrics, text format 0.0.4 (admin and metrics keys)",
        operation_id="get_metrics",
        tags=["meta"],
    )
    async def get_metrics(request: Request) -> Response:
        if principal(request).role is KeyRole.USER:
            raise ForbiddenError(
                "only admin and metrics keys may read the metrics; an admin makes a"
                " metrics key with: corral token create --metrics NAME"
            )
        return Response(metrics.scrape(), media_type=CONTENT_TYPE)

    return router
