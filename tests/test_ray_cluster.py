"""``corral serve --executor ray`` end to end on a real multi-node Ray cluster on this
machine (the session's ``ray_cluster``: a head and a second node, 2 CPUs each).

What the workloads do is observed from the workloads themselves: each prints its
shim's command line (``/proc/$PPID/cmdline``), whose state path names the Ray node
whose agent started it, and times of its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.executors.local import kill_all
from tests.server import TERMINAL, Api, LiveServer, free_port, pid_gone, wait_until

WHERE = 'echo "node $(tr "\\0" " " < /proc/$PPID/cmdline)"; echo "pid $$"'
"""Shell that prints the shim's command line (naming the node) and the workload's pid."""


def node_of_log(text: str) -> str:
    """The Ray node id in the shim's state path (``<node dir>/<node id>/run/<id>``)."""
    match = re.search(r"/([0-9a-f]{56})/run/", text)
    assert match, text
    return match.group(1)


def pid_of_log(text: str) -> int:
    match = re.search(r"^pid (\d+)$", text, re.M)
    assert match, text
    return int(match.group(1))


@pytest.fixture
def serve(ray_cluster: Any, tmp_path: Path) -> Iterator[Any]:
    servers: list[LiveServer] = []

    def start(*args: str) -> Api:
        server = LiveServer(
            tmp_path / "data", "--executor", "ray", "--ray-address", ray_cluster.address,
            "--kill-grace", "2", *args, env={"CORRAL_RAY_NODE_DIR": str(tmp_path / "nodes")},
        )  # fmt: skip
        servers.append(server.start(timeout=60))
        return Api(server)

    start.servers = servers  # type: ignore[attr-defined]
    yield start
    try:
        for server in servers:
            try:
                if server.running():
                    Api(server).drain()  # the cluster is the session's: leave it empty
                    server.stop()  # gracefully: the last exits' groups are removed first
            finally:
                server.kill()
    finally:
        for run_dir in (tmp_path / "nodes").glob("*/*/run"):
            kill_all(run_dir)  # whatever a failed test left running


def test_workloads_land_on_both_nodes_and_never_more_than_fit(serve: Any, tmp_path: Path) -> None:
    """8 one-CPU workloads on two 2-CPU nodes: both nodes run some, and no node ever
    runs more than 2 at once (from the workloads' own clocks)."""
    api = serve()
    assert api.http.get("/v1/status").json()["executor"] == "ray"
    script = f'{WHERE}; echo "start $(date +%s.%N)"; sleep 0.6; echo "end $(date +%s.%N)"'
    ids = [api.submit(["sh", "-c", script], resources={"cpus": 1})["id"] for _ in range(8)]
    spans: dict[str, list[tuple[float, float]]] = {}
    for wid in ids:
        done = api.wait(wid)
        assert done["status"] == "completed", done
        text = api.logs(wid)
        node = node_of_log(text)
        assert done["node"] == node  # the API's node is the one that ran it
        start = float(re.search(r"^start (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
        end = float(re.search(r"^end (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
        spans.setdefault(node, []).append((start, end))
    assert len(spans) == 2, spans  # both nodes
    for node, runs in spans.items():
        for start, _ in runs:
            overlapping = sum(1 for s, e in runs if s <= start < e)
            assert overlapping <= 2, (node, runs)


def test_fits_no_node_is_refused_and_fragmented_capacity_waits_with_a_reason(
    serve: Any,
) -> None:
    api = serve()
    r = api.http.post("/v1/workloads", json={"command": ["true"], "resources": {"cpus": 3}})
    assert r.status_code == 422, r.text
    assert "more than any node has; the largest" in r.json()["detail"]
    assert "2 CPUs" in r.json()["detail"]
    # 1.5 CPUs on each node leaves 1 CPU free in all but 0.5 on each: a 1-CPU workload
    # fits corral's count, and Ray cannot place it: pending, saying so.
    big = [api.submit(["sleep", "60"], resources={"cpus": 1.5})["id"] for _ in range(2)]
    for wid in big:
        api.wait(wid, {"running"})
    assert len({api.get(w)["node"] for w in big}) == 2
    small = api.submit(["true"], resources={"cpus": 1})["id"]
    waiting = wait_until(lambda: (w := api.get(small))["reason"] and w, timeout=10)
    assert waiting["status"] == "pending"
    assert "Ray" in waiting["reason"], waiting["reason"]
    api.http.delete(f"/v1/workloads/{big[0]}")  # frees 1.5 CPUs on one node
    assert api.wait(small)["status"] == "completed"


@pytest.mark.parametrize("graceful", [True, False], ids=["removed", "raylet-killed"])
def test_a_removed_node_fails_its_workloads_as_lost_and_nothing_else(
    serve: Any, ray_cluster: Any, graceful: bool
) -> None:
    """A node removed cleanly is declared dead by Ray at once; one whose raylet is
    SIGKILLed after its health checks fail (~1.5 s with the session's tuning, the
    README's). Either way its workloads are lost within 2 s of that, and nothing
    else is touched."""
    api = serve()
    victim_node = ray_cluster.cluster.add_node(num_cpus=3)
    wait_until(lambda: api.http.get("/v1/status").json()["capacity"]["cpus"] >= 7, timeout=20)
    # 3 CPUs fit only the new node; the two 1-CPU ones then go elsewhere (it is full).
    victim = api.submit(["sh", "-c", f"{WHERE}; exec sleep 300"], resources={"cpus": 3})["id"]
    assert api.wait(victim, {"running"})
    others = [api.submit(["sh", "-c", f"{WHERE}; exec sleep 300"])["id"] for _ in range(2)]
    for wid in others:
        api.wait(wid, {"running"})
    wait_until(lambda: "pid " in api.logs(victim) and all("pid " in api.logs(w) for w in others))
    victim_pid = pid_of_log(api.logs(victim))
    victim_id = api.get(victim)["node"]
    assert all(api.get(w)["node"] != victim_id for w in others)
    removed = time.monotonic()  # remove_node returns once the node's processes are gone
    ray_cluster.cluster.remove_node(victim_node, allow_graceful=graceful)
    lost = api.wait(victim, TERMINAL, timeout=20)
    took = time.monotonic() - removed
    print(f"lost {took:.2f} s after remove_node(allow_graceful={graceful})")  # for the docs
    assert lost["status"] == "failed", lost
    assert re.fullmatch(rf"lost: Ray node {victim_id} \(.+\) died", lost["reason"]), lost
    assert took < (2.5 if graceful else 4), took  # Ray's detection (~1.3 s) + at most 2 s
    wait_until(lambda: pid_gone(victim_pid), timeout=5)  # no process outlives its node
    for wid in others:
        assert api.get(wid)["status"] == "running"  # nobody else touched
        assert not pid_gone(pid_of_log(api.logs(wid)))


def test_the_status_names_the_ray_executor(serve: Any) -> None:
    assert serve().http.get("/v1/status").json()["executor"] == "ray"  # it said "local"


def test_a_placement_no_node_can_hold_after_a_node_left_gives_its_resources_back(
    serve: Any, ray_cluster: Any
) -> None:
    api = serve()
    big = ray_cluster.cluster.add_node(num_cpus=3)
    try:
        wait_until(lambda: api.http.get("/v1/status").json()["capacity"]["cpus"] >= 7, 20)
        first = api.submit(["sh", "-c", "echo up; exec sleep 300"], resources={"cpus": 3})["id"]
        wait_until(lambda: "up" in api.logs(first), timeout=30)  # runs there (its agent is up)
        second = api.submit(["sleep", "300"], resources={"cpus": 3})["id"]
        wait_until(lambda: "Ray" in (api.get(second)["reason"] or ""), timeout=10)
    finally:
        ray_cluster.cluster.remove_node(big, allow_graceful=True)
    assert api.wait(first, TERMINAL)["status"] == "failed"  # lost with its node
    # 4 CPUs left, all free: two 1-CPU workloads run at once, whatever waits for 3.
    small = [api.submit(["sleep", "300"], resources={"cpus": 1})["id"] for _ in range(2)]
    for wid in small:
        api.wait(wid, {"running"}, timeout=10)
    assert api.get(second)["status"] == "pending"


def test_gpus_in_use_stay_counted_when_another_gpu_node_leaves(
    serve: Any, ray_cluster: Any
) -> None:
    api = serve()
    nodes = [ray_cluster.cluster.add_node(num_cpus=1, num_gpus=2) for _ in range(2)]
    removed = set()
    try:
        wait_until(lambda: api.http.get("/v1/status").json()["capacity"]["gpus"] == 4, 20)
        up = ["sh", "-c", "echo up; exec sleep 300"]
        held = [api.submit(up, resources={"cpus": 1, "gpus": 2})["id"] for _ in "ab"]
        for wid in held:  # their processes run (a new node's agent may take a while)
            wait_until(lambda w=wid: "up" in api.logs(w), timeout=30)
        on = [api.get(wid)["node"] for wid in held]
        assert sorted(on) == sorted(n.node_id for n in nodes)  # one on each
        leaving = next(n for n in nodes if n.node_id == on[0])
        ray_cluster.cluster.remove_node(leaving, allow_graceful=True)
        removed.add(leaving.node_id)
        api.wait(held[0], TERMINAL)
        wait_until(lambda: api.http.get("/v1/status").json()["capacity"]["gpus"] == 2, 10)
        status = api.http.get("/v1/status").json()
        assert (status["used"]["gpus"], status["free"]["gpus"]) == (2, 0), status
    finally:
        api.kill_all()
        for node in nodes:
            if node.node_id not in removed:
                ray_cluster.cluster.remove_node(node, allow_graceful=True)


def test_a_restarted_server_readopts_its_workloads_and_runs_nothing_twice(
    serve: Any, tmp_path: Path
) -> None:
    api = serve()
    ran = tmp_path / "ran"
    ends = api.submit(["sh", "-c", f"echo $CORRAL_WORKLOAD_ID >> {ran}; sleep 2; exit 3"])["id"]
    stays = api.submit(["sh", "-c", f"echo $CORRAL_WORKLOAD_ID >> {ran}; exec sleep 300"])["id"]
    queued = api.submit(
        ["sh", "-c", f"echo $CORRAL_WORKLOAD_ID >> {ran}"], depends_on=[ends],
        dependency_type="afterany",
    )["id"]  # fmt: skip
    for wid in (ends, stays):
        api.wait(wid, {"running"})
    wait_until(lambda: ran.exists() and len(ran.read_text().split()) == 2)
    serve.servers[0].kill(signal.SIGKILL)
    again = serve()
    assert again.wait(ends)["exit_code"] == 3  # its true outcome, seen after the restart
    assert again.get(stays)["status"] == "running"
    assert again.http.delete(f"/v1/workloads/{stays}").status_code == 200
    assert again.wait(stays)["status"] == "killed"
    assert again.wait(queued)["status"] == "completed"
    assert sorted(ran.read_text().split()) == sorted([ends, stays, queued])


def test_ray_is_not_imported_by_a_local_server(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data", "--executor", "local") as server:
        pid = server.proc.pid if server.proc else 0
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "_raylet" not in maps  # Ray's core library, loaded by `import ray`


def test_a_head_corral_starts_outlives_the_server_which_readopts_on_restart(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """Without --ray-address the server starts a Ray head of its own (loopback only,
    token auth); stopping the server leaves the head and the workloads running, and
    the next server joins the same head and adopts them."""
    from corral.executors.ray_head import head_pids, stop_head

    data = tmp_path / "data"
    env = {"CORRAL_RAY_NODE_DIR": str(tmp_path / "nodes")}
    # Not the session cluster's: a head of its own (its token, in data/ray/token).
    env |= {"RAY_AUTH_TOKEN": "", "RAY_AUTH_MODE": ""}
    args = ("--executor", "ray", "--cpus", "2", "--kill-grace", "1")
    first = LiveServer(data, *args, env=env).start(timeout=90)
    try:
        api = Api(first)
        assert api.http.get("/v1/status").json()["capacity"]["cpus"] == 2
        script = f"{WHERE}; sleep 3; exit 7"
        wid = api.submit(["sh", "-c", script])["id"]
        api.wait(wid, {"running"})
        wait_until(lambda: "pid " in api.logs(wid))
        pid = pid_of_log(api.logs(wid))
        pids = head_pids(data)
        assert pids
        first.stop()  # SIGTERM: a clean stop
        assert not pid_gone(pid)  # the workload runs on
        assert all(not pid_gone(p) for p in pids if Path(f"/proc/{p}").exists())
        second = LiveServer(data, *args, env=env, port=first.port).start(timeout=90)
        try:
            again = Api(second)
            done = again.wait(wid, timeout=30)
            assert (done["status"], done["exit_code"]) == ("failed", 7)  # its true outcome
            assert again.logs(wid).count("\npid ") == 1  # the whole log, of one run
        finally:
            second.kill()
    finally:
        first.kill()
        stop_head(data)
        for run_dir in (tmp_path / "nodes").glob("*/*/run"):
            kill_all(run_dir)
    assert not [p for p in head_pids(data) if not pid_gone(p)]


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("127.0.0.1:1", "cannot reach the Ray cluster at 127.0.0.1:1"),
        ("ray://127.0.0.1:10001", "not as a Ray Client (ray://)"),
        ("nonsense", "invalid --ray-address 'nonsense'"),
    ],
)
def test_a_ray_address_that_cannot_serve_is_one_clear_error(
    tmp_path: Path, address: str, says: str
) -> None:
    cmd = [sys.executable, "-m", "corral.cli", "serve", "--data-dir", str(tmp_path)]
    cmd += ["--port", str(free_port()), "--executor", "ray", "--ray-address", address]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_kill_and_timeout_reach_the_remote_process_group(serve: Any, tmp_path: Path) -> None:
    """Through the API on Ray: a timeout and a kill each stop the whole group (a child
    that ignores SIGTERM included) with SIGKILL after the grace (2 s here), and the
    processes are gone within 1 s of the grace ending."""
    api = serve()
    child = 'trap "" TERM; echo child $$; exec sleep 300'
    stubborn = f"trap '' TERM; sh -c '{child}' & echo pid $$; wait"
    timed = api.submit(["sh", "-c", stubborn], timeout_seconds=1)["id"]
    killed = api.submit(["sh", "-c", stubborn])["id"]
    for wid in (timed, killed):
        api.wait(wid, {"running"})
    wait_until(lambda: all("child " in api.logs(w) for w in (timed, killed)))
    pids = {
        w: [pid_of_log(text), int(re.findall(r"^child (\d+)$", text, re.M)[0])]
        for w in (timed, killed)
        for text in [api.logs(w)]
    }
    asked = time.monotonic()
    assert api.http.delete(f"/v1/workloads/{killed}").status_code == 200
    assert api.get(killed)["status"] == "killed"  # at once; the process follows
    wait_until(lambda: all(pid_gone(p) for p in pids[killed]), timeout=2 + 1 + 0.5)
    assert time.monotonic() - asked > 1.5  # they ignored SIGTERM: only SIGKILL ended them
    done = api.wait(timed, timeout=10)
    assert (done["status"], done["reason"]) == ("failed", "timed out after 1 s")
    assert all(pid_gone(p) for p in pids[timed])


def test_a_cluster_that_never_answers_is_given_up_in_one_clear_line(tmp_path: Path) -> None:
    """A port that accepts TCP but speaks no Ray: Ray itself would retry for minutes."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as mute:
        address = f"127.0.0.1:{mute.getsockname()[1]}"
        cmd = [sys.executable, "-m", "corral.cli", "serve", "--data-dir", str(tmp_path)]
        cmd += ["--port", str(free_port()), "--executor", "ray", "--ray-address", address]
        env = {**os.environ, "CORRAL_RAY_CONNECT_TIMEOUT_SECONDS": "3"}
        started = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1, done
    assert time.monotonic() - started < 30
    errors = [line for line in done.stderr.splitlines() if line.startswith("corral:")]
    assert errors == [
        f"corral: cannot join the Ray cluster at {address}: no answer within 3 s; is its GCS"
        " at that address, and does it use token auth (then RAY_AUTH_TOKEN or"
        " RAY_AUTH_TOKEN_PATH must be set for corral serve)?"
    ], done.stderr
    assert "Traceback" not in done.stderr


def test_joining_a_cluster_that_refuses_the_server_is_one_clear_error(
    ray_cluster: Any, tmp_path: Path
) -> None:
    cmd = [sys.executable, "-m", "corral.cli", "serve", "--data-dir", str(tmp_path)]
    cmd += ["--port", str(free_port()), "--executor", "ray", "--ray-address", ray_cluster.address]
    env = {**os.environ, "RAY_AUTH_TOKEN": "", "RAY_AUTH_MODE": ""}
    env["RAY_NUM_REDIS_GET_RETRIES"] = "2"  # Ray's tries: 2 s, not 20
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    # Ray's own C++ lines ("InvalidAuthToken …") come first; corral's verdict is one line.
    errors = [line for line in done.stderr.splitlines() if line.startswith("corral:")]
    assert len(errors) == 1 and "cannot join the Ray cluster" in errors[0], done.stderr
    assert "RAY_AUTH_TOKEN" in errors[0]


def test_a_full_disk_on_the_server_still_reports_the_exit(
    ray_cluster: Any, small_fs: Path, tmp_path: Path
) -> None:
    """The server's log copy cannot grow (its data dir on a 32 MiB tmpfs, the output
    60 MB): the copy misses the rest, said once in the server's log, and the exit is
    still reported (it was never reported, and the server spun re-asking the chunk)."""
    fs = small_fs
    try:
        server = LiveServer(
            fs / "data", "--executor", "ray", "--ray-address", ray_cluster.address,
            env={"CORRAL_RAY_NODE_DIR": str(tmp_path / "nodes")}, log=tmp_path / "server.log",
        ).start(timeout=60)  # fmt: skip
        try:
            api = Api(server)
            wid = api.submit(["head", "-c", "60000000", "/dev/zero"])["id"]
            done = api.wait(wid, timeout=30)
            assert done["status"] == "completed", done
            said = (tmp_path / "server.log").read_text()
            assert said.count(f"cannot write the log of {wid}") == 1, said[-2000:]
        finally:
            server.kill()
    finally:
        for run_dir in (tmp_path / "nodes").glob("*/*/run"):
            kill_all(run_dir)


def test_a_workload_without_a_cwd_starts_in_its_home(serve: Any) -> None:
    """Not in the agent's directory (Ray's, or corral's 0700 one)."""
    api = serve()
    wid = api.submit(["pwd"])["id"]
    assert api.wait(wid)["status"] == "completed"
    assert api.logs(wid).strip() == os.environ.get("HOME", "/")


def test_the_executor_and_the_address_come_from_the_environment_too(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "corral.cli", "serve", "--data-dir", str(tmp_path)]
    cmd += ["--port", str(free_port())]
    env = {**os.environ, "CORRAL_EXECUTOR": "ray", "CORRAL_RAY_ADDRESS": "127.0.0.1:1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1, done
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in done.stderr, done.stderr
