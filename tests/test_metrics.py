"""``GET /metrics``: the scrape parses as Prometheus text, and its values move as
workloads move (submit, run, complete, kill), on the real app over a real store with
the local executor."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.api.app import create_app
from corral.api.metrics import Metrics
from corral.executors.base import Capacity
from corral.executors.local import LocalExecutor, kill_all
from corral.scheduler import Scheduler
from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore
from tests.conftest import add_key, app_client
from tests.server import LiveServer, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Running:
    def __init__(self, store: BlockingStore, tmp_path: Path, token: str) -> None:
        executor = LocalExecutor(tmp_path, capacity=Capacity(2, 1000, 0), kill_grace_seconds=1)
        self.scheduler = Scheduler(store.inner, executor)
        self.store = store
        app = create_app(store.inner, data_dir=tmp_path, scheduler=self.scheduler)
        self.metrics: Metrics = app.state.metrics
        self.api = SyncASGIClient(app, token=token, run=store.run)
        store.run(self.scheduler.start())

    def scrape(self) -> Samples:
        response = self.api.get("/metrics")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }

    def submit(self, command: list[str], cpus: float = 1) -> str:
        r = self.api.post("/v1/workloads", json={"command": command, "resources": {"cpus": cpus}})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def wait(self, wid: str, status: str) -> None:
        wait_until(lambda: self.api.get(f"/v1/workloads/{wid}").json()["status"] == status)


@pytest.fixture
def running(store: BlockingStore, tmp_path: Path, admin_key: str) -> Iterator[Running]:
    r = Running(store, tmp_path, admin_key)
    yield r
    store.run(r.scheduler.stop())
    r.api.close()
    kill_all(tmp_path / "run")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def workloads(samples: Samples, status: str) -> float:
    return value(samples, "corral_workloads", status=status)


def moved(samples: Samples, a: str, b: str) -> float:
    return value(samples, "corral_transitions_total", from_status=a, to_status=b)


def test_values_follow_the_workloads(running: Running) -> None:
    s = running.scrape()
    assert value(s, "corral_capacity", resource="cpus") == 2
    assert value(s, "corral_capacity", resource="memory_bytes") == 1000 << 20
    assert value(s, "corral_capacity_free", resource="cpus") == 2
    assert value(s, "corral_queue_depth") == 0
    assert value(s, "corral_server_leader") == 1
    assert value(s, "corral_scheduling_latency_seconds_count") == 0

    long = running.submit(["sleep", "60"], cpus=2)
    running.wait(long, "running")
    waiting = running.submit(["true"], cpus=1)
    s = running.scrape()
    assert workloads(s, "running") == 1 and workloads(s, "pending") == 1  # live, no refresh
    assert value(s, "corral_queue_depth") == 1
    assert value(s, "corral_capacity_used", resource="cpus") == 2
    assert value(s, "corral_capacity_free", resource="cpus") == 0
    assert moved(s, "pending", "running") == 1
    assert value(s, "corral_scheduling_latency_seconds_count") == 1

    assert running.api.delete(f"/v1/workloads/{long}").status_code == 200
    running.wait(waiting, "completed")
    wait_until(lambda: workloads(running.scrape(), "running") == 0)
    running.store.run(running.metrics.refresh())  # what the lifespan's task does
    s = running.scrape()
    assert moved(s, "running", "killed") == 1
    assert moved(s, "pending", "running") == 2
    assert moved(s, "running", "completed") == 1
    assert workloads(s, "killed") == 1 and workloads(s, "completed") == 1
    assert workloads(s, "pending") == 0
    assert value(s, "corral_queue_depth") == 0
    assert value(s, "corral_capacity_used", resource="cpus") == 0
    assert value(s, "corral_scheduling_latency_seconds_count") == 2

    blocker = running.submit(["sleep", "60"], cpus=2)
    running.wait(blocker, "running")
    pending = running.submit(["true"], cpus=1)  # waits behind it
    assert running.api.delete(f"/v1/workloads/{pending}").status_code == 200
    s = running.scrape()
    assert moved(s, "pending", "killed") == 1
    assert workloads(s, "pending") == 0 and value(s, "corral_queue_depth") == 0
    assert running.api.delete(f"/v1/workloads/{blocker}").status_code == 200


def test_log_bytes_are_counted_at_each_exit_and_read_while_running(running: Running) -> None:
    """``corral_log_bytes_total``: each ended log's final size, added at its exit;
    ``corral_log_bytes_running``: the running logs' sizes now."""
    s = running.scrape()
    assert value(s, "corral_log_bytes_total") == 0 and value(s, "corral_log_bytes_running") == 0
    done = running.submit(["sh", "-c", "head -c 1000 /dev/zero; head -c 234 /dev/zero >&2"])
    running.wait(done, "completed")
    wait_until(lambda: value(running.scrape(), "corral_log_bytes_total") == 1234)
    busy = running.submit(["sh", "-c", "head -c 500 /dev/zero; exec sleep 60"])
    running.wait(busy, "running")
    wait_until(lambda: value(running.scrape(), "corral_log_bytes_running") == 500)
    assert value(running.scrape(), "corral_log_bytes_total") == 1234  # not over yet
    assert running.api.delete(f"/v1/workloads/{busy}").status_code == 200
    wait_until(lambda: value(running.scrape(), "corral_log_bytes_total") == 1734)
    assert value(running.scrape(), "corral_log_bytes_running") == 0


def test_request_durations_by_route_template(running: Running) -> None:
    wid = running.submit(["true"])
    running.api.get(f"/v1/workloads/{wid}")
    running.api.get("/v1/workloads/nosuchid0000")
    running.api.get("/no/such/path")
    s = running.scrape()
    count = "corral_http_request_duration_seconds_count"
    assert value(s, count, route="/v1/workloads", method="POST", status="201") == 1
    template = "/v1/workloads/{workload_id}"
    assert value(s, count, route=template, method="GET", status="200") == 1
    assert value(s, count, route=template, method="GET", status="404") == 1
    assert value(s, count, route="unmatched", method="GET", status="404") == 1
    assert not any(wid in str(labels) for _, labels in s)  # never the raw path


def test_admin_keys_only(store: BlockingStore, tmp_path: Path) -> None:
    user = app_client(store, tmp_path, token=add_key(store, "alice"))
    anonymous = app_client(store, tmp_path)
    try:
        assert user.get("/metrics").status_code == 403
        assert anonymous.get("/metrics").status_code == 401
    finally:
        user.close()
        anonymous.close()


def test_the_counts_are_refreshed_off_the_request_path(
    store: BlockingStore, tmp_path: Path, admin_key: str
) -> None:
    """Without a scheduler here, every count is the last one read; the refresher
    reads them again, on its own."""
    app = create_app(store.inner, data_dir=tmp_path)
    metrics: Metrics = app.state.metrics
    api = SyncASGIClient(app, token=admin_key, run=store.run)
    try:
        assert api.post("/v1/workloads", json={"command": ["true"]}).status_code == 201
        assert "corral_workloads{" not in api.get("/metrics").text  # not read yet
        task = store.run(_start(metrics.refresh_forever(period=0.05)))
        try:
            wait_until(lambda: 'corral_workloads{status="pending"} 1.0' in api.get("/metrics").text)
        finally:
            store.loop.call_soon_threadsafe(task.cancel)
    finally:
        api.close()


async def _start(work: Any) -> asyncio.Task[None]:
    return asyncio.create_task(work)


def test_a_live_server(tmp_path: Path, serve_db: list[str]) -> None:
    """``corral serve``: /readyz without a key; /metrics with the admin key, its
    counts by status read at start by the lifespan's refresher; a metrics key made by
    ``corral token create --metrics`` reads them too, and nothing else."""
    args = ("--executor", "local", "--cpus", "1", "--memory-mb", "100", *serve_db)
    server = LiveServer(tmp_path / "data", *args).start()
    try:
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"database": "ok", "executor": "ok", "scheduler": "active"}
        # As the kubelet probes: Host is the pod's IP (no --allowed-host names it),
        # GET or HEAD. Only the probes answer such a Host.
        pod = {"Host": "10.0.0.7:8765"}
        for method in ("GET", "HEAD"):
            for path in ("/healthz", "/readyz"):
                probe = httpx.request(method, f"{server.url}{path}", headers=pod, timeout=10)
                assert probe.status_code == 200, (method, path, probe.text)
                assert (probe.content == b"") == (method == "HEAD"), (method, path)
        other = httpx.get(f"{server.url}/v1/status", headers=pod, timeout=10)
        assert other.status_code == 400 and "host" in other.json()["detail"]
        assert httpx.head(f"{server.url}/metrics", headers=pod, timeout=10).status_code == 400
        with server.http() as http:
            r = http.post("/v1/workloads", json={"command": ["true"]})
            wid = r.json()["id"]
            wait_until(lambda: http.get(f"/v1/workloads/{wid}").json()["status"] == "completed")
            text = http.get("/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert "_created" not in text  # prometheus-client's default series, turned off
        counts = {s.labels["status"]: s.value for s in families["corral_workloads"].samples}
        assert set(counts) == {"pending", "running", "completed", "failed", "killed"}
        assert counts["running"] == 0 and counts["pending"] == 0
        moved = {
            (s.labels["from_status"], s.labels["to_status"]): s.value
            for s in families["corral_transitions"].samples
            if s.name == "corral_transitions_total"
        }
        assert moved == {("pending", "running"): 1, ("running", "completed"): 1}
        made = subprocess.run(
            [sys.executable, "-m", "corral.cli", "token", "create", "--metrics", "prom"],
            env=server.cli_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        assert "created metrics key" in made.stderr
        with server.http(token=made.stdout.strip()) as prom:
            scraped = prom.get("/metrics")
            assert scraped.status_code == 200, scraped.text
            assert "corral_workloads" in {
                f.name for f in text_string_to_metric_families(scraped.text)
            }
            refused = prom.get(f"/v1/workloads/{wid}")
            assert refused.status_code == 403 and "metrics key" in refused.json()["detail"]
        listed = subprocess.run(
            [sys.executable, "-m", "corral.cli", "ls"],
            env={**server.cli_env, "CORRAL_TOKEN": made.stdout.strip()},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 4 and listed.stderr == (
            "corral: this is a metrics key: it may only GET /metrics, not GET /v1/workloads;"
            " use a user or admin key for the API (the key from $CORRAL_TOKEN)\n"
        )
    finally:
        server.kill()
        kill_all(tmp_path / "data" / "run")
