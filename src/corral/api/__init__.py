"""The HTTP API (spec §3): a FastAPI app over a ``Store`` and a ``Scheduler``.

Routes are ``async`` and call the store directly on the event loop: SQLite
statements here take tens of microseconds, less than a hop to a worker thread,
and one thread means one connection and no in-process lock contention.
"""

from corral.api.app import create_app

__all__ = ["create_app"]
