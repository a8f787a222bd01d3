"""``corral completion bash|zsh|fish``: the scripts parse in their shell, and bash's
completes commands, flags, fixed values and workload ids (from a real server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import LiveServer
from tests.test_cli import SERVERS, cli_env, corral, ok, submit


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("complete"), "--executor", "none").start()
    SERVERS[live.url] = live
    yield live
    live.kill()


def script(shell: str) -> str:
    return ok(corral("completion", shell, url=""))


def test_bash_script_parses(tmp_path: Path) -> None:
    path = tmp_path / "corral.bash"
    path.write_text(script("bash"))
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("shell", "check"), [("zsh", ["zsh", "-n"]), ("fish", ["fish", "-n"])])
def test_zsh_and_fish_scripts_parse(tmp_path: Path, shell: str, check: list[str]) -> None:
    text = script(shell)
    assert " ls -q 2>/dev/null" in text
    if shutil.which(check[0]) is None:
        pytest.skip(f"{check[0]} is not installed")
    path = tmp_path / f"corral.{shell}"
    path.write_text(text)
    result = subprocess.run([*check, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def complete(server: LiveServer, tmp_path: Path, *words: str) -> list[str]:
    """What bash completes for the last of ``words`` (after ``corral``)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "corral"  # the CLI of this tree, as an installed corral would be
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} -m corral.cli "$@"\n')
    fake.chmod(0o755)
    path = tmp_path / "corral.bash"
    path.write_text(script("bash"))
    line = ["corral", *words]
    program = (
        f"source {path}\n"
        f"COMP_WORDS=({' '.join(_quote(w) for w in line)})\n"
        f"COMP_CWORD={len(line) - 1}\n"
        "_corral\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**cli_env(server.url), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.splitlines() if w]


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def test_bash_completes_commands_flags_values_and_ids(server: LiveServer, tmp_path: Path) -> None:
    assert set(complete(server, tmp_path, "s")) == {"serve", "submit", "show", "status"}
    assert "--version" in complete(server, tmp_path, "--")
    assert complete(server, tmp_path, "ls", "--status", "r") == ["running"]
    assert complete(server, tmp_path, "ls", "-o", "") == ["wide"]
    assert "--array" in complete(server, tmp_path, "submit", "--a")
    assert "--after-any" in complete(server, tmp_path, "submit", "--a")
    assert set(complete(server, tmp_path, "token", "")) == {"create", "list", "revoke"}
    assert "--unix-user" in complete(server, tmp_path, "token", "create", "--")
    assert complete(server, tmp_path, "completion", "f") == ["fish"]
    assert complete(server, tmp_path, "submit", "--name", "") == []  # a free value
    workload_id = submit(server, "true")
    assert workload_id in complete(server, tmp_path, "kill", "")
    assert complete(server, tmp_path, "show", workload_id[:-1]) == [workload_id]
    assert complete(server, tmp_path, "--server", server.url, "wait", workload_id[:-2]) == [
        workload_id
    ]


def test_fish_completes_commands_values_and_ids(server: LiveServer, tmp_path: Path) -> None:
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed")
    path = tmp_path / "corral.fish"
    path.write_text(script("fish"))
    workload_id = submit(server, "true")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "corral").write_text(f'#!/bin/sh\nexec {sys.executable} -m corral.cli "$@"\n')
    (bin_dir / "corral").chmod(0o755)
    env = {**cli_env(server.url), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def complete(line: str) -> list[str]:
        program = f"source {path}; complete -C {_quote(line)}"
        done = subprocess.run(["fish", "-c", program], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return [row.split("\t")[0] for row in done.stdout.splitlines()]

    assert set(complete("corral s")) == {"serve", "submit", "show", "status"}
    assert complete("corral ls --status r") == ["running"]
    assert set(complete("corral token ")) == {"create", "list", "revoke"}
    assert workload_id in complete("corral kill ")


def test_zsh_completes_commands_values_and_flags(tmp_path: Path) -> None:
    """zsh's completion system needs a terminal; its builtins are stood in for by
    functions that print what they are given."""
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed")
    path = tmp_path / "corral.zsh"
    path.write_text(script("zsh"))
    stubs = (
        "compdef() { :; }\n"
        'compadd() { local after=0; for a in "$@"; do'
        " if (( after )); then print -r -- $a;"
        " elif [[ $a == -- ]]; then after=1;"
        " elif [[ $a == -a ]]; then print -rl -- ${(P)${@[-1]}}; return; fi; done; }\n"
        "_describe() { print -rl -- ${(P)${@[-1]}}; }\n"
        "_files() { print -r -- '<files>'; }\n"
        f"source {path}\n"
    )

    def complete(*words: str) -> list[str]:
        program = stubs + (
            f"words=({' '.join(_quote(w) for w in ('corral', *words))}); "
            f"CURRENT={len(words) + 1}; _corral"
        )
        done = subprocess.run(["zsh", "-c", program], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    assert complete("ls", "--status", "") == ["pending", "running", "completed", "failed", "killed"]
    assert [c.split(":")[0] for c in complete("")][:3] == ["serve", "submit", "ls"]
    assert complete("token", "") == ["create", "list", "revoke"]
    assert {"--after", "--after-any", "--array"} <= set(complete("submit", "--a"))
    assert complete("submit", "--from-file", "") == ["<files>"]
