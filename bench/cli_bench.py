"""``cli_call_ms``: one whole ``corral`` command, from exec to exit, against a local
server.

The commands people type most — ``corral submit -- true``, ``corral ls``, ``corral
show ID`` and ``corral kill ID`` — each run as a new process (the venv's ``corral``
script, as a shell runs it) against a ``corral serve --executor local``, interleaved
round by round with the bound, ``python_startup_ms``: the same interpreter running
``python -c pass``. Each command's median and p90 are reported; the metric is the
slowest command's median, and its ratio is python's median over it (the issue's bound:
at most 80 ms and at most 6 x python, so a ratio of at least 1/6).

corral's modules are byte-compiled first, as ``pip install`` does for an installed
tool: an editable checkout under ``PYTHONDONTWRITEBYTECODE`` would otherwise compile
every module it imports on every call, which no installed ``corral`` does.
"""

from __future__ import annotations

import compileall
import os
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import PYTHON, REPO, Metric, Server, fresh_dir, percentile, request

ROUNDS = {True: 20, False: 40}
WARM_UP = 3


def _corral() -> list[str]:
    script = Path(PYTHON).parent / "corral"
    return [str(script)] if script.exists() else [PYTHON, "-m", "corral.cli"]


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-500:]!r}")
    return elapsed


def run(quick: bool, only: set[str]) -> dict[str, Metric]:
    rounds = ROUNDS[quick]
    compileall.compile_dir(str(REPO / "src" / "corral"), quiet=1)
    with Server(fresh_dir("cli"), "local", env={"CORRAL_CPUS": "100000"}) as server:
        env = {
            **os.environ,
            "CORRAL_URL": server.url,
            "CORRAL_DATA_DIR": str(server.data_dir),
            "COLUMNS": "80",
        }
        env.pop("CORRAL_TOKEN", None)
        env.pop("CORRAL_TOKEN_FILE", None)
        victims = []
        for _ in range(rounds + WARM_UP):
            status, body = request(
                server.port,
                "POST",
                "/v1/workloads",
                {"command": ["sleep", "600"], "resources": {"cpus": 0}},
            )
            if status != 201:
                raise RuntimeError(f"submit answered {status}: {body}")
            victims.append(body["id"])
        corral = _corral()
        commands = {
            "python -c pass": lambda i: [PYTHON, "-c", "pass"],
            "submit -- true": lambda i: [*corral, "submit", "--", "true"],
            "ls": lambda i: [*corral, "ls"],
            "show ID": lambda i: [*corral, "show", victims[0]],
            "kill ID": lambda i: [*corral, "kill", victims[i]],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for i in range(WARM_UP + rounds):
            for name, argv in commands.items():
                ms = _timed(argv(i), env)
                if i >= WARM_UP:
                    times[name].append(ms)
    python = statistics.median(times.pop("python -c pass"))
    detail = {
        name: {"median_ms": round(statistics.median(v), 1), "p90_ms": round(percentile(v, 90), 1)}
        for name, v in times.items()
    }
    detail["python -c pass"] = {"median_ms": round(python, 1)}
    detail["runs"] = rounds
    worst = max(statistics.median(v) for v in times.values())
    return {
        "cli_call_ms": Metric(
            worst, "ms", python, "python_startup_ms", detail=detail, lower_is_better=True
        )
    }
