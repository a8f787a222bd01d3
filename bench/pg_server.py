"""A throw-away PostgreSQL cluster on this machine, for benchmarks and tests.

``start()`` runs ``initdb`` into a new temporary directory and ``pg_ctl start`` on a
free loopback port, with a Unix socket directory of its own and ``fsync=on`` (the
figures are those of a durable database); ``PgServer.stop()`` stops it and removes
the directory. ``initdb`` refuses to run as root, so under root both run as the
``postgres`` user (``subprocess``'s ``user=``: what ``su postgres -c`` does, without
a shell), which then owns the directory.

The server binaries are found on ``PATH``, in ``/usr/local/bin``, then under
``/usr/lib/postgresql/<version>/bin`` (Debian's ``postgresql`` package), newest
first. Authentication is ``trust``: the cluster listens on 127.0.0.1 only and lives
as long as the run that started it. (``tests/pg.py`` uses it too; nothing here
imports the tests.)
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import free_port as free_port  # one rule for every port (xdist)

SUPERUSER = "postgres"
"""The cluster's superuser (``initdb --username``), whoever runs it."""


class PgUnavailableError(RuntimeError):
    """No PostgreSQL cluster can be started here; the message says why."""


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None."""
    found = shutil.which("initdb")
    candidates = [Path(found).parent] if found else []
    candidates.append(Path("/usr/local/bin"))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: -int(p.name))]
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    return None


@dataclass
class PgServer:
    """A running throw-away cluster."""

    bindir: Path
    root: Path
    """Holds ``data/``, ``sock/`` and ``server.log``; removed by ``stop()``."""
    port: int
    run_as: str | None
    """The Unix user that runs it (``postgres`` under root), None for this process's."""

    def run_as_ids(self) -> tuple[int, int]:
        """The uid and gid the cluster runs as (a directory it writes must be theirs)."""
        if self.run_as is None:
            return os.getuid(), os.getgid()
        entry = pwd.getpwnam(self.run_as)
        return entry.pw_uid, entry.pw_gid

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run(self, [str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), *args])

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """A new database (a copy of ``template`` when given); returns its URL."""
        import psycopg
        from psycopg import sql

        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(query)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending the sessions still connected to it."""
        import psycopg
        from psycopg import sql

        query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(query)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def options(self) -> str:
        """The server's settings, as ``-c`` options (the files belong to its user)."""
        return (
            f"-c listen_addresses=127.0.0.1 -c port={self.port}"
            f" -c unix_socket_directories={self.root / 'sock'} -c fsync=on -c max_connections=200"
        )

    def boot(self) -> None:
        """``pg_ctl start`` (again, after ``halt``); ``PgUnavailableError`` if it fails."""
        done = self.pg_ctl("-l", str(self.root / "server.log"), "-o", self.options(), "-w", "start")
        if done.returncode != 0:
            raise PgUnavailableError(
                f"pg_ctl start failed: {done.stdout}{done.stderr}\n{self.log_tail()}"
            )

    def halt(self) -> None:
        """Stop the cluster (``-m fast``) and keep its files: ``boot`` starts it again."""
        done = self.pg_ctl("-m", "fast", "-w", "stop")
        if done.returncode != 0:
            raise PgUnavailableError(f"pg_ctl stop failed: {done.stdout}{done.stderr}")

    def stop(self) -> None:
        """Stop the cluster and remove its files (``-m immediate``: no shutdown
        checkpoint writes out what is about to be removed anyway)."""
        try:
            self.pg_ctl("-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _run(server: PgServer, argv: list[str]) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, Any] = {}
    if server.run_as is not None:
        uid, gid = server.run_as_ids()
        kwargs = {"user": uid, "group": gid, "extra_groups": []}
    return subprocess.run(
        argv, capture_output=True, text=True, cwd=server.root, check=False, **kwargs
    )


def start(bindir: Path | None = None) -> PgServer:
    """initdb + pg_ctl start; ``PgUnavailableError`` saying why when it cannot."""
    bindir = bindir or find_bindir()
    if bindir is None:
        raise PgUnavailableError(
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH, in /usr/local/bin or"
            " under /usr/lib/postgresql/*/bin: install Debian's postgresql package"
        )
    run_as = None
    if os.geteuid() == 0:
        run_as = SUPERUSER
        try:
            entry = pwd.getpwnam(run_as)
        except KeyError:
            raise PgUnavailableError(
                "running as root, and initdb refuses root, but there is no 'postgres' user"
                " to run it as"
            ) from None
    root = Path(tempfile.mkdtemp(prefix="corral-pg-"))
    (root / "sock").mkdir()
    if run_as is not None:
        for path in (root, root / "sock"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    server = PgServer(bindir, root, free_port(), run_as)
    try:
        _initdb(server)
        server.boot()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


def _initdb(server: PgServer) -> None:
    argv = [
        str(server.bindir / "initdb"),
        "-D",
        str(server.root / "data"),
        f"--username={SUPERUSER}",
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",  # the store must not depend on the cluster's collation
        "--no-sync",  # the data directory is new: nothing to make durable yet
    ]
    done = _run(server, argv)
    if done.returncode != 0:
        raise PgUnavailableError(f"initdb failed: {done.stdout}{done.stderr}")
