"""What the server counts as it works, for ``GET /metrics`` (``api/metrics.py``).

The scheduler owns a ``Tally``: every status change this process writes goes through
``Scheduler.set_status`` or a claim, and each is counted here, so the transitions are
counted once, by the process that wrote them (a Prometheus counter per process; the
monitoring side sums the servers). Each exit the executor reports adds the final size
of the workload's log (one ``stat``) to ``corral_log_bytes_total``. The metrics are
made without a registry: the app's registry (one per app, never the global one)
collects them through its collector. No ``*_created`` series: prometheus-client adds
one to every counter and histogram by default (a gauge of its creation time, about
20 series nobody graphs), turned off for the process at import.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import Counter, Histogram, disable_created_metrics
from prometheus_client.metrics_core import Metric

from corral.model import Status, Workload

disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
"""Submit to running, in seconds: from a free machine's milliseconds to a deep queue's
hour."""


def from_status(workload: Workload) -> Status:
    """The status ``workload`` left to reach its current one (read from the state
    machine: only a workload that ran has ``started_at``)."""
    if workload.status is Status.RUNNING:
        return Status.PENDING
    if workload.status is Status.KILLED and workload.started_at is None:
        return Status.PENDING
    return Status.RUNNING


class Tally:
    def __init__(self) -> None:
        self.transitions = Counter(
            "corral_transitions",
            "Status changes written by this server.",
            ["from_status", "to_status"],
            registry=None,
        )
        self.log_bytes = Counter(
            "corral_log_bytes",
            "Bytes of workloads' logs, counted at each exit of a process this server ran"
            " (the log's final size).",
            registry=None,
        )
        self.latency = Histogram(
            "corral_scheduling_latency_seconds",
            "From submit to running (started_at - created_at, the store's clock), at each claim.",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )

    def transition(self, workload: Workload) -> None:
        """``workload`` has just reached its status (written by this process)."""
        self.transitions.labels(from_status(workload).value, workload.status.value).inc()
        if workload.status is Status.RUNNING and workload.started_at is not None:
            waited = _parse(workload.started_at) - _parse(workload.created_at)
            self.latency.observe(max(waited.total_seconds(), 0.0))

    def exited(self, log_bytes: int) -> None:
        """A process of this server is over; its log holds ``log_bytes``."""
        self.log_bytes.inc(log_bytes)

    def collect(self) -> list[Metric]:
        return [*self.transitions.collect(), *self.latency.collect(), *self.log_bytes.collect()]


def _parse(at: str) -> datetime:
    return datetime.fromisoformat(at)
