"""``create_rps``, ``get_rps`` and their bound ``bare_rps``: HTTP throughput under load.

A real ``corral serve --executor none`` on a fresh data dir, and the bare app of
``bench.bare_app`` under the same uvicorn settings; the load generator
(``bench.http_load``) runs in its own process with 32 keep-alive connections.
"""

from __future__ import annotations

import json
from typing import Any

from bench.common import PYTHON, Metric, Server, fresh_dir, request
from bench.http_load import encode_request, run_load

CONNS = 32
BODY = json.dumps(
    {
        "name": "nightly-train",
        "command": ["python3", "train.py", "--epochs", "10", "--data", "/srv/data/set-a"],
        "env": {"RUN_MODE": "bench", "DATA_ROOT": "/srv/data"},
        "labels": {"team": "ml", "app": "trainer"},
        "resources": {"cpus": 1, "memory_mb": 512},
        "priority": 1,
    },
    separators=(",", ":"),
).encode()


def _load(port: int, requests: list[bytes], warmup: float, duration: float) -> dict[str, Any]:
    spec = {
        "port": port,
        "requests": [r.decode("latin-1") for r in requests],
        "conns": CONNS,
        "warmup": warmup,
        "duration": duration,
    }
    return run_load(spec, timeout=warmup + duration + 120)


def _errors(report: dict[str, Any]) -> int:
    return int(report["non_2xx"]) + int(report["conn_errors"])


def _detail(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "responses": report["ok"] + report["non_2xx"],
        "non_2xx": report["non_2xx"],
        "conn_errors": report["conn_errors"],
        "statuses": report["statuses"],
        "seconds": round(report["seconds"], 2),
        "latency_ms": report["latency_ms"],
        "connections": CONNS,
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: float(r["rps"]))[len(runs) // 2]


def run(quick: bool, only: set[str]) -> dict[str, Metric]:
    warmup, duration, rounds = (0.5, 2.0, 1) if quick else (1.5, 10.0, 3)
    out: dict[str, Metric] = {}
    argv = [PYTHON, "-m", "bench.bare_app", "{port}"]
    with Server(fresh_dir("bare"), argv=argv) as bare_srv, Server(fresh_dir("api")) as srv:
        bare_req = [encode_request("POST", "/v1/workloads", BODY, bare_srv.port)]
        create_req = [encode_request("POST", "/v1/workloads", BODY, srv.port)]
        # Bare and corral take turns, `rounds` times, and each figure is the median of
        # its runs: a noisy neighbour lands on both alike, and neither gets a best-of.
        bare_runs: list[dict[str, Any]] = []
        create_runs: list[dict[str, Any]] = []
        for _ in range(rounds):
            bare_runs.append(_load(bare_srv.port, bare_req, warmup, duration / rounds))
            create_runs.append(_load(srv.port, create_req, warmup, duration / rounds))
        bare, create = _median_run(bare_runs), _median_run(create_runs)
        errors = sum(_errors(r) for r in create_runs)
        detail = {**_detail(create), "runs_rps": [round(r["rps"], 1) for r in create_runs]}
        out["create_rps"] = Metric(create["rps"], "req/s", bare["rps"], "bare_rps", errors, detail)
        if "get_rps" in only:
            status, page = request(srv.port, "GET", "/v1/workloads?limit=1000")
            assert status == 200, page
            ids = [w["id"] for w in page["items"]]
            reqs = [encode_request("GET", f"/v1/workloads/{i}", b"", srv.port) for i in ids]
            get = _load(srv.port, reqs, warmup, duration)
            detail = {**_detail(get), "distinct_ids": len(ids)}
            out["get_rps"] = Metric(
                get["rps"], "req/s", bare["rps"], "bare_rps", _errors(get), detail
            )
    for metric in out.values():
        metric.detail["bare"] = {
            "runs_rps": [round(r["rps"], 1) for r in bare_runs],
            **_detail(bare),
        }
        metric.errors += sum(_errors(r) for r in bare_runs)
    return out
