"""``spawn_session``: libc's posix_spawn through ctypes, as the local executor uses it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from corral.executors.spawn import spawn_session

SH = "/bin/sh"
SCRIPT = 'echo "X=$X"; echo err >&2; read line || echo "stdin empty"; cat /proc/self/stat'


def test_session_output_stdin_and_environment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        pid = spawn_session(SH, [SH, "-c", SCRIPT], {"X": "1", "PATH": "/usr/bin:/bin"}, fd)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lines = out.read_text().splitlines()
    assert lines[:3] == ["X=1", "err", "stdin empty"]
    stat = lines[3].rsplit(")", 1)[1].split()
    cat_pid, pgid, sid = int(lines[3].split()[0]), int(stat[2]), int(stat[3])
    assert sid == pid and pgid == pid and cat_pid != pid  # sh leads its own session


def test_errors_are_raised_not_reported_by_the_child(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        spawn_session(str(tmp_path / "missing"), ["missing"], {}, 1)
    with pytest.raises(ValueError, match="null byte"):
        spawn_session(SH, [SH, "-c", "true\0"], {}, 1)


@pytest.mark.timeout(20, method="thread")  # held GIL: a deadlock, ended by the timeout
def test_other_threads_run_while_it_waits_for_the_exec(tmp_path: Path) -> None:
    """os.posix_spawn holds the GIL until the child has exec'd; this call must not.
    Here the child cannot get to its exec until another Python thread opens the FIFO
    it takes as stdin (opening a FIFO to read waits for a writer)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def unblock() -> None:
        time.sleep(0.3)
        os.close(os.open(fifo, os.O_WRONLY))

    opener = threading.Thread(target=unblock, daemon=True)
    opener.start()
    start = time.monotonic()
    pid = spawn_session(SH, [SH, "-c", "true"], {}, 1, stdin=str(fifo))
    assert time.monotonic() - start >= 0.25  # it did wait for the other thread
    opener.join(timeout=5)
    os.waitpid(pid, 0)
