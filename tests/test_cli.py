"""The ``corral`` command line as a real subprocess against a real ``corral serve
--executor none``; the tests move workloads with ``PUT …/status``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.cli import exit_status
from corral.client import ServerUnreachable
from corral.executors.local import kill_all
from corral.model import Resources, Status, Workload
from tests.server import LiveServer, free_port, pid_gone, wait_until

ID_RE = re.compile(r"^[0-9a-z]{26}$")
UNKNOWN_ID = "01aaaaaaaaaaaaaaaaaaaaaaaa"
SERVERS: dict[str, LiveServer] = {}
"""The live servers by URL: the CLI gets the admin key of the one it talks to."""
KEY_VARS = ("CORRAL_TOKEN", "CORRAL_TOKEN_FILE", "CORRAL_DATA_DIR")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("cli"), "--executor", "none").start()
    SERVERS[live.url] = live
    yield live
    live.kill()


def cli_env(url: str, token: str | None = None) -> dict[str, str]:
    """The environment of a CLI aimed at ``url``, with the admin key of the live server
    there (or ``token``), and no key of the user running the tests."""
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    env["CORRAL_URL"] = url
    live = SERVERS.get(url)
    key = token or (live.token if live else None)
    if key:
        env["CORRAL_TOKEN"] = key
    return env


def corral(
    *args: str, url: str, cwd: Path | None = None, timeout: float = 60, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = cli_env(url, token)
    return subprocess.run(
        [sys.executable, "-m", "corral.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def start(*args: str, url: str) -> subprocess.Popen[str]:
    env = cli_env(url)
    return subprocess.Popen(
        [sys.executable, "-m", "corral.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    """The error line (without ``corral: ``), after checking it is the only output."""
    assert result.returncode != 0
    if code is not None:
        assert result.returncode == code
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("corral: ")
    return lines[0].removeprefix("corral: ")


def submit(server: LiveServer, *args: str) -> str:
    workload_id = ok(corral("submit", *args, url=server.url)).strip()
    assert ID_RE.match(workload_id)
    return workload_id


def put_status(server: LiveServer, workload_id: str, status: str, **extra: object) -> None:
    r = httpx.put(
        f"{server.url}/v1/workloads/{workload_id}/status",
        json={"status": status, **extra},
        headers=server.headers,
    )
    assert r.status_code == 200, r.text


def get(server: LiveServer, workload_id: str) -> dict[str, object]:
    url = f"{server.url}/v1/workloads/{workload_id}"
    body: dict[str, object] = httpx.get(url, headers=server.headers).json()
    return body


def finish_later(
    server: LiveServer, workload_id: str, *steps: tuple[str, dict[str, object]]
) -> threading.Thread:
    """Apply status changes from a thread while the CLI waits."""

    def run() -> None:
        time.sleep(0.5)
        for status, extra in steps:
            put_status(server, workload_id, status, **extra)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# --- submit, ls, show -----------------------------------------------------------------


def test_submit_prints_the_id(server: LiveServer, tmp_path: Path) -> None:
    out = ok(
        corral(
            "submit",
            "--name", "train",
            "--env", "A=1",
            "-e", "B=x=y",
            "--label", "team=ml",
            "--cpus", "0.5",
            "--memory-mb", "64",
            "--priority", "-3",
            "--timeout", "30",
            "--cwd", "work",
            "--",
            "python", "-c", "print(1)", "--flag",
            url=server.url,
            cwd=tmp_path,
        )
    )  # fmt: skip
    workload_id = out.strip()
    assert ID_RE.match(workload_id)
    w = get(server, workload_id)
    assert w["command"] == ["python", "-c", "print(1)", "--flag"]
    assert w["name"] == "train"
    assert w["env"] == {"A": "1", "B": "x=y"}
    assert w["labels"] == {"team": "ml"}
    assert w["resources"] == {"cpus": 0.5, "memory_mb": 64, "gpus": 0}
    assert (w["priority"], w["timeout_seconds"]) == (-3, 30)
    assert w["cwd"] == str(tmp_path / "work")  # made absolute by the CLI


def test_submit_runs_in_the_current_directory_by_default(
    server: LiveServer, tmp_path: Path
) -> None:
    workload_id = ok(corral("submit", "--", "make", url=server.url, cwd=tmp_path)).strip()
    assert get(server, workload_id)["cwd"] == str(tmp_path)  # as sbatch does


def test_submit_without_dashes_keeps_the_command_options(server: LiveServer) -> None:
    workload_id = submit(server, "ls", "-la", "--color")
    assert get(server, workload_id)["command"] == ["ls", "-la", "--color"]


def test_submit_json(server: LiveServer) -> None:
    w = json.loads(ok(corral("submit", "--json", "--", "true", url=server.url)))
    assert w["status"] == "pending"
    assert w["command"] == ["true"]
    assert w["resources"] == {"cpus": 1.0, "memory_mb": 0, "gpus": 0}


def test_ls_json_and_table(server: LiveServer) -> None:
    batch = f"batch={uuid.uuid4().hex}"
    ids = [submit(server, "--label", batch, "--", "echo", str(i)) for i in range(4)]
    put_status(server, ids[1], "running")
    listed = json.loads(ok(corral("ls", "--label", batch, "--json", url=server.url)))
    assert [w["id"] for w in listed] == ids[::-1]
    limited = json.loads(ok(corral("ls", "-l", batch, "--limit", "2", "--json", url=server.url)))
    assert [w["id"] for w in limited] == ids[:1:-1]
    running = json.loads(
        ok(corral("ls", "-l", batch, "--status", "running", "--json", url=server.url))
    )
    assert [w["id"] for w in running] == [ids[1]]

    table = ok(corral("ls", "--label", batch, url=server.url)).splitlines()
    assert table[0].split() == ["ID", "NAME", "STATUS", "EXIT", "AGE", "COMMAND", "REASON"]
    assert [line.split()[0] for line in table[1:]] == ids[::-1]
    assert "running" in table[3] and "echo 1" in table[3]

    empty = corral("ls", "--label", f"batch={uuid.uuid4().hex}", "--json", url=server.url)
    assert json.loads(ok(empty)) == []


def test_show(server: LiveServer) -> None:
    workload_id = submit(server, "--name", "shown", "--", "echo", "hi")
    put_status(server, workload_id, "running")
    put_status(server, workload_id, "failed", exit_code=2)
    shown = json.loads(ok(corral("show", workload_id, "--json", url=server.url)))
    assert shown["workload"]["id"] == workload_id
    assert (shown["workload"]["status"], shown["workload"]["exit_code"]) == ("failed", 2)
    events = shown["events"]
    assert events[0]["type"] == "created"
    assert [e["to_status"] for e in events] == ["pending", "running", "failed"]

    text = ok(corral("show", workload_id, url=server.url))
    assert workload_id in text
    assert "shown" in text and "echo hi" in text and "exit code 2" in text
    assert "events" in text

    assert one_line_error(corral("show", UNKNOWN_ID, url=server.url)) == (
        f"no workload {UNKNOWN_ID} on this server (corral ls lists them)"
    )


# --- kill -------------------------------------------------------------------------------


def test_kill_pending(server: LiveServer) -> None:
    workload_id = submit(server, "sleep", "60")
    assert ok(corral("kill", workload_id, url=server.url)) == f"killed {workload_id}\n"
    assert get(server, workload_id)["status"] == "killed"
    again = one_line_error(corral("kill", workload_id, url=server.url))
    assert again == f"workload {workload_id} is already killed; nothing to kill"


def test_kill_completed(server: LiveServer) -> None:
    workload_id = submit(server, "true")
    put_status(server, workload_id, "running")
    put_status(server, workload_id, "completed")
    message = one_line_error(corral("kill", workload_id, url=server.url))
    assert message == f"workload {workload_id} is already completed; nothing to kill"


def test_kill_unknown(server: LiveServer) -> None:
    message = one_line_error(corral("kill", UNKNOWN_ID, url=server.url))
    assert message == f"no workload {UNKNOWN_ID} on this server (corral ls lists them)"


# --- wait and submit --wait -------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "code"),
    [
        ((("running", {}), ("failed", {"exit_code": 3})), 3),
        ((("running", {}), ("completed", {})), 0),
        ((("running", {}), ("killed", {})), 143),
        ((("killed", {}),), 143),
        ((("running", {}), ("failed", {"reason": "timed out after 1 s"})), 1),
    ],
)
def test_wait_exits_like_the_workload(
    server: LiveServer, steps: tuple[tuple[str, dict[str, object]], ...], code: int
) -> None:
    workload_id = submit(server, "true")
    thread = finish_later(server, workload_id, *steps)
    result = corral("wait", workload_id, url=server.url)
    thread.join()
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    final = steps[-1][0]
    assert result.stderr.splitlines()[-1].startswith(f"{workload_id} {final} after ")


def test_submit_wait(server: LiveServer) -> None:
    proc = start("submit", "--wait", "--", "sh", "-c", "exit 3", url=server.url)
    assert proc.stdout is not None
    workload_id = proc.stdout.readline().strip()
    assert ID_RE.match(workload_id)
    thread = finish_later(server, workload_id, ("running", {}), ("failed", {"exit_code": 3}))
    stdout, stderr = proc.communicate(timeout=60)
    thread.join()
    assert proc.returncode == 3, stderr
    assert stdout == ""
    assert re.fullmatch(rf"{workload_id} failed after [0-9.]+s: exit code 3", stderr.rstrip())


def test_submit_wait_json_prints_the_final_workload(server: LiveServer) -> None:
    label = f"run={uuid.uuid4().hex}"
    proc = start("submit", "--wait", "--json", "--label", label, "--", "true", url=server.url)
    deadline = time.monotonic() + 30
    workload_id = None
    while workload_id is None and time.monotonic() < deadline:
        listed = httpx.get(
            f"{server.url}/v1/workloads", params={"label": label}, headers=server.headers
        )
        found = listed.json()["items"]
        workload_id = found[0]["id"] if found else None
        time.sleep(0.05)
    assert workload_id is not None
    put_status(server, workload_id, "running")
    put_status(server, workload_id, "completed")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["status"] == "completed"


def test_wait_timeout(server: LiveServer) -> None:
    workload_id = submit(server, "sleep", "60")
    message = one_line_error(corral("wait", workload_id, "--timeout", "0.3", url=server.url), 124)
    assert message == f"workload {workload_id} is still pending after waiting 0.3 s"


def test_wait_unknown(server: LiveServer) -> None:
    assert one_line_error(corral("wait", UNKNOWN_ID, url=server.url)) == (
        f"no workload {UNKNOWN_ID} on this server (corral ls lists them)"
    )


def workload(
    status: Status,
    exit_code: int | None = None,
    sig: str | None = None,
    *,
    timeout: float | None = None,
    ran: float = 0.5,
) -> Workload:
    now = "2024-01-01T00:00:00Z"
    end = f"2024-01-01T00:00:{ran:09.6f}Z"
    return Workload(
        id=UNKNOWN_ID,
        owner="alice",
        name=None,
        command=["x"],
        env={},
        cwd=None,
        resources=Resources(),
        labels={},
        priority=0,
        timeout_seconds=timeout,
        status=status,
        exit_code=exit_code,
        signal=sig,
        reason=None,
        created_at=now,
        updated_at=now,
        started_at=now,
        finished_at=end,
    )


def test_exit_status_mapping() -> None:
    assert exit_status(workload(Status.COMPLETED, 0)) == 0
    assert exit_status(workload(Status.FAILED, 3)) == 3
    assert exit_status(workload(Status.FAILED, 255)) == 255
    assert exit_status(workload(Status.FAILED, sig="SIGSEGV")) == 139
    assert exit_status(workload(Status.FAILED, sig="SIGKILL")) == 137
    assert exit_status(workload(Status.FAILED, -9)) == 137
    assert exit_status(workload(Status.FAILED)) == 1  # timeout, lost, spawn failed
    assert exit_status(workload(Status.FAILED, 256)) == 1  # would wrap to 0
    assert exit_status(workload(Status.FAILED, 0)) == 1  # failed is never success
    assert exit_status(workload(Status.FAILED, sig="SIGBOGUS")) == 1
    assert exit_status(workload(Status.KILLED)) == 143
    assert exit_status(workload(Status.KILLED, sig="SIGKILL")) == 143


# --- logs -------------------------------------------------------------------------------


def test_logs_of_a_workload_without_output(server: LiveServer) -> None:
    workload_id = submit(server, "true")
    assert ok(corral("logs", workload_id, url=server.url)) == ""
    assert ok(corral("logs", workload_id, "--tail", "5", url=server.url)) == ""
    thread = finish_later(server, workload_id, ("running", {}), ("completed", {}))
    assert ok(corral("logs", "-f", workload_id, url=server.url)) == ""  # ends with it
    thread.join()
    assert one_line_error(corral("logs", UNKNOWN_ID, url=server.url)) == (
        f"no workload {UNKNOWN_ID} on this server (corral ls lists them)"
    )


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("ls",),
        ("submit", "--", "true"),
        ("show", UNKNOWN_ID),
        ("kill", UNKNOWN_ID),
        ("logs", UNKNOWN_ID),
        ("logs", "-f", UNKNOWN_ID),
        ("wait", UNKNOWN_ID),
    ],
)
def test_server_down(args: tuple[str, ...]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    message = one_line_error(corral(*args, url=url), 1)
    assert message == (
        f"cannot reach a corral server at {url} (connection refused);"
        f" start one with: corral serve --port {port}"
    )


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("http://127.0.0.1:8765", "corral serve"),
        ("http://localhost:8765/", "corral serve"),
        ("http://127.0.0.1:9000", "corral serve --port 9000"),
    ],
)
def test_the_unreachable_hint_names_the_port(url: str, hint: str) -> None:
    assert str(ServerUnreachable(url, "connection refused")).endswith(f"start one with: {hint}")


def test_corral_alone_prints_help() -> None:
    result = corral(url="")
    assert result.returncode == 0 and result.stderr == ""
    assert "Usage: corral" in result.stdout and "submit" in result.stdout


def test_server_option_wins_over_the_environment(server: LiveServer) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    key = server.token
    first = corral("--server", server.url, "ls", "--json", url=down, token=key)
    assert json.loads(ok(first)) is not None
    after = corral("ls", "--server", server.url, "--json", url=down, token=key)
    assert json.loads(ok(after)) is not None
    message = one_line_error(corral("--server", server.url, "ls", "--server", down, url=down))
    assert down in message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("submit", "--env", "NOEQUALS", "--", "true"), "invalid --env 'NOEQUALS': expected"),
        (("submit", "--env", "=x", "--", "true"), "invalid --env '=x': expected KEY=VALUE"),
        (("submit", "--env", "K V=1", "--", "true"), "invalid --env 'K V=1': 'K V' is not a"),
        (("submit", "--label", "bad key=x", "--", "true"), "invalid --label 'bad key=x': label"),
        (("ls", "--label", "novalue"), "invalid --label 'novalue': expected KEY=VALUE"),
        (("ls", "--status", "sleeping"), "invalid --status 'sleeping': use one of pending,"),
        (("submit",), "Missing argument 'CMD'. (see: corral submit --help)"),
        (("ls", "--bogus"), "No such option: --bogus (see: corral ls --help)"),
        (("nosuch",), "No such command 'nosuch'. (see: corral --help)"),
    ],
)
def test_malformed_options(server: LiveServer, args: tuple[str, ...], expected: str) -> None:
    assert one_line_error(corral(*args, url=server.url), 2).startswith(expected)


def test_invalid_input_from_the_server(server: LiveServer) -> None:
    message = one_line_error(corral("submit", "--cpus", "-1", "--", "true", url=server.url), 1)
    assert message.startswith("resources.cpus:")


def test_serve_with_an_unknown_executor(tmp_path: Path) -> None:
    result = corral("serve", "--executor", "bogus", "--data-dir", str(tmp_path), url="")
    assert one_line_error(result, 2).startswith("invalid --executor:")


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (("--port", "99999"), 2, "invalid --port: Input should be less than or equal to 65535"),
        (("--kill-grace", "-1"), 2, "invalid --kill-grace: Input should be greater than"),
        (("--cpus", "-2"), 2, "invalid --cpus: Input should be greater than"),
        (("--db", "postgresql://db/corral"), 1, "cannot open the database postgresql://"),
        (("--data-dir", "/proc/corral"), 1, "cannot use data dir /proc/corral:"),
    ],
)
def test_serve_refuses_bad_settings(
    tmp_path: Path, args: tuple[str, ...], code: int, expected: str
) -> None:
    settings = ("--data-dir", str(tmp_path), "--port", str(free_port()), "--executor", "none")
    result = corral("serve", *settings, *args, url="")
    assert one_line_error(result, code).startswith(expected)


def test_serve_on_a_port_in_use_says_so_and_leaves_the_data_dir_alone(
    server: LiveServer, tmp_path: Path
) -> None:
    port = server.url.rsplit(":", 1)[1]
    result = corral("serve", "--port", port, "--data-dir", str(tmp_path / "d"), url="")
    message = one_line_error(result, 1)
    assert message.startswith(f"cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "another corral serve" in message
    assert not (tmp_path / "d").exists()


def test_serve_announces_itself_once_it_answers(tmp_path: Path) -> None:
    port = free_port()
    args = ("serve", "--port", str(port), "--data-dir", str(tmp_path), "--executor", "none")
    proc = start(*args, url="")
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        assert banner.startswith(f"corral serving http://127.0.0.1:{port} (executor none;")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- against a local executor: real processes behind the commands -------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("cli-local")
    live = LiveServer(data, "--executor", "local", "--kill-grace", "2").start()
    SERVERS[live.url] = live
    yield live
    live.kill()
    kill_all(data / "run")  # whatever a test left running


@pytest.mark.parametrize(
    ("command", "code", "last_line"),
    [
        (("sh", "-c", "echo out; echo err >&2; exit 3"), 3, "failed after [0-9.]+s: exit code 3"),
        (("true",), 0, "completed after [0-9.]+s: exit code 0"),
        (("sh", "-c", "kill -KILL $$"), 137, "failed after [0-9.]+s: killed by signal SIGKILL"),
    ],
)
def test_submit_wait_runs_the_command_and_exits_like_it(
    local: LiveServer, command: tuple[str, ...], code: int, last_line: str
) -> None:
    result = corral("submit", "--wait", "--", *command, url=local.url)
    assert result.returncode == code, result.stderr
    workload_id = result.stdout.strip()
    assert ID_RE.match(workload_id)
    assert re.fullmatch(rf"{workload_id} {last_line}", result.stderr.splitlines()[-1])


def test_kill_stops_the_running_process(local: LiveServer) -> None:
    workload_id = submit(local, "sleep", "300")
    pidfile = local.data_dir / "run" / f"{workload_id}.pid"
    pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip()))
    assert ok(corral("kill", workload_id, url=local.url)) == f"killed {workload_id}\n"
    wait_until(lambda: pid_gone(pid), timeout=10)
    result = corral("wait", workload_id, url=local.url)
    assert result.returncode == 143
    message = one_line_error(corral("kill", workload_id, url=local.url), 1)
    assert message.startswith(f"workload {workload_id} is already killed")


def test_logs_follow_prints_output_as_it_is_written(local: LiveServer) -> None:
    workload_id = submit(local, "sh", "-c", "echo first; read x < /dev/null; sleep 1; echo second")
    proc = start("logs", "-f", workload_id, url=local.url)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "first\n"  # before the workload has ended
    assert get(local, workload_id)["status"] == "running"
    rest, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert rest == "second\n"


def test_logs_of_a_large_log_stream_whole_and_tail(local: LiveServer) -> None:
    script = "i=0; while [ $i -lt 200000 ]; do echo line $i; i=$((i+1)); done"
    workload_id = submit(local, "sh", "-c", script)
    assert corral("wait", workload_id, url=local.url).returncode == 0
    out = ok(corral("logs", workload_id, url=local.url))
    assert len(out) > 2_000_000
    assert out.splitlines() == [f"line {i}" for i in range(200_000)]
    assert ok(corral("logs", "--tail", "2", workload_id, url=local.url)) == (
        "line 199998\nline 199999\n"
    )


def test_user_text_cannot_drive_the_terminal() -> None:
    """A workload's name, reason, cwd or args reach another user's (an admin's)
    terminal: control characters come out escaped and Rich markup as text."""
    from rich.console import Console

    from corral.cli_render import workload_detail, workload_table

    evil = "evil\r\n\x1b[31mforged [bold]x[/bold]\x07\u202egnp.exe"
    w = Workload(
        id="01m8mq0000000000000000000a", owner=evil, name=evil, command=["sh", "-c", evil],
        env={"K": evil}, cwd="/tmp/" + evil, resources=Resources(), labels={}, priority=0,
        timeout_seconds=None, status=Status.FAILED, exit_code=1, signal=None, reason=evil,
        created_at="2026-11-29T00:00:00Z", updated_at="2026-11-29T00:00:00Z",
        started_at=None, finished_at=None,
    )  # fmt: skip
    for view in (workload_table([w], owner=True), workload_detail(w, [])):
        console = Console(width=400, force_terminal=False, color_system=None)
        with console.capture() as captured:
            console.print(view)
        out = captured.get()
        assert "\x1b" not in out and "\r" not in out and "\x07" not in out
        assert "\u202e" not in out and "\\u202egnp.exe" in out  # no reordered text
        assert "[bold]x[/bold]" in out  # shown as typed, not as markup
        assert "\\x1b[31mforged" in out
        assert not any(line.startswith("\\x1b") for line in out.splitlines())
