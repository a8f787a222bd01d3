"""PostgreSQL for the tests: one throw-away cluster per session, a fresh database per
test.

The cluster is ``bench/pg_server.py``'s (initdb + pg_ctl in a temporary directory, a
free loopback port, a socket directory of its own, ``fsync=on``; run as ``postgres``
under root). At its start a template database is created and migrated once; each
test's database is ``CREATE DATABASE t_<n> TEMPLATE corral_template`` (a file copy,
~0.15 s, rather than a migration per test), dropped when the test ends.

``conftest.py``'s ``pg_server`` fixture starts it (or skips, with ``needs``, saying
why it cannot) and makes it ``current``; ``make_store("postgresql", tmp_path)`` opens
stores on ``database_url(tmp_path)``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from bench.pg_server import PgServer, PgUnavailableError, find_bindir, start

TEMPLATE = "corral_template"


class PgCluster:
    """The session's cluster, its migrated template and the tests' databases."""

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self._names = (f"t_{n}" for n in itertools.count(1))
        self._databases: dict[Path, str] = {}

    @property
    def url(self) -> str:
        """The maintenance database's URL (``postgres``)."""
        return self.server.url()

    def make_template(self) -> None:
        from corral.store import migrate

        migrate.upgrade(self.server.create_database(TEMPLATE))

    def database_url(self, key: Path, *, migrated: bool = True) -> str:
        """The database of the test whose ``tmp_path`` is ``key``, made at first use:
        a copy of the template, or (``migrated=False``) empty."""
        if key not in self._databases:
            name = next(self._names)
            self.server.create_database(name, template=TEMPLATE if migrated else None)
            self._databases[key] = name
        return self.server.url(self._databases[key])

    def drop(self, key: Path) -> None:
        """Drop the database of ``key``'s test, if it has one."""
        name = self._databases.pop(key, None)
        if name is not None:
            self.server.drop_database(name)

    def stop(self) -> None:
        self.server.stop()


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
