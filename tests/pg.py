"""PostgreSQL for the tests: one throw-away cluster per session, a fresh database per
test.

The cluster is ``bench/pg_server.py``'s (initdb + pg_ctl in a temporary directory, a
free loopback port, a socket directory of its own, ``fsync=on``; run as ``postgres``
under root). At its start a template database is created and migrated once; each
test's database is ``CREATE DATABASE t_<n> TEMPLATE corral_template`` (rather than a
migration per test), dropped when the test ends.

Making and dropping a database costs ~0.2-0.5 s each here (the copy is WAL-logged
and synced), as much as a test of the API itself: so a worker thread keeps ``SPARES``
databases made ahead and drops the used ones, while tests run.

``conftest.py``'s ``pg_server`` fixture starts it (or skips, with ``needs``, saying
why it cannot) and makes it ``current``; ``make_store("postgresql", tmp_path)`` opens
stores on ``database_url(tmp_path)``.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from bench.pg_server import PgServer, PgUnavailableError, find_bindir, start

TEMPLATE = "corral_template"
SPARES = 2
"""Migrated databases the worker keeps ready."""

_MAKE, _DROP = 0, 1
"""The worker's priorities: a test may be waiting for a spare; drops can wait."""


class PgCluster:
    """The session's cluster, its migrated template and the tests' databases."""

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self._numbers = itertools.count(1)
        self._databases: dict[Path, str] = {}
        self._spares: queue.Queue[str | BaseException] = queue.Queue()
        self._jobs: queue.PriorityQueue[tuple[int, int, Callable[[], None] | None]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self._worker = threading.Thread(target=self._work, name="pg-databases", daemon=True)

    @property
    def url(self) -> str:
        """The maintenance database's URL (``postgres``)."""
        return self.server.url()

    def make_template(self) -> None:
        """Create and migrate the template, then start making spares of it."""
        from corral.store import migrate

        migrate.upgrade(self.server.create_database(TEMPLATE))
        self._worker.start()
        for _ in range(SPARES):
            self._submit(_MAKE, self._make_spare)

    def database_url(self, key: Path, *, migrated: bool = True) -> str:
        """The database of the test whose ``tmp_path`` is ``key``, made at first use:
        a copy of the template, or (``migrated=False``) empty."""
        if key not in self._databases:
            if migrated:
                spare = self._spares.get(timeout=300)
                if isinstance(spare, BaseException):
                    raise spare
                self._submit(_MAKE, self._make_spare)
                self._databases[key] = spare
            else:
                name = self._name()
                self.server.create_database(name)
                self._databases[key] = name
        return self.server.url(self._databases[key])

    def drop(self, key: Path) -> None:
        """Drop ``key``'s test's database, if it has one (soon, on the worker)."""
        name = self._databases.pop(key, None)
        if name is not None:
            self._submit(_DROP, lambda: self._drop_quietly(name))

    def stop(self) -> None:
        """Stop the worker (what it has not done yet is not needed) and the cluster."""
        if self._worker.is_alive():
            self._submit(-1, None)
            self._worker.join(timeout=60)
        self.server.stop()

    def _name(self) -> str:
        return f"t_{next(self._numbers)}"

    def _submit(self, priority: int, job: Callable[[], None] | None) -> None:
        self._jobs.put((priority, next(self._order), job))

    def _work(self) -> None:
        while (job := self._jobs.get()[2]) is not None:
            job()

    def _make_spare(self) -> None:
        try:
            name = self._name()
            self.server.create_database(name, template=TEMPLATE)
            self._spares.put(name)
        except BaseException as exc:  # the test that waits for it fails with it
            self._spares.put(exc)

    def _drop_quietly(self, name: str) -> None:
        with contextlib.suppress(Exception):  # one left over goes with the cluster
            self.server.drop_database(name)


current: PgCluster | None = None
"""The running cluster, while the session's ``pg_server`` fixture holds it."""


def start_cluster() -> PgCluster:
    """Start the session's cluster; ``PgUnavailableError`` saying why it cannot."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PgUnavailableError("needs psycopg: pip install 'corral[server]'") from None
    bindir = find_bindir()
    if bindir is None:
        raise PgUnavailableError(
            "needs PostgreSQL's server binaries (initdb, pg_ctl) on PATH or under"
            " /usr/lib/postgresql/*/bin: `make test` installs Debian's postgresql as root"
        )
    cluster = PgCluster(start(bindir))
    try:
        cluster.make_template()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def database_url(key: Path, *, migrated: bool = True) -> str:
    """The URL of the database of the test whose ``tmp_path`` is ``key``."""
    assert current is not None, "the pg_server fixture is not active"
    return current.database_url(key, migrated=migrated)
