"""The CLI's work in bulk and its habits from sbatch, against a real ``corral serve``
running real processes: the exported environment, units, arrays with ``%N``,
``--from-file``, ``--after`` chains, ``killed (stopping)``. The workloads record what
happened to them (their environment, their start and end times) in files the tests
read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster import default_name
from corral.executors.local import kill_all
from tests.server import LiveServer, wait_until
from tests.test_cli import (
    ID_RE,
    SERVERS,
    cli_env,
    corral,
    get,
    new_user,
    ok,
    one_line_error,
    submit,
)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("cli-bulk")
    live = LiveServer(data, "--executor", "local", "--kill-grace", "3", "--cpus", "8").start()
    SERVERS[live.url] = live
    yield live
    live.kill()
    kill_all(data / "run")


@pytest.fixture(scope="module")
def none(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("cli-none"), "--executor", "none").start()
    SERVERS[live.url] = live
    yield live
    live.kill()


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        input=stdin,
        timeout=120,
    )


# --- the environment --------------------------------------------------------------------------


def test_the_workload_gets_the_shell_s_environment_but_never_the_key(
    local: LiveServer, tmp_path: Path
) -> None:
    key = local.token
    assert key
    env = cli_env(local.url)
    env.update(
        {
            "MY_SETTING": "from the shell",
            "VIRTUAL_ENV": str(tmp_path / "venv"),
            "SECRET_COPY": f"prefix {key} suffix",
            "CORRAL_TOKEN_FILE": str(tmp_path / "unused"),
            "RAY_AUTH_TOKEN": "ray-secret",  # exported for corral serve (README)
            "CORRAL_DB": "postgresql://corral:db-secret@db-host/corral",
            "PGPASSWORD": "db-secret",
            "BASH_FUNC_greet%%": "() {  echo hi\n}",
        }
    )
    result = run_cli("submit", "--wait", "-e", "EXTRA=1", "--", "env", env=env)
    assert result.returncode == 0, result.stderr
    workload_id = result.stdout.strip()
    logs = ok(corral("logs", workload_id, url=local.url))
    printed = dict(line.split("=", 1) for line in logs.splitlines() if "=" in line)
    assert printed["MY_SETTING"] == "from the shell"
    assert printed["VIRTUAL_ENV"] == str(tmp_path / "venv")
    assert printed["EXTRA"] == "1"
    assert printed["PATH"] == os.environ["PATH"]  # the shell's, not the server's
    hidden = ("CORRAL_TOKEN", "CORRAL_TOKEN_FILE", "RAY_AUTH_TOKEN", "CORRAL_DB", "PGPASSWORD")
    hidden += ("SECRET_COPY",)
    for name in (*hidden, "BASH_FUNC_greet%%"):
        assert name not in printed
    assert key not in logs and "db-secret" not in logs
    stored = get(local, workload_id)["env"]
    assert isinstance(stored, dict) and key not in json.dumps(stored)
    assert "db-secret" not in json.dumps(stored)


def test_export_none_and_a_list(none: LiveServer) -> None:
    env = {**cli_env(none.url), "ONE": "1", "TWO": "2", "THREE": "3"}

    def stored_env(*args: str) -> object:
        workload_id = ok(run_cli("submit", *args, "--", "true", env=env)).strip()
        return get(none, workload_id)["env"]

    assert stored_env("--export", "NONE") == {}
    assert stored_env("--export", "NONE", "-e", "K=v") == {"K": "v"}
    assert stored_env("--export", "ONE,TWO,UNSET,CORRAL_TOKEN") == {"ONE": "1", "TWO": "2"}
    assert stored_env("--export", "ONE", "-e", "ONE=wins") == {"ONE": "wins"}
    everything = stored_env()
    assert isinstance(everything, dict)
    assert {"ONE": "1", "TWO": "2", "THREE": "3"}.items() <= everything.items()
    assert "CORRAL_TOKEN" not in everything
    workload_id = ok(run_cli("submit", "--", "true", env=env)).strip()
    shown = ok(run_cli("show", workload_id, env=env)).splitlines()
    assert f"env        {len(get(none, workload_id)['env'])} variables (--json shows them)" in shown


# --- units ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "memory_mb", "timeout"),
    [
        (("--memory", "4G", "--timeout", "1h30m"), 4096, 5400),
        (("--memory", "512M", "--timeout", "1:30:00"), 512, 5400),
        (("--memory", "1.5g", "--timeout", "90"), 1536, 90),
        (("--memory-mb", "64", "--timeout", "2d"), 64, 172800),
        (("--memory-mb", "2G", "--timeout", "1-12:00:00"), 2048, 129600),
        (("--memory", "1T", "--timeout", "0.5"), 1048576, 0.5),
    ],
)
def test_sizes_and_durations_with_units(
    none: LiveServer, args: tuple[str, ...], memory_mb: int, timeout: float
) -> None:
    workload_id = submit(none, *args, "--", "true")
    w = get(none, workload_id)
    assert w["resources"] == {"cpus": 1.0, "memory_mb": memory_mb, "gpus": 0}
    assert w["timeout_seconds"] == timeout
    shown = ok(corral("show", workload_id, url=none.url))
    assert any(line.split()[:2] == ["timeout", _duration(timeout)] for line in shown.splitlines())


def _duration(seconds: float) -> str:
    from corral.units import format_duration

    return format_duration(seconds)


def test_a_timeout_with_units_stops_the_workload(local: LiveServer) -> None:
    result = corral("submit", "--wait", "--timeout", "0.5s", "--", "sleep", "30", url=local.url)
    assert result.returncode == 1
    assert "timed out" in result.stderr.splitlines()[-1]


# --- arrays ---------------------------------------------------------------------------------------


def intervals(record: Path) -> dict[int, tuple[float, float]]:
    """Each task's (start, end) from the lines it appended to ``record``."""
    seen: dict[int, dict[str, float]] = {}
    for line in record.read_text().splitlines():
        what, index, at = line.split()
        seen.setdefault(int(index), {})[what] = float(at)
    return {i: (t["start"], t["end"]) for i, t in seen.items()}


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = best = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        running += step
        best = max(best, running)
    return best


def test_an_array_with_a_limit_never_runs_more_at_once(local: LiveServer, tmp_path: Path) -> None:
    record = tmp_path / "record"
    script = (
        f'echo "start $CORRAL_ARRAY_INDEX $(date +%s.%N)" >> {record};'
        " sleep 0.4;"
        f' echo "end $CORRAL_ARRAY_INDEX $(date +%s.%N)" >> {record}'
    )
    label = f"array={uuid.uuid4().hex[:8]}"
    args = ("--array", "0-6%2", "--cpus", "0", "-l", label, "--wait", "--")
    result = corral("submit", *args, "sh", "-c", script, url=local.url, timeout=120)
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == 7 and all(ID_RE.match(i) for i in ids)
    assert result.stderr.splitlines()[-1] == "7 workloads: 7 completed"
    spans = intervals(record)
    assert sorted(spans) == list(range(7))
    assert most_at_once(list(spans.values())) <= 2
    stored = [get(local, i) for i in ids]
    assert [w["array_index"] for w in stored] == list(range(7))
    assert {w["max_running"] for w in stored} == {2}
    assert len({w["batch_id"] for w in stored}) == 1


@pytest.mark.parametrize(
    ("spec", "indices"),
    [("1,3,5", [1, 3, 5]), ("0-15:4", [0, 4, 8, 12]), ("7", [7]), ("2-4,9", [2, 3, 4, 9])],
)
def test_array_specs(none: LiveServer, spec: str, indices: list[int]) -> None:
    result = corral("submit", "--array", spec, "--json", "--", "true", url=none.url)
    created = json.loads(ok(result))
    assert [w["array_index"] for w in created] == indices
    assert {w["max_running"] for w in created} == {None}


# --- from a file ----------------------------------------------------------------------------------


def test_from_file_submits_one_workload_a_line(none: LiveServer, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(
        "# preprocessing\n"
        "python prep.py --in 'my data.csv'\n"
        "\n"
        "   \n"
        'echo "a b" c  # a comment\n'
        "sh -c 'exit 3'\n"
    )
    result = corral("submit", "--from-file", str(jobs), "-l", "from=file", url=none.url)
    ids = ok(result).split()
    commands = [get(none, i)["command"] for i in ids]
    assert commands == [
        ["python", "prep.py", "--in", "my data.csv"],
        ["echo", "a b", "c"],
        ["sh", "-c", "exit 3"],
    ]
    assert {json.dumps(get(none, i)["labels"]) for i in ids} == {'{"from": "file"}'}


def test_from_file_stdin(none: LiveServer) -> None:
    env = cli_env(none.url)
    result = run_cli("submit", "--from-file", "-", env=env, stdin="true\nfalse\n")
    ids = ok(result).split()
    assert [get(none, i)["command"] for i in ids] == [["true"], ["false"]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true\necho 'unclosed\n", "jobs.txt line 2: no closing quotation"),
        ("# nothing\n\n", "--from-file {path} has no command"),
    ],
)
def test_from_file_errors(none: LiveServer, tmp_path: Path, text: str, expected: str) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(text)
    message = one_line_error(corral("submit", "--from-file", str(jobs), url=none.url), 2)
    assert message.endswith(expected.format(path=jobs))


def test_a_bad_line_creates_nothing_and_is_named(none: LiveServer, tmp_path: Path) -> None:
    key = new_user(none)
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("true\n\n# c\n'' arg\n")  # an empty program on line 4
    result = corral("submit", "--from-file", str(jobs), url=none.url, token=key)
    message = one_line_error(result, 1)
    assert message.startswith(f"{jobs} line 4: the command")
    assert ok(corral("ls", "--all", "-q", url=none.url, token=key)) == ""


# --- dependencies ------------------------------------------------------------------------


def test_an_after_chain_runs_in_order(local: LiveServer, tmp_path: Path) -> None:
    record = tmp_path / "record"

    def step(name: str) -> tuple[str, ...]:
        return (
            "sh",
            "-c",
            f"echo start {name} >> {record}; sleep 0.3; echo end {name} >> {record}",
        )

    first = submit(local, "--name", "first", "--", *step("a"))
    second = submit(local, "--after", first[:12], "--", *step("b"))
    third = submit(local, "--after", second, "--name", "third", "--", *step("c"))
    assert get(local, third)["depends_on"] == [second]
    assert get(local, second)["depends_on"] == [first]
    result = corral("wait", "third", first, second, url=local.url)
    assert result.returncode == 0, result.stderr
    assert record.read_text().split("\n")[:-1] == [
        f"{what} {name}" for name in "abc" for what in ("start", "end")
    ]


def test_after_a_failure_the_dependants_are_killed(local: LiveServer) -> None:
    failing = submit(local, "--", "sh", "-c", "sleep 0.3; exit 4")
    after = submit(local, "--after", failing, "--", "true")
    anyway = submit(local, "--after-any", failing, "--", "true")
    assert get(local, anyway)["dependency_type"] == "afterany"
    result = corral("wait", after, anyway, failing, url=local.url)
    assert result.returncode == 143  # the first that did not complete: killed
    assert get(local, after)["status"] == "killed"
    assert failing[:6] in str(get(local, after)["reason"])
    assert get(local, anyway)["status"] == "completed"


def test_after_and_after_any_together_are_refused(none: LiveServer) -> None:
    a = submit(none, "true")
    args = ("submit", "--after", a, "--after-any", a, "--", "true")
    assert one_line_error(corral(*args, url=none.url), 2) == "give --after or --after-any, not both"


# --- killed (stopping) ----------------------------------------------------------------------------


def test_a_killed_workload_still_exiting_shows_as_stopping(local: LiveServer) -> None:
    workload_id = submit(local, "--", "sh", "-c", "trap '' TERM; sleep 30")
    pidfile = local.data_dir / "run" / f"{workload_id}.pid"
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip())
    assert ok(corral("kill", workload_id, url=local.url)) == f"killed {workload_id} (stopping)\n"
    listed = ok(corral("ls", "--status", "killed", url=local.url))
    row = next(line for line in listed.splitlines() if line.startswith(workload_id))
    assert "killed (stopping)" in row
    shown = ok(corral("show", workload_id, url=local.url))
    assert any(line.split()[1:] == ["killed", "(stopping)"] for line in shown.splitlines())
    wait_until(lambda: get(local, workload_id)["stopping"] is False, timeout=30)
    assert "(stopping)" not in ok(corral("show", workload_id, url=local.url))


def test_kill_by_label_on_a_real_executor(local: LiveServer) -> None:
    label = f"sweep={uuid.uuid4().hex[:8]}"
    ids = ok(corral("submit", "--array", "0-2", "-l", label, "--", "sleep", "60", url=local.url))
    killed = ok(corral("kill", "--label", label, url=local.url)).splitlines()
    assert sorted(line.split()[1] for line in killed) == sorted(ids.split())
    assert {get(local, i)["status"] for i in ids.split()} == {"killed"}


# --- status ---------------------------------------------------------------------------------


def test_status_shows_capacity_counts_and_the_queue(tmp_path: Path) -> None:
    args = ("--executor", "local", "--cpus", "1", "--memory-mb", "4G", "--gpus", "0")
    with LiveServer(tmp_path, *args) as server:
        SERVERS[server.url] = server
        try:
            status_of_a_busy_server(server)
        finally:
            kill_all(tmp_path / "run")


def status_of_a_busy_server(server: LiveServer) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return corral(*args, url=server.url)  # the admin: a root server runs only its

    busy = ok(cli("submit", "--memory", "1G", "--", "sleep", "60")).strip()
    wait_until(lambda: get(server, busy)["status"] == "running")
    queued = [ok(cli("submit", "--name", f"q{i}", "--", "true")).strip() for i in range(2)]
    wait_until(  # the scheduler's next pass gives each its reason
        lambda: all(q["reason"] for q in json.loads(ok(cli("status", "--json")))["queue"])
    )
    lines = ok(cli("status")).splitlines()
    name = default_name()
    assert lines[:7] == [
        f"server     {name}",
        f"leader     {name}",
        "executor   local",
        "capacity   cpus 1, memory 4G, gpus 0",
        "used       cpus 1, memory 1G, gpus 0",
        "free       cpus 0, memory 3G, gpus 0",
        "workloads  2 pending, 1 running",
    ]
    assert lines[8] == "queue: 2 pending, in scheduling order"
    assert lines[9].split() == ["ID", "OWNER", "NAME", "PRIO", "CPUS", "MEM", "GPUS", "REASON"]
    assert [line.split()[0] for line in lines[10:]] == queued
    # the reason (its wording, CPUs short or behind the head of the line, is the
    # scheduler's: tests/test_admission.py)
    assert all(line.split(None, 7)[7].startswith("waiting") for line in lines[10:])
    data = json.loads(ok(cli("status", "--json")))
    assert data["server"] == data["leader"] == name
    assert data["counts"]["pending"] == 2 and [q["id"] for q in data["queue"]] == queued
    assert data["capacity"] == {"cpus": 1.0, "memory_mb": 4096, "gpus": 0}
    ok(cli("kill", busy))
