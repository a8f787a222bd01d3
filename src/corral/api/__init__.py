"""The HTTP API (spec §3): a FastAPI app over a ``Store`` and a ``Scheduler``.

Routes are ``async`` and await the async ``Store``: the database's work happens off
the event loop (SQLite's writer and reader threads, PostgreSQL's round trips), except
SQLite's reads by key, which are cheaper than a hop to a thread and run inline
(``store/sqlite_async.py``).
"""

from corral.api.app import create_app

__all__ = ["create_app"]
