"""corral against task-spooler (``tsp``), the quickest local queue there is, on the
same workloads in one run: ``python -m bench.peers [--quick] [--rounds N]``.

task-spooler (C; Debian's ``task-spooler``; no database, no API, no persistence) is
driven through its CLI, with a socket of its own (``TS_SOCKET``) and 2 slots.
corral runs ``corral serve --executor local --cpus 2`` (keys on, as in production)
on a fresh data dir per workload, and is driven through its HTTP API by a plain
client: ``urllib.request``, a new connection per request, as a user's script would
(and, for reference, W1 through ``corral submit``, a process per workload). The
workloads (issue 13):

- **W1**: N x ``true`` submitted one at a time by one client (N = 300, and 3,000):
  submits/s (N over the time to submit them all) and completed/s (N over first
  submit to last done).
- **W2**: submit → start of ``sh -c 'date +%s%N > FILE'``, one at a time: the p50 of
  the time from before the submit call to the time the process wrote.
- **W3**: cancel → process gone, of a running ``sleep 600``: the p50 from before the
  cancel call (``DELETE``; ``tsp -k``) to the process gone (a zombie counts as gone).
- **W4**: 20 x ``sleep 1`` on 2 slots (ideal 10 s): the makespan, first submit to
  last done.

Each figure is the median of ``--rounds`` rounds (3 by default), with the spread;
ratios are corral over tsp (above 1 is corral ahead for rates, below 1 for times).
task-spooler is installed with apt-get when absent (as root); nothing else needs it.
Speed is never asserted; the table says which rows corral wins.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    Server,
    fresh_dir,
    pid_gone,
    read_first_int,
    remove_fresh_dirs,
    wait_until,
)

SLOTS = 2
W4_JOBS = 20


# --- task-spooler -------------------------------------------------------------------


def ensure_tsp() -> str:
    """The path of ``tsp``, installed with apt-get when absent (as root)."""
    found = shutil.which("tsp")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "task-spooler"], check=True, env=env)
        found = shutil.which("tsp")
    if not found:
        raise SystemExit("task-spooler is not installed: apt-get install task-spooler")
    return found


class Tsp:
    """One task-spooler server of its own (a socket in a temporary directory)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = fresh_dir("peers-tsp")
        # Its jobs' output files (ts-out.*) go here too, not to /tmp itself (10,000 a
        # run were left there), beside corral's data dirs: both create their files on
        # the same ground, and they are removed with them at the end of the run.
        self.env = {
            **os.environ,
            "TS_SOCKET": str(self.dir / "socket"),
            "TS_MAXFINISHED": "100000",
            "TMPDIR": str(self.dir),
        }
        self.run("-S", str(SLOTS))

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [self.binary, *args], env=self.env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    def submit(self, *command: str) -> int:
        return int(self.run(*command))

    def wait(self, job: int) -> None:
        subprocess.run([self.binary, "-w", str(job)], env=self.env, capture_output=True)

    def pid(self, job: int) -> int | None:
        done = subprocess.run(
            [self.binary, "-p", str(job)], env=self.env, capture_output=True, text=True
        )
        text = done.stdout.strip()
        return int(text) if done.returncode == 0 and text.isdigit() and int(text) > 0 else None

    def close(self) -> None:
        """Stop its server; its directory goes at the end of the run (``main``): files
        removed now would slow every file created near them in the next minutes,
        corral's or task-spooler's (docs/benchmarks.md, issue 13)."""
        subprocess.run([self.binary, "-K"], env=self.env, capture_output=True)


# --- corral through a plain client ------------------------------------------------------


class PlainClient:
    """A plain urllib client, a new connection per request, as a user's script would
    be (``key``: the API key, if the server wants one). ``bench/loopcost.py`` uses it
    too."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url
        self.key = key

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self.key:
            req.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as answer:
            return json.loads(answer.read())

    def ended(self) -> int:
        """The workloads that have ended (``GET /v1/status``)."""
        counts = self.call("GET", "/v1/status")["counts"]
        return int(counts["completed"] + counts["failed"] + counts["killed"])


class Corral(PlainClient):
    """A fresh ``corral serve`` and a ``PlainClient`` of it."""

    def __init__(self, name: str) -> None:
        self.server = Server(fresh_dir(name), "local", env={"CORRAL_CPUS": str(SLOTS)})
        self.server.start()
        super().__init__(self.server.url, (self.server.data_dir / "token").read_text().strip())

    def submit(self, *command: str) -> str:
        return str(self.call("POST", "/v1/workloads", {"command": list(command)})["id"])

    def pid(self, workload_id: str) -> int | None:
        return read_first_int(self.server.data_dir / "run" / f"{workload_id}.pid")

    def close(self) -> None:
        self.server.stop()


# --- the workloads ------------------------------------------------------------------------


def w1_tsp(tsp: Tsp, n: int) -> tuple[float, float]:
    start = time.perf_counter()
    jobs = [tsp.submit("true") for _ in range(n)]
    submitted = time.perf_counter()
    for job in jobs:
        tsp.wait(job)
    done = time.perf_counter()
    return n / (submitted - start), n / (done - start)


def w1_corral(corral: Corral, n: int, submit: Callable[[], object]) -> tuple[float, float]:
    start = time.perf_counter()
    for _ in range(n):
        submit()
    submitted = time.perf_counter()
    wait_until(lambda: corral.ended() >= n, timeout=600, interval=0.02)
    done = time.perf_counter()
    return n / (submitted - start), n / (done - start)


def _written(path: Path) -> bool:
    return path.exists() and bool(path.read_text().strip())


def w2(submit: Callable[[str], object], rounds: int, scratch: Path, name: str) -> float:
    """The p50, in ms, from before a submit to the time its process wrote."""
    delays = []
    for i in range(rounds):
        path = scratch / f"{name}-started-{i}"
        before = time.time_ns()
        submit(f"date +%s%N > {path}")
        wait_until(functools.partial(_written, path), timeout=60, interval=0.001)
        delays.append((int(path.read_text()) - before) / 1e6)
    return statistics.median(delays)


def w3(
    submit: Callable[[], object],
    pid_of: Callable[[object], int | None],
    cancel: Callable[[object], object],
    rounds: int,
) -> float:
    """The p50, in ms, from before a cancel to the process gone."""
    delays = []
    for _ in range(rounds):
        handle = submit()
        pid = wait_until(functools.partial(pid_of, handle), timeout=60, interval=0.005)
        time.sleep(0.05)  # running, not starting
        before = time.perf_counter()
        cancel(handle)
        wait_until(functools.partial(pid_gone, pid), timeout=60, interval=0.0005)
        delays.append((time.perf_counter() - before) * 1000)
    return statistics.median(delays)


def w4_tsp(tsp: Tsp) -> float:
    start = time.perf_counter()
    jobs = [tsp.submit("sleep", "1") for _ in range(W4_JOBS)]
    for job in jobs:
        tsp.wait(job)
    return time.perf_counter() - start


def w4_corral(corral: Corral) -> float:
    start = time.perf_counter()
    for _ in range(W4_JOBS):
        corral.submit("sleep", "1")
    wait_until(lambda: corral.ended() >= W4_JOBS, timeout=120, interval=0.01)
    return time.perf_counter() - start


# --- one round, all rounds ----------------------------------------------------------------


def one_round(binary: str, quick: bool) -> dict[str, float]:
    """Every figure of one round, tsp's and corral's, each on a fresh queue."""
    small, big = (100, 300) if quick else (300, 3000)
    w2_rounds, w3_rounds = (10, 10) if quick else (30, 20)
    got: dict[str, float] = {}
    scratch = fresh_dir("peers-scratch")
    corral_cli = [PYTHON, "-m", "corral.cli"]
    for n, label in ((small, "w1"), (big, "w1_big")):
        tsp = Tsp(binary)
        try:
            got[f"{label}_submit_tsp"], got[f"{label}_done_tsp"] = w1_tsp(tsp, n)
        finally:
            tsp.close()
        corral = Corral("peers-w1")
        try:
            rates = w1_corral(corral, n, functools.partial(corral.submit, "true"))
            got[f"{label}_submit_corral"], got[f"{label}_done_corral"] = rates
        finally:
            corral.close()
    corral = Corral("peers-cli")  # reference: a process per submit
    try:
        env = {**os.environ, "CORRAL_URL": corral.server.url, "CORRAL_TOKEN": corral.key or ""}
        argv = [*corral_cli, "submit", "-q", "--", "true"]
        cli_n = small // 3

        def cli_submit() -> None:
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)

        got["w1_submit_cli"], got["w1_done_cli"] = w1_corral(corral, cli_n, cli_submit)
        got["w1_cli_n"] = cli_n
    finally:
        corral.close()
    tsp = Tsp(binary)
    corral = Corral("peers-w234")
    try:
        got["w2_tsp"] = w2(lambda cmd: tsp.submit("sh", "-c", cmd), w2_rounds, scratch, "tsp")
        got["w2_corral"] = w2(
            lambda cmd: corral.submit("sh", "-c", cmd), w2_rounds, scratch, "corral"
        )
        got["w3_tsp"] = w3(
            lambda: tsp.submit("sleep", "600"),
            lambda job: tsp.pid(int(str(job))),
            lambda job: tsp.run("-k", str(job)),
            w3_rounds,
        )
        got["w3_corral"] = w3(
            lambda: corral.submit("sleep", "600"),
            lambda wid: corral.pid(str(wid)),
            lambda wid: corral.call("DELETE", f"/v1/workloads/{wid}"),
            w3_rounds,
        )
        got["w4_tsp"] = w4_tsp(tsp)
        corral.close()
        corral = Corral("peers-w4")
        got["w4_corral"] = w4_corral(corral)
    finally:
        tsp.close()
        corral.close()
    return got


ROWS = [  # (label, key, unit, higher is better)
    ("W1 submits/s (N=300)", "w1_submit", "/s", True),
    ("W1 completed/s (N=300)", "w1_done", "/s", True),
    ("W1 submits/s (N=3,000)", "w1_big_submit", "/s", True),
    ("W1 completed/s (N=3,000)", "w1_big_done", "/s", True),
    ("W2 submit -> start p50", "w2", "ms", False),
    ("W3 cancel -> gone p50", "w3", "ms", False),
    ("W4 20 x sleep 1, 2 slots", "w4", "s", False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median; default 3)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    binary = ensure_tsp()
    try:
        rounds = [one_round(binary, args.quick) for _ in range(args.rounds)]
    finally:
        remove_fresh_dirs()  # only now: see Tsp.close
    keys = rounds[0].keys()
    median = {k: statistics.median(r[k] for r in rounds) for k in keys}
    spread = {k: (min(r[k] for r in rounds), max(r[k] for r in rounds)) for k in keys}
    print(f"corral vs task-spooler, {args.rounds} rounds ({'quick' if args.quick else 'full'})")
    print(f"{'workload':28} {'corral':>16} {'tsp':>16} {'ratio':>6}  corral wins")
    for label, key, unit, higher in ROWS:
        if args.quick:
            label = label.replace("N=300", "N=100").replace("N=3,000", "N=300")
        ours, theirs = median[f"{key}_corral"], median[f"{key}_tsp"]
        ratio = ours / theirs
        wins = ours > theirs if higher else ours < theirs
        if key == "w4":  # the target: within 1 % of ideal
            wins = ours <= W4_JOBS / SLOTS * 1.01
        lo, hi = spread[f"{key}_corral"]
        print(
            f"{label:28} {ours:9.1f} {unit:>2} ({lo:.1f}-{hi:.1f}) {theirs:9.1f} {unit:>2}"
            f" {ratio:6.2f}  {'yes' if wins else 'no'}"
        )
    ideal = W4_JOBS / SLOTS
    print(f"W4 corral vs ideal {ideal:g} s: +{(median['w4_corral'] / ideal - 1) * 100:.1f} %")
    print(
        f"reference, W1 through `corral submit` (a process each, N={median['w1_cli_n']:g}):"
        f" {median['w1_submit_cli']:.1f} submits/s, {median['w1_done_cli']:.1f} completed/s"
    )
    if args.out:
        args.out.write_text(json.dumps({"median": median, "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
