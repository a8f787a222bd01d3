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

from corral.cli import exit_status, unreachable_message
from corral.cluster import default_name
from corral.executors.local import kill_all
from corral.wire import Status, Workload
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
            "--export", "NONE",
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

    table = ok(corral("ls", "--label", batch, url=server.url)).splitlines()  # a pipe: whole
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
    assert "\x1b" not in text  # no colour into a pipe
    assert "shown" in text and "echo hi" in text and "exit code 2" in text
    assert "events" in text

    assert one_line_error(corral("show", UNKNOWN_ID, url=server.url)) == (
        f"no workload {UNKNOWN_ID} (corral ls lists them)"
    )


# --- kill -------------------------------------------------------------------------------


def test_kill_pending(server: LiveServer) -> None:
    workload_id = submit(server, "sleep", "60")
    result = corral("kill", workload_id, url=server.url)
    assert ok(result) == f"killed {workload_id}\n"
    assert result.stderr == ""  # no "killed after 0.5s": it never ran
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
    assert message == f"no workload {UNKNOWN_ID} (corral ls lists them)"


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
    when = "after " if len(steps) > 1 else "before it started"  # never ran: no run time
    assert result.stderr.splitlines()[-1].startswith(f"{workload_id} {final} {when}")


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
        f"no workload {UNKNOWN_ID} (corral ls lists them)"
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
    return Workload.from_json(
        {
            "id": UNKNOWN_ID,
            "owner": "alice",
            "name": None,
            "command": ["x"],
            "env": {},
            "cwd": None,
            "resources": {},
            "labels": {},
            "priority": 0,
            "timeout_seconds": timeout,
            "status": str(status),
            "exit_code": exit_code,
            "signal": sig,
            "reason": None,
            "created_at": now,
            "updated_at": now,
            "started_at": now,
            "finished_at": end,
        }
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
        f"no workload {UNKNOWN_ID} (corral ls lists them)"
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
    message = one_line_error(corral(*args, url=url), 3)
    assert message == (
        f"cannot reach a corral server at {url} (connection refused);"
        f" start one with: corral serve --port {port}"
    )


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("http://127.0.0.1:8765", "; start one with: corral serve"),
        ("http://localhost:8765/", "; start one with: corral serve"),
        ("http://127.0.0.1:9000", "; start one with: corral serve --port 9000"),
        ("http://[::1]:9000", "; start one with: corral serve --port 9000"),
        ("http://nohost.invalid:1", ""),  # not this machine: no serve to suggest
        ("https://corral.example.org", ""),
    ],
)
def test_the_unreachable_hint_names_the_port_of_a_loopback_url(url: str, hint: str) -> None:
    message = unreachable_message(url, "connection refused")
    assert message == f"cannot reach a corral server at {url} (connection refused){hint}"


def test_an_unknown_host_is_unreachable_without_a_serve_hint() -> None:
    result = corral("--server", "http://nohost.invalid:1", "ls", url="")
    message = one_line_error(result, 3)
    assert message.startswith("cannot reach a corral server at http://nohost.invalid:1 (")
    assert "corral serve " not in message and "start one" not in message


def test_corral_alone_prints_help() -> None:
    result = corral(url="")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: corral") and "submit" in result.stdout


def test_help_lists_exit_statuses_values_and_no_bool_placeholders() -> None:
    top = ok(corral("--help", url=""))
    for line in ("2    usage", "3    the server cannot be reached", "4    the server refused"):
        assert line in top
    assert "124  wait --timeout ran out" in top and "130  interrupted" in top
    for command in ("submit", "ls", "show", "kill", "wait", "logs", "status", "completion"):
        assert f"    {command} " in top
        text = ok(corral(command, "--help", url=""))
        assert "<bool>" not in text and "BOOL" not in text
    ls_help = ok(corral("ls", "--help", url=""))
    assert "pending, running, completed, failed, killed" in " ".join(ls_help.split())


def test_version() -> None:
    from corral import __version__

    result = corral("--version", url="")
    assert (result.returncode, result.stdout) == (0, f"corral {__version__}\n")


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
        (("submit",), "missing the command: corral submit [OPTIONS] -- CMD"),
        (("ls", "--bogus"), "unknown option --bogus (see: corral ls --help)"),
        (("submit", "--bogus", "--", "true"), "unknown option --bogus (see: corral submit --help)"),
        (("submit", "--bogus", "true"), "unknown option --bogus (see: corral submit --help)"),
        (("nosuch",), "no command 'nosuch' (see: corral --help)"),
        (("show",), "missing ID (see: corral show --help)"),
        (("submit", "--name"), "--name needs a value (see: corral submit --help)"),
        (("submit", "--timeout", "0", "--", "true"), "--timeout must be > 0"),
        (("submit", "--timeout", "soon", "--", "true"), "invalid --timeout: 'soon' is not a"),
        (("submit", "--memory", "4X", "--", "true"), "invalid --memory: '4X' is not a size"),
        (("submit", "--memory", "4G", "--memory-mb", "9", "--", "true"), "give --memory or"),
        (("submit", "--cpus", "-1", "--", "true"), "--cpus must be >= 0"),
        (("submit", "--gpus", "1.5", "--", "true"), "invalid --gpus '1.5': expected a whole"),
        (("submit", "--export", "A-B", "--", "true"), "invalid --export 'A-B': 'A-B' is not"),
        (("submit", "--array", "5-1", "--", "true"), "invalid --array '5-1': 5-1 ends before"),
        (("submit", "--array", "0-9%0", "--", "true"), "invalid --array '0-9%0': %N needs"),
        (("submit", "--array", "0-5000", "--", "true"), "invalid --array '0-5000': at most 1000"),
        (("submit", "--after", "01m", "--", "true"), "'01m' is too short for an id prefix"),
        (("wait", UNKNOWN_ID, "--timeout", "-1"), "invalid --timeout: '-1' is not a duration"),
        (("kill",), "say which workloads: IDs, --label, --status, --name or --all"),
        (("kill", UNKNOWN_ID, "--all"), "give workloads (ids, prefixes, names) or selectors"),
        (("ls", "--limit", "0"), "--limit must be >= 1"),
        (("--server", "ftp://host", "ls"), "invalid server URL 'ftp://host'"),
        (("show", " "), "an empty workload id or name"),
        (("completion", "tcsh"), "invalid SHELL 'tcsh' (see: corral completion --help)"),
    ],
)
def test_malformed_options(server: LiveServer, args: tuple[str, ...], expected: str) -> None:
    assert one_line_error(corral(*args, url=server.url), 2).startswith(expected)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--cpus", "2000000"), "--cpus: "),
        (("--memory-mb", str(2**41)), "--memory: "),
        (("--priority", str(2**40)), "--priority: "),
        (("--timeout", "20y"), None),  # refused by the CLI: no such unit
        (("--timeout", str(400 * 365 * 86400)), "--timeout: "),
        (("--label", "a=b", "--name", "x" * 300), "--name: "),
    ],
)
def test_invalid_input_from_the_server_names_the_flag(
    server: LiveServer, args: tuple[str, ...], flag: str | None
) -> None:
    result = corral("submit", *args, "--", "true", url=server.url)
    message = one_line_error(result, 1 if flag else 2)
    if flag:
        assert message.startswith(flag), message
    for field in ("resources.", "timeout_seconds", "memory_mb", "body"):
        assert field not in message


def test_serve_with_an_unknown_executor(tmp_path: Path) -> None:
    result = corral("serve", "--executor", "bogus", "--data-dir", str(tmp_path), url="")
    assert one_line_error(result, 2).startswith("invalid --executor:")


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (("--port", "99999"), 2, "invalid --port: Input should be less than or equal to 65535"),
        (("--kill-grace", "-1"), 2, "invalid --kill-grace: '-1' is not a duration"),
        (("--kill-grace", "1m", "--port", "0"), 2, "invalid --port: Input should be greater"),
        (("--cpus", "-2"), 2, "invalid --cpus: Input should be greater than"),
        (
            ("--advertise-url", "notaurl"),
            2,
            "invalid --advertise-url: 'notaurl' is not http(s)://HOST[:PORT] with nothing after",
        ),
        (("--advertise-url", "http://a.example:8765/corral"), 2, "invalid --advertise-url:"),
        (("--advertise-url", "http://u@a.example:8765"), 2, "invalid --advertise-url:"),
        (("--advertise-url", "ftp://a.example"), 2, "invalid --advertise-url:"),
        (("--advertise-url", "http://a.example:0"), 2, "invalid --advertise-url:"),
        (("--advertise-url", "http://a.example:8765?x=1"), 2, "invalid --advertise-url:"),
        (
            ("--db", "postgresql://u:secret@db/corral"),
            1,
            "cannot open the database postgresql://u:***@db/corral: the database is unreachable",
        ),
        (("--data-dir", "/proc/corral"), 1, "cannot use data dir /proc/corral:"),
    ],
)
def test_serve_refuses_bad_settings(
    tmp_path: Path, args: tuple[str, ...], code: int, expected: str
) -> None:
    settings = ("--data-dir", str(tmp_path), "--port", str(free_port()), "--executor", "none")
    result = corral("serve", *settings, *args, url="")
    assert one_line_error(result, code).startswith(expected)


@pytest.mark.parametrize("host", ["[:]", "[1.2.3.4]", "[fd00::1::2]", "1.2.3.999", "256.1.1.1"])
def test_serve_refuses_an_advertise_url_whose_host_is_no_address(tmp_path: Path, host: str) -> None:
    """A host no HTTP client can reach (brackets without an IPv6 address, an IPv4
    address out of range) is a usage error at start: it was let
    through, then crashed the start on PostgreSQL as an unexpected error, or failed
    every forward to this server."""
    settings = ("--data-dir", str(tmp_path), "--port", str(free_port()), "--executor", "none")
    db = ("--db", f"postgresql://u@127.0.0.1:{free_port()}/corral")
    url = f"http://{host}:8765"
    result = corral("serve", *settings, *db, "--advertise-url", url, url="")
    assert one_line_error(result, 2).startswith(f"invalid --advertise-url: {url!r} is not")


def test_serve_refuses_a_bad_pool_size_as_a_usage_error(tmp_path: Path) -> None:
    settings = ("--data-dir", str(tmp_path), "--port", str(free_port()), "--executor", "none")
    env = {**os.environ, "CORRAL_DB_POOL_SIZE": "zero"}
    db = ("--db", f"postgresql://u@127.0.0.1:{free_port()}/corral")
    result = subprocess.run(
        [sys.executable, "-m", "corral.cli", "serve", *settings, *db],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    message = one_line_error(result, 2)
    assert message.startswith("CORRAL_DB_POOL_SIZE must be a positive integer, not 'zero'")


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
    killed = ok(corral("kill", workload_id, url=local.url))
    assert killed in (f"killed {workload_id}\n", f"killed {workload_id} (stopping)\n")
    wait_until(lambda: pid_gone(pid), timeout=10)
    result = corral("wait", workload_id, url=local.url)
    assert result.returncode == 143
    message = one_line_error(corral("kill", workload_id, url=local.url), 1)
    assert message.startswith(f"workload {workload_id} is already killed")


def test_logs_follow_prints_output_as_it_is_written(local: LiveServer, tmp_path: Path) -> None:
    # The workload ends only once the test has seen its first line (no race with a
    # slow start of the CLI on a loaded machine).
    go = tmp_path / "go"
    script = f"echo first; while [ ! -e {go} ]; do sleep 0.02; done; echo second"
    workload_id = submit(local, "sh", "-c", script)
    proc = start("logs", "-f", workload_id, url=local.url)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "first\n"  # before the workload has ended
    assert get(local, workload_id)["status"] == "running"
    go.touch()
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
    terminal: control characters and bidi controls come out escaped, in colour too."""
    from corral.cli_render import workload_detail, workload_table

    evil = "evil\r\n\x1b[31mforged [bold]x[/bold]\x07\u202egnp.exe"
    w = Workload.from_json(
        {
            "id": "01m8mq0000000000000000000a", "owner": evil, "name": evil,
            "command": ["sh", "-c", evil], "env": {"K": evil}, "cwd": "/tmp/" + evil,
            "resources": {}, "labels": {}, "priority": 0, "timeout_seconds": None,
            "status": "failed", "exit_code": 1, "signal": None, "reason": evil,
            "created_at": "2026-11-29T00:00:00Z", "updated_at": "2026-11-29T00:00:00Z",
            "started_at": None, "finished_at": None,
        }
    )  # fmt: skip
    for colour in (False, True):
        tables = [
            workload_table([w], owner=True, width=width, colour=colour) for width in (400, 60)
        ]
        assert [len(t) for t in tables] == [2, 2]  # a header and one row: no forged line
        for lines in (*tables, workload_detail(w, [], colour=colour)):
            out = "\n".join(lines)
            assert "\r" not in out and "\x07" not in out and "\x1b[31mforged" not in out
            assert "\u202e" not in out
            if not colour:
                assert "\x1b" not in out
        detail = "\n".join(workload_detail(w, []))
        assert "\\u202egnp.exe" in detail and "\\x1b[31mforged [bold]x[/bold]" in detail


# --- handles: full ids, unique prefixes, names ---------------------------------------------


def new_user(server: LiveServer) -> str:
    """A key of a new user: a view of the server with nothing of other tests in it."""
    user = f"u{uuid.uuid4().hex[:12]}"
    r = httpx.post(f"{server.url}/v1/tokens", json={"user": user}, headers=server.headers)
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


def common_prefix(*ids: str) -> str:
    """The longest prefix the ids share."""
    shared = ""
    for chars in zip(*ids, strict=False):
        if len(set(chars)) > 1:
            break
        shared += chars[0]
    return shared


def test_a_unique_prefix_names_the_workload(server: LiveServer) -> None:
    key = new_user(server)
    first = ok(corral("submit", "--", "true", url=server.url, token=key)).strip()
    second = ok(corral("submit", "--", "true", url=server.url, token=key)).strip()
    shared = common_prefix(first, second)
    assert len(shared) >= 4  # submitted within the same ~30 s
    for handle in (first[: len(shared) + 1], first[: len(shared) + 1].upper(), first):
        shown = json.loads(ok(corral("show", handle, "--json", url=server.url, token=key)))
        assert shown["workload"]["id"] == first
    assert ok(corral("kill", second[: len(shared) + 1], url=server.url, token=key)) == (
        f"killed {second}\n"
    )


def test_an_ambiguous_prefix_lists_the_candidates(server: LiveServer) -> None:
    key = new_user(server)
    ids = [ok(corral("submit", "--name", f"n{i}", "--", "true", url=server.url, token=key)).strip()
           for i in range(3)]  # fmt: skip
    shared = common_prefix(*ids)
    assert len(shared) >= 4
    for command in (("show",), ("kill",), ("logs",), ("wait", "--timeout", "1")):
        message = one_line_error(corral(*command, shared, url=server.url, token=key), 1)
        assert message.startswith(f"{shared} matches 3 workloads: ")
        for i, workload_id in enumerate(ids):
            assert f"{workload_id} (n{i}, pending)" in message
    assert all(get(server, i)["status"] == "pending" for i in ids)  # nothing was killed


@pytest.mark.parametrize("handle", ["01m", "0", "abc"])
def test_too_short_a_prefix_is_a_usage_error(server: LiveServer, handle: str) -> None:
    message = one_line_error(corral("show", handle, url=server.url), 2)
    assert message.startswith(f"{handle!r} is too short for an id prefix (at least 4")


@pytest.mark.parametrize("handle", ["zzzzzz", "01zzzzzzzz", "no-such-name", "ab_c"])
def test_an_unknown_handle_is_not_found(server: LiveServer, handle: str) -> None:
    for command in ("show", "kill", "logs", "wait"):
        message = one_line_error(corral(command, handle, url=server.url), 1)
        assert message == (
            f"no workload {handle}: no id of yours starts with it, and no"
            " active one has that name (names work while active; corral ls lists them)"
        )


def test_a_finished_workloads_name_is_no_handle_and_the_error_says_why(
    server: LiveServer,
) -> None:
    name = f"done-{uuid.uuid4().hex[:8]}"
    done = submit(server, "--name", name, "--", "true")
    put_status(server, done, "running")
    put_status(server, done, "completed", exit_code=0)
    message = one_line_error(corral("show", name, url=server.url), 1)
    assert "names work while active" in message


def test_a_name_unique_among_active_workloads_is_a_handle(server: LiveServer) -> None:
    key = new_user(server)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return corral(*args, url=server.url, token=key)

    old = ok(cli("submit", "--name", "train", "--", "true")).strip()
    put_status(server, old, "running")
    put_status(server, old, "completed")  # finished: no longer answers to its name
    current = ok(cli("submit", "--name", "train", "--", "true")).strip()
    assert json.loads(ok(cli("show", "train", "--json")))["workload"]["id"] == current
    other = ok(cli("submit", "--name", "train", "--", "true")).strip()
    message = one_line_error(cli("show", "train"), 1)
    assert message.startswith("train matches 2 workloads: ")
    assert current in message and other in message and old not in message
    assert ok(cli("kill", other)) == f"killed {other}\n"
    assert ok(cli("kill", "train")) == f"killed {current}\n"
    assert one_line_error(cli("show", "train"), 1).startswith("no workload train")


# --- ls ------------------------------------------------------------------------------------


def test_ls_shows_active_workloads_first_then_recent_finished_ones(server: LiveServer) -> None:
    key = new_user(server)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return corral(*args, url=server.url, token=key)

    finished = []
    for i in range(3):
        workload_id = ok(cli("submit", "--name", f"done{i}", "--", "true")).strip()
        put_status(server, workload_id, "running")
        put_status(server, workload_id, "completed")
        finished.append(workload_id)
    active = [ok(cli("submit", "--", "sleep", str(i))).strip() for i in range(2)]
    put_status(server, active[0], "running")
    newest_first = [*active[::-1], *finished[::-1]]

    result = cli("ls", "--limit", "3", "--json")
    assert [w["id"] for w in json.loads(ok(result))] == newest_first[:3]
    assert result.stderr == "showing 3 of 5 (--limit N, --all)\n"
    whole = cli("ls", "--all", "-q")
    assert ok(whole).split() == newest_first and whole.stderr == ""
    assert ok(cli("ls", "-q")).split() == newest_first  # the default limit: 50
    cut_quiet = cli("ls", "--limit", "1", "-q")
    assert ok(cut_quiet).split() == [active[1]] and cut_quiet.stderr == ""  # ids only
    assert ok(cli("ls", "--name", "done1", "-q")).split() == [finished[1]]
    statuses = ok(cli("ls", "--status", "completed,running", "-q")).split()
    assert statuses == [active[0], *finished[::-1]]

    wide = ok(cli("ls", "-o", "wide", "--label", "none=x")) + ok(cli("ls", "-o", "wide"))
    assert wide.splitlines()[0].split() == [
        "ID", "NAME", "STATUS", "EXIT", "AGE", "CPUS", "MEM", "GPUS", "LABELS", "COMMAND",
        "REASON",
    ]  # fmt: skip
    empty = cli("ls", "--label", "none=x")
    assert (empty.stdout, empty.stderr) == ("", "no workloads\n")


LONG_REASON = "waiting for the moon to rise over the hills " * 3
LONG_COMMAND = ["python", "-c", "import time; time.sleep(1)  # " + "x" * 150]


@pytest.fixture(scope="module")
def crowded(server: LiveServer) -> tuple[str, list[str]]:
    """A user with workloads of long commands and long reasons, in every status."""
    key = new_user(server)
    ids = []
    for i, status in enumerate(("pending", "running", "failed", "killed", "completed")):
        args = ("submit", "--name", f"job-{i}", "--", *LONG_COMMAND)
        workload_id = ok(corral(*args, url=server.url, token=key)).strip()
        if status != "pending":
            put_status(server, workload_id, "running")
        if status == "failed":
            put_status(server, workload_id, "failed", exit_code=3, reason=LONG_REASON)
        elif status in ("killed", "completed"):
            put_status(server, workload_id, status, reason=LONG_REASON)
        ids.append(workload_id)
    return key, ids


@pytest.mark.parametrize("columns", [40, 60, 80, 120, 200])
def test_ls_never_cuts_an_id_at_any_width(
    server: LiveServer, crowded: tuple[str, list[str]], columns: int
) -> None:
    key, ids = crowded
    env = {**cli_env(server.url, key), "COLUMNS": str(columns)}
    result = subprocess.run(
        [sys.executable, "-m", "corral.cli", "ls"], capture_output=True, text=True, env=env
    )
    lines = ok(result).splitlines()
    assert {line.split()[0] for line in lines[1:]} == set(ids)
    assert all(ID_RE.match(line.split()[0]) for line in lines[1:])
    header = lines[0].split()
    assert header[:2] == ["ID", "NAME"] if columns >= 60 else header[0] == "ID"
    assert "STATUS" in header
    statuses = {"pending", "running", "failed", "killed", "completed"}
    assert {line.split()[2 if "NAME" in header else 1] for line in lines[1:]} == statuses
    if columns >= 60:  # room for the id, the name and the status at least
        assert max(len(line) for line in lines) <= columns
    if columns == 80:
        assert "REASON" not in header  # dropped before the command is
    if columns in (80, 120):
        assert any("…" in line for line in lines)  # the command, cut
    if columns == 200:
        assert "REASON" in header and "waiting for the moon" in "\n".join(lines)


def test_ls_wide_and_json_cut_nothing(server: LiveServer, crowded: tuple[str, list[str]]) -> None:
    key, ids = crowded
    env = {**cli_env(server.url, key), "COLUMNS": "80"}
    run = [sys.executable, "-m", "corral.cli", "ls"]
    wide = subprocess.run([*run, "-o", "wide"], capture_output=True, text=True, env=env)
    assert LONG_COMMAND[2] in ok(wide) and LONG_REASON.strip() in wide.stdout
    listed = json.loads(
        ok(subprocess.run([*run, "--json"], capture_output=True, text=True, env=env))
    )
    assert {w["id"] for w in listed} == set(ids)
    assert all(w["command"] == LONG_COMMAND for w in listed)
    assert {"depends_on", "stopping", "array_index"} <= set(listed[0])


def test_colour_only_on_a_terminal_and_never_with_no_color(
    server: LiveServer, crowded: tuple[str, list[str]]
) -> None:
    import pty

    key, _ = crowded

    def on_a_terminal(**extra: str) -> str:
        leader, follower = pty.openpty()
        env = {**cli_env(server.url, key), "COLUMNS": "200", "TERM": "xterm", **extra}
        env.pop("NO_COLOR", None) if not extra else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral.cli", "ls"], stdout=follower, stderr=follower, env=env
        )
        os.close(follower)
        out = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other end is closed
                break
            if not chunk:
                break
            out += chunk
        os.close(leader)
        assert proc.wait(timeout=60) == 0, out
        return out.decode()

    assert "\x1b[" in on_a_terminal()
    plain = on_a_terminal(NO_COLOR="1")
    assert "\x1b" not in plain and "pending" in plain


# --- exit statuses, from real processes -----------------------------------------------------


def test_exit_status_of_a_refused_key_is_4(server: LiveServer) -> None:
    bad = "corral_" + "x" * 43
    message = one_line_error(corral("ls", url=server.url, token=bad), 4)
    assert "refused the API key from $CORRAL_TOKEN" in message
    user = new_user(server)
    forbidden = one_line_error(corral("ls", "--all-users", url=server.url, token=user), 4)
    assert "is not an admin key" in forbidden


def test_exit_statuses(server: LiveServer) -> None:
    assert corral("ls", "--limit", "x", url=server.url).returncode == 2
    assert corral("ls", url=f"http://127.0.0.1:{free_port()}").returncode == 3
    assert corral("ls", url=server.url, token="corral_nope").returncode == 4
    assert corral("show", UNKNOWN_ID, url=server.url).returncode == 1
    pending = submit(server, "sleep", "60")
    assert corral("wait", pending, "--timeout", "0.2", url=server.url).returncode == 124
    assert corral("wait", pending, "--timeout", "0", url=server.url).returncode == 124
    done = submit(server, "true")
    put_status(server, done, "running")
    put_status(server, done, "failed", exit_code=7)
    assert corral("wait", done, url=server.url).returncode == 7


def test_an_interrupted_wait_exits_130_and_says_what_is_left(server: LiveServer) -> None:
    import signal

    workload_id = submit(server, "sleep", "60")
    proc = start("wait", workload_id, url=server.url)
    time.sleep(1.5)  # well into its polling
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().endswith(
        f"stopped waiting; {workload_id} is still pending (corral kill {workload_id} stops it)"
    )


def test_wait_for_several_exits_with_the_first_that_did_not_complete(server: LiveServer) -> None:
    key = new_user(server)
    label = f"run={uuid.uuid4().hex[:8]}"
    ids = [ok(corral("submit", "-l", label, "--", "true", url=server.url, token=key)).strip()
           for _ in range(3)]  # fmt: skip
    outcomes = [("completed", {}), ("failed", {"exit_code": 5}), ("failed", {"exit_code": 9})]
    for workload_id, (status, extra) in zip(ids, outcomes, strict=True):
        put_status(server, workload_id, "running")
        put_status(server, workload_id, status, **extra)
    result = corral("wait", *ids, url=server.url, token=key)
    assert result.returncode == 5
    assert result.stderr.splitlines()[-1] == "3 workloads: 1 completed, 2 failed"
    reverse = corral("wait", ids[2], ids[1], ids[0], url=server.url, token=key)
    assert reverse.returncode == 9
    by_label = corral("wait", "--label", label, "--json", url=server.url, token=key)
    assert by_label.returncode == 5  # in the order they were submitted
    assert [w["id"] for w in json.loads(by_label.stdout)] == ids
    completed = corral("wait", "--label", label, "--status", "completed", url=server.url, token=key)
    assert completed.returncode == 0


def test_wait_timeout_for_several(server: LiveServer) -> None:
    key = new_user(server)
    ids = [ok(corral("submit", "--", "true", url=server.url, token=key)).strip() for _ in range(2)]
    put_status(server, ids[0], "running")
    put_status(server, ids[0], "completed")
    result = corral("wait", *ids, "--timeout", "0.3", url=server.url, token=key)
    message = one_line_error(result, 124)
    assert (
        message == f"1 of 2 workloads not finished after waiting 0.3 s ({ids[1]} is still pending)"
    )


# --- kill in bulk ------------------------------------------------------------------------------


def test_kill_several_and_by_selectors(server: LiveServer) -> None:
    key = new_user(server)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return corral(*args, url=server.url, token=key)

    batch = [ok(cli("submit", "-l", "batch=b1", "--", "true")).strip() for _ in range(3)]
    other = ok(cli("submit", "-l", "batch=b2", "--name", "keep", "--", "true")).strip()
    put_status(server, batch[0], "running")
    killed = cli("kill", "--label", "batch=b1")
    assert sorted(ok(killed).split()) == sorted(["killed"] * 3 + batch)
    assert killed.stderr == ""
    assert {get(server, i)["status"] for i in batch} == {"killed"}
    assert get(server, other)["status"] == "pending"
    nothing = cli("kill", "--label", "batch=b1")
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert nothing.stderr == "no workload matches; nothing killed\n"

    two = [ok(cli("submit", "--", "true")).strip() for _ in range(2)]
    result = cli("kill", two[0], two[1][:20], batch[0], "--json")
    assert result.returncode == 1  # batch[0] had ended already
    report = json.loads(result.stdout)
    assert [w["id"] for w in report["killed"]] == two
    assert [(n["id"], n["status"]) for n in report["not_killed"]] == [(batch[0], "killed")]

    by_name = cli("kill", "--name", "keep", "--status", "pending")
    assert ok(by_name) == f"killed {other}\n"


def kill_all_on_a_terminal(server: LiveServer, key: str, answer: str) -> str:
    """``corral kill --all`` with a terminal as stdin, answering its question."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "kill", "--all"],
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(server.url, key),
    )
    os.close(follower)
    os.write(leader, answer.encode() + b"\n")
    stdout, stderr = proc.communicate(timeout=60)
    os.close(leader)
    assert proc.returncode == 0, stderr
    assert stderr.startswith("kill all 2 active workloads of yours? [y/N] ")
    return stdout


def test_kill_all_asks_on_a_terminal_and_not_with_yes(server: LiveServer) -> None:
    key = new_user(server)
    ids = [ok(corral("submit", "--", "true", url=server.url, token=key)).strip() for _ in range(2)]
    everyone_else = submit(server, "true")  # the admin's: not this user's to kill
    assert kill_all_on_a_terminal(server, key, "n") == ""
    assert {get(server, i)["status"] for i in ids} == {"pending"}
    assert sorted(kill_all_on_a_terminal(server, key, "y").split()) == sorted(
        ["killed", "killed", *ids]
    )
    more = [ok(corral("submit", "--", "true", url=server.url, token=key)).strip() for _ in range(2)]
    result = corral("kill", "--all", "-y", url=server.url, token=key)
    assert sorted(ok(result).split()) == sorted(["killed", "killed", *more])
    assert get(server, everyone_else)["status"] == "pending"


# --- status (see also test_cli_bulk), serve without the server's packages ------------


def test_status_without_an_executor(server: LiveServer) -> None:
    key = new_user(server)
    wid = ok(corral("submit", "--", "true", url=server.url, token=key)).strip()
    lines = ok(corral("status", url=server.url, token=key)).splitlines()
    assert lines[:9] == [
        f"server     {default_name()}",
        "leader     none (no server schedules now)",  # --executor none: no scheduler
        "executor   none",
        "capacity   cpus 0, memory 0, gpus 0",
        "used       cpus 0, memory 0, gpus 0",
        "free       cpus 0, memory 0, gpus 0",
        "workloads  1 pending",
        "",
        "queue: 1 pending, in scheduling order",  # read from the database, as a standby
    ]
    assert lines[9].split()[:2] == ["ID", "OWNER"] and lines[10].startswith(wid)
    assert len(lines) == 11


def test_serve_without_the_server_packages_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None; sys.modules['pydantic'] = None;"
        " sys.argv = ['corral', 'serve', '--data-dir', sys.argv[1]];"
        " from corral.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    message = one_line_error(result, 1)
    assert message.startswith("corral serve needs the server's packages (")
    assert message.endswith("pip install 'corral[server]'")


def test_a_batch_too_large_for_the_server_says_what_to_do(tmp_path: Path) -> None:
    from tests.scripted import ScriptedServer, problem

    too_large = problem(413, "body-too-large", "the request body is larger than 1048576 bytes")
    with ScriptedServer(too_large) as srv:
        result = corral("submit", "--array", "0-999", "--", "true", url=srv.url, token="k")
    message = one_line_error(result, 1)
    assert message.startswith("the request body is larger than 1048576 bytes (1000 workloads")
    assert "--export NONE" in message
    assert srv.seen[0].path == "/v1/workloads/batch"
    assert len(srv.seen[0].json()["items"]) == 1000
