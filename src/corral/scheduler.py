"""The scheduler: admission, wake-ups and reconciliation.

The API tells it what happened (``submitted``, ``stopped``); it decides what runs.
This base class is the scheduler of ``--executor none``: it runs nothing, so
workloads move only through ``PUT /v1/workloads/{id}/status``.
"""

from __future__ import annotations

from corral.model import Resources, Workload


class Scheduler:
    """The interface the API uses; this implementation runs nothing."""

    async def start(self) -> None:
        """Begin scheduling (called once the event loop runs)."""

    async def stop(self) -> None:
        """Stop scheduling; running workloads keep running."""

    def check_fits(self, resources: Resources) -> None:
        """Raise ``ExceedsCapacityError`` when ``resources`` exceed the whole capacity."""

    def submitted(self, workload: Workload) -> None:
        """A new pending workload was stored."""

    def stopped(self, workload: Workload) -> None:
        """A workload became terminal through the API (kill or status update)."""
