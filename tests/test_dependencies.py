"""Dependencies and arrays end to end: a real ``corral serve`` runs real processes,
and each test reads what happened from the workloads' own records (lines they append
to one file: the file's order is the order in which they did things)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.executors.local import kill_all
from tests.server import Api as ServerApi
from tests.server import LiveServer, wait_until


class Api(ServerApi):
    def reason_becomes(self, wid: str, reason: str) -> dict[str, Any]:
        return wait_until(lambda: (w := self.get(wid))["reason"] == reason and w, timeout=20)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve()`` starts a server on ``tmp_path/data`` (16 CPUs, so that only the
    rules under test hold workloads back); ``serve(port=…)`` restarts on the same."""
    servers: list[LiveServer] = []

    def start(port: int | None = None) -> Api:
        env = {"CORRAL_CPUS": "16", "CORRAL_KILL_GRACE_SECONDS": "1"}
        server = LiveServer(tmp_path / "data", "--executor", "local", env=env, port=port)
        servers.append(server.start())
        return Api(server)

    yield start
    for server in servers:
        server.kill()
    kill_all(tmp_path / "data" / "run")  # whatever a failed test left running


def step(record: Path, name: str, *, gate: Path | None = None, code: int = 0) -> list[str]:
    """A workload that appends ``start NAME`` to ``record``, waits for ``gate`` to
    exist (if any), appends ``end NAME`` and exits with ``code``."""
    wait = f"while [ ! -e {gate} ]; do sleep 0.02; done; " if gate else ""
    return [
        "sh",
        "-c",
        f'echo "start {name}" >> {record}; {wait}echo "end {name}" >> {record}; exit {code}',
    ]


def lines(record: Path) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


def test_a_chain_runs_in_order(serve: Any, tmp_path: Path) -> None:
    """A, then B after A, then C after B (single creates naming ids): B and C wait,
    saying for what, and each starts only once the one before has ended."""
    api = serve()
    record, gate = tmp_path / "record", tmp_path / "gate"
    a = api.submit(step(record, "A", gate=gate))
    b = api.submit(step(record, "B"), depends_on=[a["id"]])
    c = api.submit(step(record, "C"), depends_on=[b["id"]])
    api.wait(a["id"], {"running"})
    assert api.reason_becomes(b["id"], f"waiting for {a['id']} to complete")["status"] == "pending"
    assert api.reason_becomes(c["id"], f"waiting for {b['id']} to complete")["status"] == "pending"
    # running is stored before the process starts: A writes its line a moment later
    wait_until(lambda: lines(record) == ["start A"])
    gate.touch()
    done = [api.wait(w["id"]) for w in (a, b, c)]
    assert [w["status"] for w in done] == ["completed"] * 3
    assert lines(record) == ["start A", "end A", "start B", "end B", "start C", "end C"]
    assert done[0]["finished_at"] <= done[1]["started_at"] <= done[1]["finished_at"]
    assert done[1]["finished_at"] <= done[2]["started_at"]
    assert done[2]["depends_on"] == [b["id"]] and done[2]["dependency_type"] == "afterok"


def test_fan_in_waits_for_every_dependency(serve: Any, tmp_path: Path) -> None:
    api = serve()
    record, gate_a, gate_b = tmp_path / "record", tmp_path / "a", tmp_path / "b"
    a, b, c = api.batch(
        [
            {"command": step(record, "A", gate=gate_a)},
            {"command": step(record, "B", gate=gate_b)},
            {"command": step(record, "C"), "depends_on": [0, 1]},
        ]
    )
    api.wait(a["id"], {"running"})
    api.wait(b["id"], {"running"})
    api.reason_becomes(c["id"], f"waiting for {a['id']}, {b['id']} to complete")
    gate_a.touch()
    api.wait(a["id"])
    assert api.reason_becomes(c["id"], f"waiting for {b['id']} to complete")["status"] == "pending"
    gate_b.touch()
    assert api.wait(c["id"])["status"] == "completed"
    order = lines(record)
    assert order.index("start C") > max(order.index("end A"), order.index("end B"))


def test_a_failure_kills_afterok_dependants_down_the_chain_and_runs_afterany_ones(
    serve: Any, tmp_path: Path
) -> None:
    """A fails. B (afterok A) is killed, naming A; C (afterok B) is killed in turn,
    naming B; D (afterany A) and E (afterany B) run. Nothing killed ever started."""
    api = serve()
    record, gate = tmp_path / "record", tmp_path / "gate"
    a, b, c, d, e = api.batch(
        [
            {"command": step(record, "A", gate=gate, code=3)},
            {"command": step(record, "B"), "depends_on": [0]},
            {"command": step(record, "C"), "depends_on": [1]},
            {"command": step(record, "D"), "depends_on": [0], "dependency_type": "afterany"},
            {"command": step(record, "E"), "depends_on": [1], "dependency_type": "afterany"},
        ]
    )
    api.wait(a["id"], {"running"})
    api.reason_becomes(d["id"], f"waiting for {a['id']} to end")
    gate.touch()
    assert api.wait(a["id"])["status"] == "failed"
    killed_b, killed_c = api.wait(b["id"]), api.wait(c["id"])
    assert (killed_b["status"], killed_b["reason"]) == ("killed", f"dependency {a['id']} failed")
    assert (killed_c["status"], killed_c["reason"]) == (
        "killed",
        f"dependency {b['id']} was killed",
    )
    transitions = [(ev["from_status"], ev["to_status"], ev["actor"]) for ev in api.events(c["id"])]
    assert transitions[1:] == [("pending", "killed", "scheduler")]
    assert api.wait(d["id"])["status"] == "completed"
    assert api.wait(e["id"])["status"] == "completed"
    order = lines(record)
    assert "start B" not in order and "start C" not in order
    assert order.index("start D") > order.index("end A")


def test_kills_through_the_api_reach_the_dependants(serve: Any, tmp_path: Path) -> None:
    """A blocked workload killed by request kills its afterok dependant; an afterany
    dependant of a running workload killed by request starts once its process is gone."""
    api = serve()
    record, gate = tmp_path / "record", tmp_path / "gate"
    pid = tmp_path / "r.pid"
    stubborn = (
        f'echo $$ > {pid}; trap "" TERM; echo "start R" >> {record}; while :; do sleep 0.05; done'
    )
    # Z says so if it starts while R's process still lives.
    check = f'kill -0 $(cat {pid}) 2>/dev/null && echo "R alive" >> {record}; exec "$@"'
    r, blocked, after_blocked, after_r = api.batch(
        [
            {"command": ["sh", "-c", stubborn]},
            {"command": step(record, "X", gate=gate), "depends_on": [0]},
            {"command": step(record, "Y"), "depends_on": [1]},
            {
                "command": ["sh", "-c", check, "sh", *step(record, "Z")],
                "depends_on": [0],
                "dependency_type": "afterany",
            },
        ]
    )
    api.wait(r["id"], {"running"})
    wait_until(lambda: lines(record) == ["start R"])
    assert api.http.delete(f"/v1/workloads/{blocked['id']}").status_code == 200
    y = api.wait(after_blocked["id"])
    assert (y["status"], y["reason"]) == ("killed", f"dependency {blocked['id']} was killed")
    # R ignores SIGTERM: it lives out its grace period (1 s) while Z waits.
    assert api.http.delete(f"/v1/workloads/{r['id']}").status_code == 200
    assert api.wait(after_r["id"])["status"] == "completed"
    assert lines(record) == ["start R", "start Z", "end Z"]


def test_cycles_and_unknown_dependencies_are_refused(serve: Any) -> None:
    api = serve()
    cycle = {
        "items": [
            {"command": ["true"], "depends_on": [1]},
            {"command": ["true"], "depends_on": [0]},
        ]
    }
    r = api.http.post("/v1/workloads/batch", json=cycle)
    assert r.status_code == 422 and "cycle" in r.json()["detail"]
    unknown = {"command": ["true"], "depends_on": ["01m8n0ne000000000000000000"]}
    r = api.http.post("/v1/workloads", json=unknown)
    assert r.status_code == 422 and r.json()["detail"].startswith("depends_on[0]: no workload")
    too_big = {"items": [{"command": ["true"]}, {"command": ["true"], "resources": {"cpus": 64}}]}
    r = api.http.post("/v1/workloads/batch", json=too_big)
    assert r.status_code == 422 and r.json()["detail"].startswith("items[1].resources: ")
    assert api.http.get("/v1/workloads").json()["items"] == []


def test_a_restart_in_the_middle_of_a_chain_resumes_it(serve: Any, tmp_path: Path) -> None:
    """A→B→C. The server is SIGKILLed while A runs, and A ends while no server runs;
    the next server records A's end and starts B. That one is stopped (SIGTERM)
    while B runs, and B ends meanwhile; the third starts C."""
    api = serve()
    record, gate_a, gate_b = tmp_path / "record", tmp_path / "a", tmp_path / "b"
    a, b, c = api.batch(
        [
            {"command": step(record, "A", gate=gate_a)},
            {"command": step(record, "B", gate=gate_b), "depends_on": [0]},
            {"command": step(record, "C"), "depends_on": [1]},
        ]
    )
    api.wait(a["id"], {"running"})
    api.reason_becomes(b["id"], f"waiting for {a['id']} to complete")
    # running is stored before the process starts; killed before it, A would never
    # run while no server does (the next one starts it): wait for its line.
    wait_until(lambda: "start A" in lines(record))
    port = api.server.port
    api.server.kill(signal.SIGKILL)
    gate_a.touch()
    wait_until(lambda: "end A" in lines(record))
    api = serve(port=port)
    assert api.wait(a["id"])["status"] == "completed"
    api.wait(b["id"], {"running"})
    assert api.get(c["id"])["reason"] == f"waiting for {b['id']} to complete"
    wait_until(lambda: "start B" in lines(record))
    api.server.stop()  # SIGTERM: workloads keep running
    gate_b.touch()
    wait_until(lambda: "end B" in lines(record))
    api = serve(port=port)
    assert [api.wait(w["id"])["status"] for w in (a, b, c)] == ["completed"] * 3
    assert lines(record) == ["start A", "end A", "start B", "end B", "start C", "end C"]


def test_an_array_runs_at_most_max_running_at_once(serve: Any, tmp_path: Path) -> None:
    """8 tasks, at most 2 at once: the others wait, saying so, without holding back a
    workload outside the batch; each task sees its own CORRAL_ARRAY_INDEX."""
    api = serve()
    record = tmp_path / "record"
    script = (
        f'echo "start $CORRAL_ARRAY_INDEX" >> {record};'
        f" while [ ! -e {tmp_path}/gate-$CORRAL_ARRAY_INDEX ]; do sleep 0.02; done;"
        f' sleep 0.1; echo "end $CORRAL_ARRAY_INDEX" >> {record}'
    )
    tasks = api.batch(
        [{"command": ["sh", "-c", script], "array_index": i} for i in range(8)], max_running=2
    )
    assert [t["array_index"] for t in tasks] == list(range(8))
    wait_until(lambda: len(lines(record)) == 2)
    for task in tasks[2:]:
        waiting = api.reason_becomes(
            task["id"], "waiting: 2 of its batch already running (limit 2)"
        )
        assert waiting["status"] == "pending"
    outside = api.submit(["true"])  # queued behind the tasks; the pass skips them
    assert api.wait(outside["id"])["status"] == "completed"
    assert len(lines(record)) == 2
    for i in range(8):
        (tmp_path / f"gate-{i}").touch()
    assert [api.wait(t["id"])["status"] for t in tasks] == ["completed"] * 8
    running, most = 0, 0
    for line in lines(record):
        running += 1 if line.startswith("start") else -1
        most = max(most, running)
    assert most == 2
    started = sorted(int(line.split()[1]) for line in lines(record) if line.startswith("start"))
    assert started == list(range(8))


def test_the_batch_limit_survives_a_restart(serve: Any, tmp_path: Path) -> None:
    """After a restart the running tasks are counted from the store: the limit holds."""
    api = serve()
    record, gate = tmp_path / "record", tmp_path / "gate"
    tasks = api.batch(
        [{"command": step(record, str(i), gate=gate), "array_index": i} for i in range(4)],
        max_running=2,
    )
    wait_until(lambda: len(lines(record)) == 2)
    port = api.server.port
    api.server.kill(signal.SIGKILL)
    api = serve(port=port)
    outside = api.submit(["true"])  # a pass after the restart, which skips the tasks
    assert api.wait(outside["id"])["status"] == "completed"
    assert len(lines(record)) == 2
    statuses = sorted(api.get(t["id"])["status"] for t in tasks)
    assert statuses == ["pending", "pending", "running", "running"]
    gate.touch()
    assert [api.wait(t["id"])["status"] for t in tasks] == ["completed"] * 4
    running, most = 0, 0
    for line in lines(record):
        running += 1 if line.startswith("start") else -1
        most = max(most, running)
    assert most == 2


@pytest.mark.xfail(
    strict=True,
    reason="review9: after a restart, a killed workload still in its grace period is a"
    " stray of the executor, not in the scheduler's _allocated: afterany sees it ended",
)
def test_afterany_waits_for_a_killed_dependency_still_stopping_across_a_restart(
    tmp_path: Path,
) -> None:
    """R ignores SIGTERM and is killed by request (grace 10 s); the server is
    SIGKILLed and restarted within the grace period. Z (afterany R) must not start
    while R's process still lives."""
    record, pid = tmp_path / "record", tmp_path / "r.pid"
    env = {"CORRAL_CPUS": "16", "CORRAL_KILL_GRACE_SECONDS": "10"}
    server = LiveServer(tmp_path / "data", "--executor", "local", env=env).start()
    try:
        api = Api(server)
        stubborn = f'echo $$ > {pid}; trap "" TERM; echo "start R" >> {record};'
        stubborn += " while :; do sleep 0.05; done"
        check = f'kill -0 $(cat {pid}) 2>/dev/null && echo "R alive" >> {record}; exec "$@"'
        r, z = api.batch(
            [
                {"command": ["sh", "-c", stubborn]},
                {
                    "command": ["sh", "-c", check, "sh", *step(record, "Z")],
                    "depends_on": [0],
                    "dependency_type": "afterany",
                },
            ]
        )
        wait_until(lambda: lines(record) == ["start R"])
        assert api.http.delete(f"/v1/workloads/{r['id']}").status_code == 200
        server.kill(signal.SIGKILL)
        server = LiveServer(tmp_path / "data", "--executor", "local", env=env, port=server.port)
        api = Api(server.start())
        assert api.wait(z["id"], timeout=60)["status"] == "completed"
        assert lines(record) == ["start R", "start Z", "end Z"]
    finally:
        server.kill()
        kill_all(tmp_path / "data" / "run")
