"""Retention on a real ``corral serve``, on each database: ``--retain-finished``
deletes finished workloads and their logs past the age (never before it), keeps
what runs, waits, and what a waiting workload depends on; a server that does not
schedule sweeps its own logs; ``corral clean`` and ``Client.clean`` do it once.

``CORRAL_RETENTION_MIN_INTERVAL_SECONDS`` (docs/operations.md) lets the task run
every second here, where the age is seconds."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.client import Client
from corral.executors.local import kill_all
from tests.server import LiveServer, wait_until
from tests.test_cli import corral, one_line_error

FAST = {"CORRAL_RETENTION_MIN_INTERVAL_SECONDS": "0.3"}
AGE = 2.0
"""``--retain-finished 2s``: the task runs every second (half the age)."""


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"
    kill_all(tmp_path / "data" / "run")


def epoch(at: str) -> float:
    return datetime.fromisoformat(at).timestamp()


class Watcher:
    """Every event of ``GET /v1/events?follow=true``, collected by a thread until
    the server ends the stream (it stops) or ``close()``."""

    def __init__(self, server: LiveServer) -> None:
        self.events: list[dict[str, Any]] = []
        self._http = server.http(timeout=120)
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self._connected.wait(30)

    def _read(self) -> None:
        try:
            with self._http.stream("GET", "/v1/events", params={"follow": "true"}) as response:
                self._connected.set()
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line.removeprefix("data: ")))
        except httpx.HTTPError:
            pass

    def of(self, workload_id: str) -> list[str]:
        return [e["to_status"] for e in list(self.events) if e["workload_id"] == workload_id]

    def ended_at(self, workload_id: str) -> float | None:
        for e in list(self.events):
            if e["workload_id"] == workload_id and e["to_status"] in TERMINAL:
                return epoch(e["at"])
        return None

    def close(self) -> None:
        self._http.close()
        self._thread.join(10)


TERMINAL = ("completed", "failed", "killed")


def submit(http: httpx.Client, command: list[str], **body: Any) -> str:
    response = http.post("/v1/workloads", json={"command": command, **body})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_server_retaining_finished_workloads_deletes_them_past_the_age_with_their_logs(
    data: Path, serve_db: list[str]
) -> None:
    server = LiveServer(
        data, "--executor", "local", "--retain-finished", "2s", *serve_db, env=FAST
    ).start()
    logs = data / "logs"
    watcher = Watcher(server)
    http = server.http()
    try:
        done = {
            "a": submit(http, ["sh", "-c", "echo a"]),
            "f": submit(http, ["sh", "-c", "echo f; exit 3"]),
            "x": submit(http, ["sh", "-c", "echo x"]),
            "z": submit(http, ["sh", "-c", "sleep 4; echo z"]),
            "k": submit(http, ["sleep", "120"]),
        }
        # y waits for x (done at once) and z (4 s): x must outlive its age for it.
        done["y"] = submit(http, ["sh", "-c", "echo y"], depends_on=[done["x"], done["z"]])
        running = submit(http, ["sleep", "120"])
        waiting = submit(http, ["true"], depends_on=[running])
        wait_until(lambda: http.get(f"/v1/workloads/{done['k']}").json()["status"] == "running")
        assert http.delete(f"/v1/workloads/{done['k']}").status_code == 200
        wait_until(lambda: (logs / f"{running}.log").exists())

        gone_at: dict[str, float] = {}
        x_checked = False
        tail = None  # the newest event's workload is kept (event ids never go back):
        deadline = time.monotonic() + 60  # once y ended, a newer one than y's end
        while len(gone_at) < len(done) and time.monotonic() < deadline:
            if tail is None and watcher.ended_at(done["y"]) is not None:
                tail = submit(http, ["sleep", "120"])
            for name, wid in done.items():
                if name not in gone_at and http.get(f"/v1/workloads/{wid}").status_code == 404:
                    gone_at[name] = time.time()
            ended_x = watcher.ended_at(done["x"])
            waits = "y" not in gone_at and watcher.ended_at(done["y"]) is None
            if waits and ended_x and time.time() - ended_x > AGE + 1.5:  # past it, a run since
                assert "x" not in gone_at, "x was deleted while y still waited for it"
                x_checked = True
            time.sleep(0.05)
        assert set(gone_at) == set(done), f"not deleted: {set(done) - set(gone_at)}"
        assert x_checked
        for name, wid in done.items():
            ended = watcher.ended_at(wid)
            assert ended is not None, name
            assert gone_at[name] - ended >= AGE - 0.01, f"{name} deleted before its age"
            assert not (logs / f"{wid}.log").exists(), name
        assert watcher.of(done["y"]) == ["pending", "running", "completed"]
        assert watcher.of(done["f"])[-1] == "failed" and watcher.of(done["k"])[-1] == "killed"
        # What runs and what waits stays, and the running one's log.
        assert http.get(f"/v1/workloads/{running}").json()["status"] == "running"
        assert http.get(f"/v1/workloads/{waiting}").json()["status"] == "pending"
        assert http.get(f"/v1/workloads/{tail}").status_code == 200
        assert (logs / f"{running}.log").exists()
        page = http.get("/v1/events", params={"limit": 500}).json()["items"]
        assert not {e["workload_id"] for e in page} & set(done.values())
        assert "retention: deleted" in server.log.read_text()
    finally:
        http.close()
        watcher.close()
        server.kill()


def test_a_server_that_does_not_schedule_sweeps_its_own_logs(
    data: Path, tmp_path: Path, serve_db: list[str]
) -> None:
    """Servers of one database each keep the logs of what they ran: a server that
    does not schedule (API only) removes from its directory the logs of workloads
    no longer in the database, and keeps the others."""
    db = serve_db or ["--db", f"sqlite:///{data / 'corral.db'}"]
    leader = LiveServer(data, "--executor", "none", "--name", "one", *db).start()
    other_dir = tmp_path / "other"
    with leader.http() as http:
        ids = [submit(http, ["true"]) for _ in range(2)]
        for wid in ids:
            http.put(f"/v1/workloads/{wid}/status", json={"status": "killed"})
        ids.append(submit(http, ["true"]))  # pending (and the newest event's)
        other_logs = other_dir / "logs"
        other_logs.mkdir(parents=True)
        for wid in ids:
            (other_logs / f"{wid}.log").write_text("out\n")
        assert http.post("/v1/workloads/clean", json={"older_than_seconds": 0}).json() == {
            "deleted": 2
        }
    other = LiveServer(
        other_dir,
        "--scheduler",
        "never",
        "--executor",
        "none",
        "--name",
        "two",
        "--retain-finished",
        "1s",
        *db,
        env=FAST,
    )
    try:
        other.start()
        wait_until(lambda: not (other_logs / f"{ids[0]}.log").exists(), timeout=30)
        wait_until(lambda: not (other_logs / f"{ids[1]}.log").exists(), timeout=30)
        time.sleep(1.5)  # a run more
        assert (other_logs / f"{ids[2]}.log").exists()
    finally:
        other.kill()
        leader.kill()


STUBBORN = [
    "bash",
    "-c",
    "trap 'echo TERM' TERM; for i in $(seq 600); do echo tick $i; sleep 0.1; done",
]
"""Ticks until killed; takes SIGTERM for nothing (``--kill-grace`` later, SIGKILL)."""


def status_of(http: httpx.Client, wid: str) -> str | None:
    response = http.get(f"/v1/workloads/{wid}")
    return None if response.status_code == 404 else str(response.json()["status"])


def kill_and_clean(http: httpx.Client, wid: str) -> None:
    """Kill ``wid`` (it stops for the grace), then clean it away while it stops."""
    assert http.delete(f"/v1/workloads/{wid}").status_code == 200
    newer = submit(http, ["true"])  # the newest event's workload is kept: a newer one
    wait_until(lambda: status_of(http, newer) == "completed")
    clean = http.post("/v1/workloads/clean", json={"older_than_seconds": 0})
    assert clean.json()["deleted"] >= 1
    assert status_of(http, wid) is None


def test_a_followed_log_whose_workload_is_deleted_ends_without_an_error(
    data: Path, serve_db: list[str]
) -> None:
    """Followed, killed, cleaned while it stops: the follow gives the whole log (its
    last words after the kill too) and ends once the process is over, cleanly (it
    was cut short: the workload not found, an "unexpected error" on the server)."""
    server = LiveServer(data, "--kill-grace", "3s", *serve_db).start()
    http = server.http(timeout=60)
    try:
        wid = submit(http, STUBBORN)
        log = data / "logs" / f"{wid}.log"
        wait_until(lambda: log.exists() and b"tick" in log.read_bytes())  # its trap is set
        got: list[bytes] = []
        errors: list[BaseException] = []

        def follow() -> None:
            try:
                with server.http(timeout=60).stream(
                    "GET", f"/v1/workloads/{wid}/logs", params={"follow": "true"}
                ) as response:
                    assert response.status_code == 200
                    got.extend(response.iter_bytes())
            except BaseException as exc:
                errors.append(exc)

        reader = threading.Thread(target=follow)
        reader.start()
        wait_until(lambda: bool(got))
        kill_and_clean(http, wid)
        reader.join(30)
        assert not reader.is_alive() and not errors, errors
        out = b"".join(got).decode().splitlines()
        assert "TERM" in out
        ticks = [line for line in out if line.startswith("tick ")]  # (and bash's words)
        assert ticks == [f"tick {i}" for i in range(1, len(ticks) + 1)]
        assert "unexpected error" not in server.log.read_text()
    finally:
        http.close()
        server.stop()


def test_clean_removes_the_log_of_a_workload_killed_and_still_stopping_once_it_stops(
    data: Path, serve_db: list[str]
) -> None:
    """Killed and cleaned while its process still stops (and may write): its log is
    kept while it runs, and removed once it is over (it was left for ever on a server
    without ``--retain-finished``: no clean looked for it again)."""
    server = LiveServer(data, "--kill-grace", "5s", *serve_db).start()  # no --retain-finished
    http = server.http(timeout=60)
    try:
        wid = submit(http, STUBBORN)
        log = data / "logs" / f"{wid}.log"
        wait_until(lambda: log.exists() and b"tick" in log.read_bytes())  # its trap is set
        kill_and_clean(http, wid)
        assert log.exists()  # the process still writes it
        wait_until(lambda: not log.exists(), timeout=30)
        assert not list((data / "logs").glob(f"{wid}*"))
    finally:
        http.close()
        server.stop()


# --- corral clean, Client.clean ------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "data", "--executor", "none").start()
    yield live
    live.kill()


def user_key(server: LiveServer, user: str) -> str:
    with server.http() as admin:
        response = admin.post("/v1/tokens", json={"user": user})
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def finished(server: LiveServer, token: str, count: int) -> list[str]:
    """``count`` workloads of ``token``'s user, completed."""
    ids = []
    with server.http(token=token) as user, server.http() as admin:
        for _ in range(count):
            wid = submit(user, ["true"])
            admin.put(f"/v1/workloads/{wid}/status", json={"status": "running"})
            done = {"status": "completed", "exit_code": 0}
            assert admin.put(f"/v1/workloads/{wid}/status", json=done).status_code == 200
            ids.append(wid)
    return ids


def test_corral_clean_prints_one_line_and_a_rerun_deletes_nothing(server: LiveServer) -> None:
    alice, bob = user_key(server, "alice"), user_key(server, "bob")
    mine = finished(server, alice, 2)
    theirs = finished(server, bob, 1)
    with server.http(token=bob) as http:
        submit(http, ["true"])  # the newest event: its (pending) workload
    result = corral("clean", "--older-than", "0", url=server.url, token=alice)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "deleted 2 finished workloads older than 0s\n",
        "",
    )
    again = corral("clean", "--older-than", "3d", "--json", url=server.url, token=alice)
    assert again.returncode == 0 and json.loads(again.stdout) == {"deleted": 0}
    oldest = corral("clean", "--older-than", "36500d", "--json", url=server.url, token=alice)
    assert oldest.returncode == 0 and json.loads(oldest.stdout) == {"deleted": 0}  # 100 years
    with server.http() as admin:
        assert [admin.get(f"/v1/workloads/{w}").status_code for w in mine] == [404, 404]
        assert admin.get(f"/v1/workloads/{theirs[0]}").status_code == 200
    result = corral("clean", "--older-than", "0s", url=server.url, token=server.token)
    assert result.stdout == "deleted 1 finished workload older than 0s\n"
    with Client(server.url, token=server.token) as client:
        assert client.clean(0) == 0
        finished(server, alice, 1)
        with server.http(token=bob) as http:
            submit(http, ["true"])
        assert client.clean(0) == 1


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        ((), 2, "say how old: corral clean --older-than DURATION"),
        (("--older-than", "3x"), 2, "invalid --older-than: '3x' is not a duration"),
        (("--older-than=-1d",), 2, "invalid --older-than: '-1d' is not a duration"),
        (("--older-than", "36501d"), 2, "--older-than: at most 100 years"),
    ],
    ids=["missing", "bad", "negative", "too-old"],
)
def test_corral_clean_errors_are_one_line(
    server: LiveServer, args: tuple[str, ...], code: int, expected: str
) -> None:
    result = corral("clean", *args, url=server.url, token=server.token)
    assert one_line_error(result, code).startswith(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7x", "invalid --retain-finished: '7x' is not a duration"),
        ("0", "--retain-finished must be > 0"),
        ("36501d", "--retain-finished: at most 100 years"),
    ],
)
def test_serve_refuses_a_bad_retain_finished_as_a_usage_error(
    tmp_path: Path, value: str, expected: str
) -> None:
    settings = ("--data-dir", str(tmp_path), "--executor", "none")
    result = corral("serve", *settings, "--retain-finished", value, url="")
    assert one_line_error(result, 2).startswith(expected)
    assert not (tmp_path / "corral.db").exists()
