"""Several ``corral serve`` processes on one PostgreSQL database (issue 11): many API
servers and one scheduler, kills from any of them, failover when the scheduling
server dies, and a stalled leader that wakes up starting nothing.

Every workload appends its id to one file (``O_APPEND``: whole lines), so "exactly
once" is read off the file: no id twice, none missing. Workloads that must be seen
running write their pid first, so the test can tell when their process is gone.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.pg_server import PgServer
from prometheus_client.parser import text_string_to_metric_families

from corral.executors.local import kill_all
from tests import pg
from tests.server import Api, LiveServer, pid_gone, wait_until

LEASE = 3.0
"""The tests' lease (the smallest allowed): a standby must lead within LEASE + 5 s."""


@pytest.fixture
def db_url(pg_server: str, tmp_path: Path) -> Iterator[str]:
    assert pg.current is not None
    yield pg.current.database_url(tmp_path)
    pg.current.drop(tmp_path)


def serve(
    tmp_path: Path, name: str, db_url: str, *args: str, env: dict[str, str] | None = None
) -> LiveServer:
    return LiveServer(
        tmp_path / name,
        "--db",
        db_url,
        "--name",
        name,
        "--lease",
        f"{LEASE}s",
        "--kill-grace",
        "1s",
        *args,
        env=env,
    )


def appender(out: Path, **extra: Any) -> dict[str, Any]:
    """A workload that appends its id to ``out`` and ends."""
    return {"command": ["sh", "-c", f'echo "$CORRAL_WORKLOAD_ID" >> {out}'], **extra}


def sleeper(pids: Path, **extra: Any) -> dict[str, Any]:
    """A workload that writes its pid to ``pids/<id>`` and sleeps until stopped."""
    script = f'echo $$ > {pids}/"$CORRAL_WORKLOAD_ID"; exec sleep 600'
    return {"command": ["sh", "-c", script], **extra}


def status(server: LiveServer, http: httpx.Client) -> dict[str, Any]:
    got = http.get(f"{server.url}/v1/status")
    assert got.status_code == 200, got.text
    return dict(got.json())


def get(http: httpx.Client, server: LiveServer, wid: str) -> dict[str, Any]:
    got = http.get(f"{server.url}/v1/workloads/{wid}")
    assert got.status_code == 200, got.text
    return dict(got.json())


def ran_once(out: Path, ids: list[str]) -> None:
    lines = out.read_text().split() if out.exists() else []
    counts = collections.Counter(lines)
    twice = [i for i, n in counts.items() if n > 1]
    missing = set(ids) - set(counts)
    assert not twice, f"{len(twice)} ran more than once, e.g. {twice[:3]}"
    assert not missing, f"{len(missing)} never ran, e.g. {sorted(missing)[:3]}"
    assert set(counts) == set(ids)


def logs_from_anywhere(http: httpx.Client, servers: list[LiveServer]) -> None:
    """A workload's log, asked of servers that do not keep it, is forwarded to the one
    that does: the same bytes from each."""
    said = ["sh", "-c", "echo said by $CORRAL_WORKLOAD_ID"]
    talker = http.post(f"{servers[-1].url}/v1/workloads", json={"command": said}).json()["id"]
    wait_until(lambda: _ended(http, servers[-1], talker), timeout=20)
    for s in servers:
        got = http.get(f"{s.url}/v1/workloads/{talker}/logs")
        assert got.status_code == 200 and got.text == f"said by {talker}\n", (s.url, got.text)


def pid_of(pids: Path, wid: str) -> int:
    """The pid a sleeper wrote, once it has."""

    def written() -> str | None:
        try:
            return (pids / wid).read_text().strip() or None
        except FileNotFoundError:
            return None

    return int(wait_until(written, timeout=20))


def test_three_servers_one_scheduler_each_workload_runs_once(tmp_path: Path, db_url: str) -> None:
    out, pids = tmp_path / "ran", tmp_path / "pids"
    pids.mkdir()
    a = serve(tmp_path, "a", db_url, "--cpus", "2").start()
    b = serve(tmp_path, "b", db_url, "--scheduler", "never").start()
    c = serve(tmp_path, "c", db_url, "--scheduler", "never").start()
    servers = [a, b, c]
    try:
        http = httpx.Client(headers=a.headers, timeout=60)
        for s in servers:
            assert status(s, http)["leader"] == "a"
        # A standby judges a submit by what the scheduling server publishes.
        wait_until(lambda: status(b, http)["capacity"]["cpus"] == 2)
        too_big = http.post(f"{b.url}/v1/workloads", json=appender(out, resources={"cpus": 3}))
        assert too_big.status_code == 422, too_big.text
        assert "3 CPUs" in too_big.text and "2" in too_big.text
        ids: list[str] = []
        lock = threading.Lock()
        errors: list[str] = []

        def submit(server: LiveServer, n: int) -> None:
            client = httpx.Client(headers=a.headers, timeout=60)
            made: list[str] = []
            try:
                while len(made) < n:
                    if len(made) % 100 < 20:  # some one by one, most in batches
                        r = client.post(f"{server.url}/v1/workloads", json=appender(out))
                        if r.status_code != 201:
                            errors.append(r.text)
                            return
                        made.append(r.json()["id"])
                    else:
                        items = [appender(out) for _ in range(min(40, n - len(made)))]
                        r = client.post(f"{server.url}/v1/workloads/batch", json={"items": items})
                        if r.status_code != 201:
                            errors.append(r.text)
                            return
                        made += [w["id"] for w in r.json()["items"]]
            finally:
                with lock:
                    ids.extend(made)

        threads = [
            threading.Thread(target=submit, args=(s, n))
            for s, n in zip(servers, (667, 667, 666), strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert len(ids) == 2000

        def all_completed() -> bool:
            counts = status(b, http)["counts"]
            return counts["completed"] == 2000 or counts["failed"] > 0

        wait_until(all_completed, timeout=180, interval=0.5)
        assert status(c, http)["counts"]["completed"] == 2000
        ran_once(out, ids)
        assert {get(http, c, ids[0])["node"], get(http, b, ids[-1])["node"]} == {"a"}

        logs_from_anywhere(http, servers)

        # Kills through the servers that do not schedule reach the processes in 1 s.
        sleepers = [
            http.post(f"{a.url}/v1/workloads", json=sleeper(pids, resources={"cpus": 0.1})).json()[
                "id"
            ]
            for _ in range(6)
        ]
        procs = {wid: pid_of(pids, wid) for wid in sleepers}
        for i, wid in enumerate(sleepers):
            via = (b, c)[i % 2]
            began = time.monotonic()
            r = http.delete(f"{via.url}/v1/workloads/{wid}")
            assert r.status_code == 200, r.text
            wait_until(lambda p=procs[wid]: pid_gone(p), timeout=5, interval=0.01)
            took = time.monotonic() - began
            print(f"kill via {via.url}: process gone after {took * 1000:.0f} ms")
            assert took < 1.0
    finally:
        for s in servers:
            s.kill()


def test_a_standby_takes_over_and_a_stalled_leader_starts_nothing(
    tmp_path: Path, db_url: str
) -> None:
    out, pids = tmp_path / "ran", tmp_path / "pids"
    pids.mkdir()
    a = serve(tmp_path, "a", db_url, "--cpus", "2").start()
    http = httpx.Client(headers=a.headers, timeout=30)
    wait_until(lambda: status(a, http)["leader"] == "a")
    b = serve(tmp_path, "b", db_url, "--cpus", "2").start()
    servers = [a, b]
    try:
        assert status(b, http)["leader"] == "a"
        one_cpu = {"resources": {"cpus": 1}}
        running = [
            http.post(f"{a.url}/v1/workloads", json=sleeper(pids, **one_cpu)).json()["id"]
            for _ in range(2)
        ]
        procs = {wid: pid_of(pids, wid) for wid in running}
        pending = [
            http.post(f"{b.url}/v1/workloads", json=appender(out, **one_cpu)).json()["id"]
            for _ in range(10)
        ]
        assert all(get(http, b, w)["status"] == "pending" for w in pending)

        a.kill()  # SIGKILL: no release of the lease
        killed_at = time.monotonic()
        wait_until(lambda: status(b, http)["leader"] == "b", timeout=LEASE + 10, interval=0.1)
        took_over = time.monotonic() - killed_at
        lost = {w: wait_until(lambda w=w: _ended(http, b, w), timeout=10) for w in running}
        ended = time.monotonic() - killed_at
        print(f"failover: leader after {took_over:.2f} s, lost recorded after {ended:.2f} s")
        assert took_over <= LEASE + 5
        for w in lost.values():
            assert w["status"] == "failed"
            assert w["reason"].startswith("lost: server a stopped at "), w["reason"]
        for pid in procs.values():
            wait_until(lambda pid=pid: pid_gone(pid), timeout=5)
        wait_until(
            lambda: all(get(http, b, w)["status"] == "completed" for w in pending), timeout=30
        )
        ran_once(out, pending)
        assert {get(http, b, w)["node"] for w in pending} == {"b"}

        # Now b leads; stop it past its lease while it has work it would start.
        a = serve(tmp_path, "a", db_url, "--cpus", "2").start()
        servers = [a, b]
        b_running = [
            http.post(f"{b.url}/v1/workloads", json=sleeper(pids, **one_cpu)).json()["id"]
            for _ in range(2)
        ]
        b_procs = {wid: pid_of(pids, wid) for wid in b_running}
        queued = [
            http.post(f"{b.url}/v1/workloads", json=appender(out, **one_cpu)).json()["id"]
            for _ in range(6)
        ]
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGSTOP)
        stopped_wall = time.time()
        try:
            wait_until(lambda: status(a, http)["leader"] == "a", timeout=LEASE + 10, interval=0.1)
            wait_until(
                lambda: all(get(http, a, w)["status"] == "completed" for w in queued), timeout=30
            )
            more = [
                http.post(f"{a.url}/v1/workloads", json=appender(out, **one_cpu)).json()["id"]
                for _ in range(4)
            ]
            time.sleep(LEASE)  # b stays stopped well past its lease
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        for pid in b_procs.values():  # b sees its workloads lost, stops their processes
            wait_until(lambda pid=pid: pid_gone(pid), timeout=10)
        wait_until(lambda: all(get(http, a, w)["status"] == "completed" for w in more), timeout=30)
        time.sleep(2)  # time for b to do anything it would still do
        ran_once(out, pending + queued + more)
        for wid in queued + more:
            w = get(http, a, wid)
            assert w["node"] == "a", w
        for wid in b_running:
            w = get(http, a, wid)
            assert w["status"] == "failed" and w["reason"].startswith("lost: server b stopped")
            events = http.get(f"{a.url}/v1/workloads/{wid}/events").json()["items"]
            assert events[-1]["to_status"] == "failed"  # b wrote nothing after waking
        started_by_b_late = [
            w
            for w in http.get(f"{a.url}/v1/workloads", params={"limit": 1000}).json()["items"]
            if w["node"] == "b" and w["started_at"] and _epoch(w["started_at"]) > stopped_wall
        ]
        assert not started_by_b_late
        assert status(b, http)["leader"] == "a"
    finally:
        for s in servers:
            s.kill()


def _ended(http: httpx.Client, server: LiveServer, wid: str) -> dict[str, Any] | None:
    w = get(http, server, wid)
    return w if w["status"] in ("completed", "failed", "killed") else None


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_on_ray_a_standby_takes_over_and_adopts_the_running_workloads(
    tmp_path: Path, db_url: str, ray_cluster: Any
) -> None:
    """Two servers on one database and one Ray cluster: the scheduling one is killed;
    the other takes over and adopts its workloads (same namespace, from the
    database): one still running stays running and can be killed, one that ended
    meanwhile gets its true exit code, and each ran once."""
    out, pids = tmp_path / "ran", tmp_path / "pids"
    pids.mkdir()
    ray = ("--executor", "ray", "--ray-address", ray_cluster.address)
    env = {"CORRAL_RAY_NODE_DIR": str(tmp_path / "nodes")}

    def ray_server(name: str) -> LiveServer:
        return LiveServer(
            tmp_path / name,
            "--db", db_url, "--name", name, "--lease", f"{LEASE}s", "--kill-grace", "1s", *ray,
            env=env,
        )  # fmt: skip

    a = ray_server("a").start(timeout=90)
    http = httpx.Client(headers=a.headers, timeout=30)
    wait_until(lambda: status(a, http)["leader"] == "a")
    b = ray_server("b").start(timeout=90)
    servers = [a, b]
    try:
        stays = http.post(f"{a.url}/v1/workloads", json=sleeper(pids)).json()["id"]
        script = f'echo "$CORRAL_WORKLOAD_ID" >> {out}; sleep 2; exit 7'
        ends = http.post(f"{a.url}/v1/workloads", json={"command": ["sh", "-c", script]}).json()[
            "id"
        ]
        pid = pid_of(pids, stays)
        wait_until(lambda: get(http, a, ends)["status"] == "running", timeout=20)
        a.kill()
        wait_until(lambda: status(b, http)["leader"] == "b", timeout=LEASE + 10, interval=0.1)
        ended = wait_until(lambda: _ended(http, b, ends), timeout=20)
        assert (ended["status"], ended["exit_code"]) == ("failed", 7), ended
        time.sleep(1)
        assert get(http, b, stays)["status"] == "running"
        assert not pid_gone(pid)
        assert http.delete(f"{b.url}/v1/workloads/{stays}").status_code == 200
        wait_until(lambda: pid_gone(pid), timeout=5)
        ran_once(out, [ends])
    finally:
        _leave_the_cluster_empty(dict(zip("ab", servers, strict=True)), http, tmp_path / "nodes")


def _leave_the_cluster_empty(
    servers: dict[str, LiveServer], http: httpx.Client, node_dir: Path
) -> None:
    """The Ray cluster is the session's: drain through the leader (see ``Api.drain``;
    once one of those alive leads), stop every server, and kill what is left on the
    nodes. A failure here is logged, never raised over the test's own."""
    live = {name: s for name, s in servers.items() if s.running()}
    try:
        if live:
            some = next(iter(live.values()))
            leader = wait_until(
                lambda: (name := status(some, http)["leader"]) in live and name,
                timeout=LEASE + 10,
                interval=0.1,
            )
            Api(live[leader]).drain()
    except Exception as exc:
        print(f"could not drain the Ray servers: {exc!r}")
    for s in servers.values():
        with contextlib.suppress(Exception):
            if s.running():
                s.stop()
        s.kill()
    for run_dir in node_dir.glob("*/*/run"):
        kill_all(run_dir)


def test_a_database_down_for_20_s_then_back_loses_nothing_and_answers_again(
    tmp_path: Path, own_pg: PgServer
) -> None:
    """PostgreSQL stops for 20 s: every API answer meanwhile is a 503 (no 500); once
    it is back, the servers answer again within a few seconds (not after their
    connection pool's backoff has grown to the outage's length), the leader schedules
    again, the workload that ran through it still runs, and each submit runs once."""
    out, pids = tmp_path / "ran", tmp_path / "pids"
    pids.mkdir()
    url = own_pg.url("corral")
    a = serve(tmp_path, "a", url, "--cpus", "2").start()
    b = serve(tmp_path, "b", url, "--scheduler", "never").start()
    servers = [a, b]
    try:
        http = httpx.Client(headers=a.headers, timeout=30)
        wait_until(lambda: status(b, http)["leader"] == "a")
        one_cpu = {"resources": {"cpus": 1}}
        stays = http.post(f"{a.url}/v1/workloads", json=sleeper(pids, **one_cpu)).json()["id"]
        pid = pid_of(pids, stays)
        own_pg.halt()
        down = time.monotonic()
        try:
            while time.monotonic() - down < 20:
                for s in servers:
                    for method, path, body in (
                        ("GET", "/v1/status", None),
                        ("GET", f"/v1/workloads/{stays}", None),
                        ("POST", "/v1/workloads", appender(out, **one_cpu)),
                    ):
                        got = http.request(method, f"{s.url}{path}", json=body)
                        assert got.status_code == 503, (method, path, got.status_code, got.text)
                time.sleep(0.5)
        finally:
            own_pg.boot()

        def submitted() -> str | None:
            got = http.post(f"{b.url}/v1/workloads", json=appender(out, **one_cpu))
            return str(got.json()["id"]) if got.status_code == 201 else None

        after = [wait_until(submitted, timeout=5, interval=0.2)]
        after += [submitted() or "" for _ in range(4)]
        wait_until(lambda: all(get(http, a, w)["status"] == "completed" for w in after), timeout=20)
        ran_once(out, after)
        assert get(http, a, stays)["status"] == "running"
        assert not pid_gone(pid)
        wait_until(lambda: status(b, http)["leader"] == "a", timeout=10)  # b reads it each second
    finally:
        for s in servers:
            s.kill()


def test_a_claim_that_outlives_the_lease_is_started_once_the_lease_is_back(
    tmp_path: Path, db_url: str
) -> None:
    """The database stalls a claim past the leader's lease (here: a transaction holds
    the lease row locked for longer than the lease; a slow disk does the same): the
    claim commits, but the leader, by its own clock, no longer leads and launches
    nothing. It takes the lease back (no other server wants it): the workload it
    claimed must then run, not stay ``running`` for ever without a process."""
    import psycopg

    out = tmp_path / "ran"
    a = serve(tmp_path, "a", db_url, "--cpus", "2").start()
    try:
        http = httpx.Client(headers=a.headers, timeout=30)
        wait_until(lambda: status(a, http)["leader"] == "a")
        with psycopg.connect(db_url) as conn:
            conn.execute("SELECT 1 FROM leases FOR UPDATE")  # the stall: claims wait
            wid = http.post(f"{a.url}/v1/workloads", json=appender(out)).json()["id"]
            time.sleep(LEASE + 1)
        wait_until(lambda: get(http, a, wid)["status"] == "completed", timeout=LEASE + 10)
        ran_once(out, [wid])
        assert status(a, http)["leader"] == "a"
    finally:
        a.kill()


def scrape(server: LiveServer, http: httpx.Client) -> dict[str, Any]:
    """``/metrics`` of ``server``, parsed by prometheus-client: the counts by status,
    the queue depth and whether it leads."""
    got = http.get(f"{server.url}/metrics")
    assert got.status_code == 200, got.text
    samples = {
        (s.name, s.labels.get("status")): s.value
        for family in text_string_to_metric_families(got.text)
        for s in family.samples
    }
    return {
        "counts": {st: v for (name, st), v in samples.items() if name == "corral_workloads"},
        "queue_depth": samples.get(("corral_queue_depth", None)),
        "leader": samples[("corral_server_leader", None)],
    }


def test_the_other_servers_serve_the_counts_the_scheduling_server_publishes(
    tmp_path: Path, db_url: str
) -> None:
    """``/metrics`` on a standby and on an API-only server: the counts by status and
    the queue depth the scheduling server published with its heartbeat, moving as
    workloads move, never a count of their own. Every server here reads the counts
    hourly, so the leader has counted before a failed workload was put in the
    database behind its back: a server counting for itself would say 1."""
    import psycopg

    pids = tmp_path / "pids"
    pids.mkdir()
    hourly = {"CORRAL_METRICS_REFRESH_SECONDS": "3600"}
    a = serve(tmp_path, "a", db_url, "--cpus", "1", env=hourly).start()
    http = httpx.Client(headers=a.headers, timeout=30)
    wait_until(lambda: status(a, http)["leader"] == "a")
    zero = dict.fromkeys(["pending", "running", "completed", "failed", "killed"], 0.0)
    wait_until(lambda: scrape(a, http)["counts"] == zero)  # a's first count, at its start
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO workloads (id, name, command, env, cwd, cpus, memory_mb, gpus,"
            " labels, priority, status, created_at, updated_at, owner) VALUES"
            " ('01m8p1a0000000000000000000', 'planted', '[\"true\"]', '{}', NULL, 1, 0, 0,"
            " '{}', 0, 'failed', now(), now(), 'nobody')"
        )
    b = serve(tmp_path, "b", db_url, "--cpus", "1", env=hourly).start()
    c = serve(tmp_path, "c", db_url, "--scheduler", "never", env=hourly).start()
    servers = [a, b, c]
    try:
        for s in (b, c):
            wait_until(lambda s=s: status(s, http)["leader"] == "a")

        def everywhere(expected: dict[str, float], depth: float) -> bool:
            seen = [scrape(s, http) for s in servers]
            return all(x["counts"] == expected and x["queue_depth"] == depth for x in seen)

        wait_until(lambda: everywhere(zero, 0), interval=0.2)
        one_cpu = {"resources": {"cpus": 1}}
        first = http.post(f"{b.url}/v1/workloads", json=sleeper(pids, **one_cpu)).json()["id"]
        pid_of(pids, first)
        second = http.post(f"{c.url}/v1/workloads", json=sleeper(pids, **one_cpu)).json()["id"]
        wait_until(lambda: everywhere({**zero, "running": 1, "pending": 1}, 1), interval=0.2)
        assert [scrape(s, http)["leader"] for s in servers] == [1, 0, 0]

        assert http.delete(f"{c.url}/v1/workloads/{first}").status_code == 200
        pid_of(pids, second)
        wait_until(lambda: everywhere({**zero, "running": 1}, 0), interval=0.2)
        assert http.delete(f"{b.url}/v1/workloads/{second}").status_code == 200
        wait_until(lambda: everywhere(zero, 0), interval=0.2)
    finally:
        for s in servers:
            s.kill()
