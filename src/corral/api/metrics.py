"""``GET /metrics``: the Prometheus text format (0.0.4), from a registry of the app's
own (never the global one: tests build many apps in one process).

Admin keys and metrics keys (``corral token create --metrics NAME``, which may read
nothing else: ``guard.py``); user keys get 403. No scrape runs a query whose cost
grows with the table:

- ``corral_workloads{status}``: the counts by status, refreshed off the request path
  (``Metrics.refresh_forever``, on the app's lifespan, every ``REFRESH_SECONDS``);
  pending and running are the scheduler's own, exact and live, where it schedules.
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

    def __init__(self, store: Store, scheduler: Scheduler) -> None:
        self.store = store
        self.scheduler = scheduler
        self.counts: dict[Status, int] | None = None
        """The last counts by status read from the database (None before the first)."""
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
        self.counts = await self.store.count_by_status()

    async def refresh_forever(self, period: float = REFRESH_SECONDS) -> None:
        """``refresh`` now, then every ``period`` seconds; a database fault is logged
        (once while it lasts) and the last counts kept."""
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
        counts = dict(self.metrics.counts or {})
        live = scheduler.live_counts()
        if live is not None:
            counts[Status.PENDING], counts[Status.RUNNING] = live
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
        depth = scheduler.queue_depth()
        if depth is None:  # a standby: the database's pending count, as last read
            depth = counts.get(Status.PENDING)
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
