"""``corral serve`` joining a database other servers use, through real processes: a
second scheduler on one SQLite file is refused in one line (whichever name it has),
a refused server leaves nothing behind (no admin key), and one that serves the API
only (``--scheduler never``) starts beside the first."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from corral.executors.local import kill_all
from tests.server import LiveServer, free_port


def serve_refused(data_dir: Path, *args: str) -> str:
    """Run ``corral serve`` expected to be refused: its one ``corral:`` line (after
    any log lines of its start, such as compiling the shim)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "corral.cli", "serve", "--port", str(free_port())]
    cmd += ["--data-dir", str(data_dir), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("corral:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.rstrip().endswith(lines[0]), done.stderr
    return lines[0]


def keys_in(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM api_keys").fetchone()[0])


def test_a_second_scheduler_on_one_sqlite_file_is_refused_and_leaves_no_key(
    tmp_path: Path,
) -> None:
    try:
        _second_scheduler_refused(tmp_path)
    finally:
        # Its sleep's shim outlives the server by design: stopped here, not left to
        # retry its status for ever once pytest removes the directory.
        kill_all(tmp_path / "a" / "run")


def _second_scheduler_refused(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    with LiveServer(tmp_path / "a", "--db", url, "--executor", "local") as first:
        keys = keys_in(db)
        # The same (default) name: refused for its name, and told about SQLite's one
        # scheduler, so a second --name does not come as a surprise.
        line = serve_refused(tmp_path / "b", "--db", url, "--executor", "local")
        assert "a server named" in line and "another name (--name)" in line, line
        assert "one SQLite database has one scheduler" in line and "--scheduler never" in line
        # Another name: refused as a second scheduler.
        line = serve_refused(tmp_path / "c", "--db", url, "--executor", "local", "--name", "c")
        assert line.startswith("corral: the scheduler of this database runs in server"), line
        assert "--scheduler never" in line
        assert keys_in(db) == keys  # neither refused server made an admin key
        assert not (tmp_path / "b" / "token").exists() and not (tmp_path / "c" / "token").exists()
        # The API only: starts beside the first and sees its workloads.
        args = ("--db", url, "--executor", "local", "--name", "d", "--scheduler", "never")
        with LiveServer(tmp_path / "d", *args) as api_only, first.http() as http:
            created = http.post("/v1/workloads", json={"command": ["sleep", "60"]})
            assert created.status_code == 201, created.text
            with api_only.http(token=first.token) as other:
                seen = other.get(f"/v1/workloads/{created.json()['id']}")
                status = other.get("/v1/status").json()
            assert seen.status_code == 200, seen.text
            assert (status["server"], status["leader"]) == ("d", first_name(first))


def first_name(server: LiveServer) -> str:
    with server.http() as http:
        name = http.get("/v1/status").json()["server"]
    assert isinstance(name, str)
    return name
