"""The shim (corral-shim) on real processes: exit statuses, spawn failures, kill
requests with escalation to SIGKILL, leftover processes, log completeness, memory."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.executors.local import find_shims
from corral.executors.shim import (
    SHIM_SOURCE,
    ShimBuildError,
    ShimStatus,
    ensure_shim,
    read_pid,
    read_status,
    shim_argv,
    state_file,
)
from tests.conftest import needs_root
from tests.server import pid_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_shim(tmp_path_factory.mktemp("shim-cache"))


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.005)


def live_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies (PID 1 here never reaps)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry))
    return members


@dataclass
class Run:
    """One shim started the way the server starts it: posix_spawn with setsid."""

    shim_pid: int
    state: Path
    log: Path
    returncode: int | None = None

    def exit_code(self, timeout: float = 5.0) -> int:
        """Waits for the shim to exit and returns its exit code."""

        def exited() -> bool:
            pid, wstatus = os.waitpid(self.shim_pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(wstatus)
            return pid != 0

        if self.returncode is None:
            wait_for(exited, timeout, "the shim to exit")
        assert self.returncode is not None
        return self.returncode

    def wait(self, timeout: float = 5.0) -> ShimStatus:
        """Waits for the shim to exit 0 and returns the status it wrote."""
        assert self.exit_code(timeout) == 0, self.log.read_text()
        status = read_status(self.state)
        assert status is not None
        return status

    def pid(self) -> int:
        wait_for(lambda: read_pid(self.state) is not None, what="the pid file")
        pid = read_pid(self.state)
        assert pid is not None
        return pid


@pytest.fixture
def start(shim: Path, tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def start(
        argv: Sequence[str],
        *,
        grace: float = 1.0,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        raw_args: Sequence[str] | None = None,
        state_dir_exists: bool = False,
        state: Path | None = None,
    ) -> Run:
        if state is None:
            (tmp_path / f"run{len(runs)}").mkdir(exist_ok=state_dir_exists)
            state = tmp_path / f"run{len(runs)}" / "w"
        log = tmp_path / f"log{len(runs)}"
        args = shim_argv(shim, state, grace, cwd, argv) if raw_args is None else [str(shim)]
        pid = os.posix_spawn(
            str(shim),
            [*args, *(raw_args or [])],
            os.environ if env is None else env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
        runs.append(Run(pid, state, log))
        return runs[-1]

    yield start
    for run in runs:  # a failed test must not leave processes behind
        if run.returncode is None:
            workload = read_pid(run.state)
            for kill, target in ((os.killpg, workload), (os.kill, run.shim_pid)):
                if target is not None:
                    with contextlib.suppress(ProcessLookupError):
                        kill(target, signal.SIGKILL)
            os.waitpid(run.shim_pid, 0)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["true"], ShimStatus("exit", 0)), (["sh", "-c", "exit 3"], ShimStatus("exit", 3))],
)
def test_exit_status_is_recorded(
    start: Callable[..., Run], argv: list[str], expected: ShimStatus
) -> None:
    run = start(argv)
    assert run.wait() == expected
    assert pid_gone(run.pid())
    # One state file: the status is the pid file's second line (shim.c).
    assert sorted(p.name for p in run.state.parent.iterdir()) == ["w.pid"]
    assert state_file(run.state, "pid").read_text() == (
        f"{run.pid()}\n{expected.kind} {expected.value}\n"
    )


def test_a_shim_that_never_forked_removes_a_stale_pid_file(
    start: Callable[..., Run], tmp_path: Path
) -> None:
    """A ``STATE.pid`` left by an earlier run on the same STATE, with its status, is
    not this shim's: one that fails before the fork (a bad umask: "spawn 22") removes
    it, so that its own ``STATE.status`` is what is read."""
    state_dir = tmp_path / "run0"
    state_dir.mkdir()
    (state_dir / "w.pid").write_text("1234\nexit 0\n")
    env = {"PATH": os.environ["PATH"], "CORRAL_SHIM_UMASK": "999"}
    run = start(["true"], env=env, state_dir_exists=True)
    assert run.wait() == ShimStatus("spawn", errno.EINVAL)
    assert sorted(p.name for p in state_dir.iterdir()) == ["w.status"]


@pytest.mark.parametrize("program", ["/nonexistent/program", "corral-no-such-program"])
def test_missing_program_is_a_spawn_failure(start: Callable[..., Run], program: str) -> None:
    run = start([program, "arg"])
    assert run.wait() == ShimStatus("spawn", errno.ENOENT)


def test_missing_cwd_is_a_chdir_failure(start: Callable[..., Run], tmp_path: Path) -> None:
    run = start(["true"], cwd=tmp_path / "missing")
    assert run.wait() == ShimStatus("chdir", errno.ENOENT)


def test_cwd_and_environment_reach_the_workload(start: Callable[..., Run], tmp_path: Path) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    env = {"PATH": os.environ["PATH"], "FOO": "bar baz"}
    run = start(["sh", "-c", 'pwd; echo "$FOO"; echo oops >&2'], cwd=workdir, env=env)
    assert run.wait() == ShimStatus("exit", 0)
    assert run.log.read_text() == f"{workdir}\nbar baz\noops\n"


def test_the_workload_gets_the_umask_it_is_given_and_state_files_are_private(
    start: Callable[..., Run],
) -> None:
    """``CORRAL_SHIM_UMASK`` is the workload's umask (and gone from its environment);
    the shim's own files are 0600 even when it runs with umask 000."""
    env = {"PATH": os.environ["PATH"], "CORRAL_SHIM_UMASK": "0027"}
    old = os.umask(0)
    try:
        run = start(["sh", "-c", "umask; env | grep -c CORRAL_SHIM || true"], env=env)
        assert run.wait() == ShimStatus("exit", 0)
    finally:
        os.umask(old)
    assert run.log.read_text() == "0027\n0\n"
    assert state_file(run.state, "pid").stat().st_mode & 0o777 == 0o600
    assert not state_file(run.state, "status").exists()  # (its status is in the pid file)


@pytest.mark.parametrize("mask", ["999", "1000", "-1", " 22", "", "0x1"])
def test_a_bad_umask_runs_nothing(start: Callable[..., Run], tmp_path: Path, mask: str) -> None:
    marker = tmp_path / "ran"
    env = {"PATH": os.environ["PATH"], "CORRAL_SHIM_UMASK": mask}
    run = start(["touch", str(marker)], env=env)
    assert run.wait() == ShimStatus("spawn", errno.EINVAL)
    assert not marker.exists()
    assert f"bad CORRAL_SHIM_UMASK: {mask}\n" in run.log.read_text()


@pytest.mark.parametrize(
    "variables",
    [
        {"CORRAL_SHIM_UID": "0"},
        {"CORRAL_SHIM_UID": "0", "CORRAL_SHIM_GID": "0"},
        {"CORRAL_SHIM_UID": "x", "CORRAL_SHIM_GID": "0", "CORRAL_SHIM_GROUPS": ""},
        {"CORRAL_SHIM_UID": "0", "CORRAL_SHIM_GID": "0", "CORRAL_SHIM_GROUPS": "1,,2"},
        {"CORRAL_SHIM_UID": "0", "CORRAL_SHIM_GID": "0", "CORRAL_SHIM_GROUPS": "1,"},
        {"CORRAL_SHIM_UID": "4294967295", "CORRAL_SHIM_GID": "0", "CORRAL_SHIM_GROUPS": ""},
    ],
    ids=["uid-alone", "no-groups", "bad-uid", "empty-group", "trailing-comma", "uid-minus-1"],
)
def test_a_bad_or_incomplete_user_runs_nothing(
    start: Callable[..., Run], tmp_path: Path, variables: dict[str, str]
) -> None:
    """Running as another user takes all three variables, well formed: anything else
    runs nothing (it must never run as the shim's own user instead)."""
    marker = tmp_path / "ran"
    run = start(["touch", str(marker)], env={"PATH": os.environ["PATH"], **variables})
    assert run.wait() == ShimStatus("spawn", errno.EINVAL)
    assert not marker.exists()
    assert "bad or incomplete CORRAL_SHIM_UID" in run.log.read_text()


def test_the_workload_inherits_no_descriptors_and_no_ignored_signals(
    start: Callable[..., Run],
) -> None:
    """The starter's inheritable descriptor 77 does not reach the workload, nor does
    any ignored signal: Python ignores SIGPIPE, and glibc's own signals 32 and 33
    (which its sigaction refuses to reset) came through ignored before."""
    r, w = os.pipe()
    os.dup2(w, 77, inheritable=True)
    try:
        script = "test -e /proc/$$/fd/77 && echo fd77 open || echo fd77 closed; "
        script += "grep SigIgn /proc/$$/status"
        run = start(["sh", "-c", script])
    finally:
        for fd in (77, r, w):
            os.close(fd)
    assert run.wait() == ShimStatus("exit", 0)
    assert run.log.read_text() == "fd77 closed\nSigIgn:\t0000000000000000\n"


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
def test_workload_killed_by_a_foreign_signal(start: Callable[..., Run], sig: int) -> None:
    run = start(["sleep", "100"])
    os.kill(run.pid(), sig)
    assert run.wait() == ShimStatus("signal", sig)


def test_sigterm_to_the_shim_terminates_the_workload(start: Callable[..., Run]) -> None:
    run = start(["sleep", "100"], grace=10)
    pid = run.pid()
    wait_for(lambda: bool(live_members(pid)), what="the workload")
    began = time.monotonic()
    os.kill(run.shim_pid, signal.SIGTERM)
    assert run.wait() == ShimStatus("signal", signal.SIGTERM)
    assert time.monotonic() - began < 1.0


def test_a_stopped_workload_is_continued_to_see_sigterm(start: Callable[..., Run]) -> None:
    run = start(["sleep", "100"], grace=10)
    pid = run.pid()
    wait_for(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "sleep", what="exec")
    os.kill(pid, signal.SIGSTOP)
    os.kill(run.shim_pid, signal.SIGTERM)
    assert run.wait(timeout=2) == ShimStatus("signal", signal.SIGTERM)


def test_a_shim_that_dies_before_recording_the_pid_runs_nothing(
    start: Callable[..., Run], tmp_path: Path
) -> None:
    """A FIFO where the pid file is written holds the shim just after its fork; it is
    SIGKILLed there. Its child must not run the command: with no pid file and no live
    shim, a restarted server starts the workload again."""
    marker = tmp_path / "ran"
    fifo = tmp_path / "run0" / "w.pid.tmp"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    run = start(["touch", str(marker)], state_dir_exists=True)
    children = Path(f"/proc/{run.shim_pid}/task/{run.shim_pid}/children")
    wait_for(lambda: children.read_text().strip() != "", what="the fork")
    child = int(children.read_text().split()[0])
    os.kill(run.shim_pid, signal.SIGKILL)
    assert run.exit_code() == -signal.SIGKILL
    wait_for(lambda: pid_gone(child), what="the child to exit")
    assert not marker.exists(), "the command ran though its shim never recorded it"
    assert read_pid(run.state) is None


def test_a_kill_before_the_workload_has_exec_d_is_answered(
    start: Callable[..., Run], shim: Path
) -> None:
    """The workload's process is stopped between the fork and the exec: the shim
    still answers SIGTERM instead of waiting for the exec. It used to block on its
    exec-error pipe there (found by a flaky run of the test above)."""
    run = start_held_before_exec(start, shim)
    os.kill(run.shim_pid, signal.SIGTERM)
    assert run.wait(timeout=3) == ShimStatus("signal", signal.SIGTERM)


def test_a_workload_before_its_exec_is_not_taken_for_its_shim(
    start: Callable[..., Run], shim: Path
) -> None:
    """Between the fork and the exec the workload's process has the shim's command
    line; a restart looking for shims must still find the shim (the session leader),
    or it would watch, and signal, the wrong process."""
    run = start_held_before_exec(start, shim)
    assert find_shims(run.state.parent) == {run.state.name: run.shim_pid}


def start_held_before_exec(start: Callable[..., Run], shim: Path) -> Run:
    """A shim whose workload is stopped between its fork and its exec: a PATH of
    40,000 missing directories makes that window tens of milliseconds wide."""
    path = ":".join(["/n"] * 40_000) + ":/usr/bin:/bin"  # under 128 kB, one variable's limit
    run = start(["sleep", "100"], grace=10, env={"PATH": path})
    pid = run.pid()
    os.kill(pid, signal.SIGSTOP)
    assert Path(f"/proc/{pid}/comm").read_text().strip() == shim.name[:15], "exec'd already"
    return run


def test_sigterm_escalates_to_sigkill_for_the_whole_group(start: Callable[..., Run]) -> None:
    run = start(["sh", "-c", 'trap "" TERM; sleep 100 & sleep 100; wait'], grace=0.5)
    pid = run.pid()
    wait_for(lambda: len(live_members(pid)) == 3, what="sh and its two sleeps")
    began = time.monotonic()
    os.kill(run.shim_pid, signal.SIGTERM)
    assert run.wait() == ShimStatus("signal", signal.SIGKILL)
    took = time.monotonic() - began
    assert 0.5 <= took < 3.0
    assert live_members(pid) == []


def test_no_command_runs_unless_its_pid_file_is_written(
    start: Callable[..., Run], tmp_path: Path
) -> None:
    """A restarted server starts a running workload that has neither a live shim nor a
    pid file; that is only safe if the command cannot run before the pid file exists.
    A shim that cannot write the pid file runs nothing and reports a spawn failure,
    once it can write its status (it retries until then)."""
    ran, not_ran = tmp_path / "ran", tmp_path / "not-ran"
    assert start(["touch", str(ran)]).wait() == ShimStatus("exit", 0)
    assert ran.exists()

    missing = tmp_path / "no-such-dir"
    args = shim_argv(Path("shim"), missing / "w", 1.0, None, ["touch", str(not_ran)])[1:]
    blocked = start([], raw_args=args)
    wait_for(lambda: "retrying" in blocked.log.read_text(), what="the shim to say it retries")
    time.sleep(0.3)
    assert not pid_gone(blocked.shim_pid), "the shim gave up on its status"
    assert not not_ran.exists(), "the command ran without a pid file"
    log = blocked.log.read_text()
    assert f"cannot write {missing}/w.pid: No such file or directory\n" in log
    assert log.count("retrying") == 1, log
    missing.mkdir()
    assert blocked.exit_code() == 0
    assert read_status(missing / "w") == ShimStatus("spawn", errno.ENOENT)
    assert not not_ran.exists()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 kB tmpfs, unmounted afterwards (root only)."""
    needs_root("mounting a tmpfs")
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)


def fill(path: Path) -> None:
    """Writes ``path`` until its file system is full."""
    with open(path, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"x" * 4096)
        with contextlib.suppress(OSError):  # the last partial page
            while True:
                f.write(b"x")
    probe = path.parent / "probe"
    with pytest.raises(OSError) as full:
        probe.write_bytes(b"x")
    probe.unlink()
    assert full.value.errno == errno.ENOSPC


def test_a_full_disk_does_not_stop_the_status_appended_to_the_pid_file(
    start: Callable[..., Run], small_tmpfs: Path, tmp_path: Path
) -> None:
    """The status goes into the pid file's block, which is there already: a file
    system that filled up while the workload ran still takes it, at once."""
    flag = tmp_path / "go"
    script = f"while [ ! -e {flag} ]; do sleep 0.02; done; exit 7"
    run = start(["sh", "-c", script], state=small_tmpfs / "w")
    pid = run.pid()
    fill(small_tmpfs / "filler")
    flag.touch()
    assert run.wait() == ShimStatus("exit", 7)
    assert state_file(run.state, "pid").read_text() == f"{pid}\nexit 7\n"
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler", "w.pid"]
    assert "cannot write" not in run.log.read_text()


def test_a_status_that_cannot_be_written_is_retried_until_it_is(
    start: Callable[..., Run], small_tmpfs: Path, tmp_path: Path
) -> None:
    """The pid file is gone (so nothing can be appended to it) and the state files
    are on a tmpfs that fills up while the workload runs: the workload exits, the
    shim cannot write ``STATE.status`` and stays, saying why once, and writes the
    true exit code as soon as there is room (it used to exit 1 with no status, and
    the server took the workload for lost)."""
    flag = tmp_path / "go"
    script = f"while [ ! -e {flag} ]; do sleep 0.02; done; exit 7"
    run = start(["sh", "-c", script], state=small_tmpfs / "w")
    pid = run.pid()
    state_file(run.state, "pid").unlink()
    filler = small_tmpfs / "filler"
    fill(filler)
    flag.touch()
    wait_for(lambda: pid_gone(pid), what="the workload to exit")
    wait_for(lambda: "retrying" in run.log.read_text(), what="the shim to say it retries")
    time.sleep(1.5)  # several retries
    assert not pid_gone(run.shim_pid), "the shim gave up"
    assert read_status(run.state) is None
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]
    log = run.log.read_text()
    assert log.count("corral-shim: cannot write") == 1, log
    assert f"cannot write {small_tmpfs}/w.status: No space left on device" in log
    filler.unlink()
    assert run.wait(timeout=3) == ShimStatus("exit", 7)
    assert run.log.read_text().endswith(f"corral-shim: wrote {small_tmpfs}/w.status\n")


@pytest.mark.parametrize(
    ("leftover", "min_seconds"),
    [("sleep 100 & echo $!", 0.0), ('trap "" TERM; sleep 100 & echo $!', 0.3)],
    ids=["cooperative", "ignores-sigterm"],
)
def test_leftover_processes_do_not_outlive_the_workload(
    start: Callable[..., Run], leftover: str, min_seconds: float
) -> None:
    began = time.monotonic()
    run = start(["sh", "-c", f"{leftover}; exit 0"], grace=0.3)
    assert run.wait() == ShimStatus("exit", 0)
    assert min_seconds <= time.monotonic() - began < 2.0
    leftover_pid = int(run.log.read_text().split()[0])
    assert pid_gone(leftover_pid)
    assert live_members(run.pid()) == []


def test_log_is_complete_when_the_status_appears(start: Callable[..., Run]) -> None:
    run = start(["sh", "-c", 'head -c 1000000 /dev/zero | tr "\\0" x; echo END'])
    wait_for(lambda: read_status(run.state) is not None, what="the status file")
    assert run.log.read_bytes() == b"x" * 1_000_000 + b"END\n"
    assert run.wait() == ShimStatus("exit", 0)


def test_shim_memory_is_small(start: Callable[..., Run]) -> None:
    run = start(["sleep", "100"])
    wait_for(lambda: bool(live_members(run.pid())), what="the workload")
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{run.shim_pid}/status").read_text().splitlines()
    )
    rollup = Path(f"/proc/{run.shim_pid}/smaps_rollup").read_text().splitlines()[1:]
    smaps = dict(line.split(":", 1) for line in rollup)
    rss_kb = int(fields["VmRSS"].split()[0])
    print(
        f"\ncorral-shim VmRSS {rss_kb} kB (anonymous {smaps['Anonymous'].strip()},"
        f" file-backed, shared between shims {fields['RssFile'].strip()})"
    )
    assert rss_kb < 2048
    os.kill(run.shim_pid, signal.SIGTERM)
    assert run.wait() == ShimStatus("signal", signal.SIGTERM)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["st", "1", ""],
        ["st", "1", "", "true"],
        ["st", "x", "", "--", "true"],
        ["st", "-1", "", "--", "true"],
    ],
)
def test_bad_arguments_exit_2(start: Callable[..., Run], args: list[str]) -> None:
    run = start([], raw_args=args)
    assert run.exit_code() == 2
    assert "usage: corral-shim" in run.log.read_text()
    assert not state_file(run.state, "status").exists()


@contextlib.contextmanager
def watched() -> Iterator[subprocess.Popen[bytes]]:
    """A process to watch (a ``sleep``), killed and reaped at the end if still there."""
    proc = subprocess.Popen(["sleep", "100"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def watch_env(pid: int | str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "CORRAL_SHIM_WATCH_PID": str(pid)}


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
@pytest.mark.parametrize(
    ("trap", "grace", "expected"),
    [("", 10.0, signal.SIGTERM), ('trap "" TERM; ', 0.5, signal.SIGKILL)],
    ids=["cooperative", "ignores-sigterm"],
)
def test_the_exit_of_the_watched_process_stops_the_whole_group(
    start: Callable[..., Run], trap: str, grace: float, expected: int, reap: bool
) -> None:
    """``CORRAL_SHIM_WATCH_PID``: the watched process exits (and, as PID 1 here
    never reaps orphans, may stay a zombie): the shim stops the workload and its
    grandchild as for a kill, SIGKILL after the grace for one that ignores SIGTERM."""
    with watched() as agent:
        script = f"{trap}sleep 100 & sleep 100; wait"
        run = start(["sh", "-c", script], grace=grace, env=watch_env(agent.pid))
        pid = run.pid()
        wait_for(lambda: len(live_members(pid)) == 3, what="sh and its two sleeps")
        began = time.monotonic()
        agent.kill()
        if reap:
            agent.wait()
        else:
            wait_for(lambda: pid_gone(agent.pid), what="the watched process to exit")
        assert run.wait(timeout=grace + 5) == ShimStatus("signal", expected)
        took = time.monotonic() - began
    assert live_members(pid) == []
    assert took < grace + 2.0 if expected == signal.SIGKILL else took < 2.0
    assert "the watched process has exited" in run.log.read_text()


def test_a_watched_process_that_lives_on_changes_nothing(start: Callable[..., Run]) -> None:
    """The workload runs to its end, without the shim's instruction in its environment."""
    with watched() as agent:
        script = "sleep 0.7; env | grep -c CORRAL_SHIM || true"
        run = start(["sh", "-c", script], env=watch_env(agent.pid))
        assert run.wait() == ShimStatus("exit", 0)
        assert agent.poll() is None
    assert run.log.read_text() == "0\n"


@pytest.mark.parametrize("zombie", [False, True], ids=["reaped", "zombie"])
def test_a_watched_process_already_gone_runs_nothing(
    start: Callable[..., Run], tmp_path: Path, zombie: bool
) -> None:
    """Gone means exited: a zombie (unreaped child) counts, as a reaped one does."""
    marker = tmp_path / "ran"
    proc = subprocess.Popen(["true"])
    try:
        if zombie:
            wait_for(lambda: pid_gone(proc.pid), what="the child to exit")
            assert Path(f"/proc/{proc.pid}").exists(), "reaped: no zombie"
        else:
            proc.wait()
        run = start(["touch", str(marker)], env=watch_env(proc.pid))
        assert run.wait() == ShimStatus("spawn", errno.ESRCH)
    finally:
        proc.wait()
    assert not marker.exists()
    assert "cannot watch the process given in CORRAL_SHIM_WATCH_PID: No such process" in (
        run.log.read_text()
    )


@pytest.mark.parametrize("value", ["0", "-1", "x", "", " 5", "12a", "99999999999"])
def test_a_bad_watch_pid_runs_nothing(
    start: Callable[..., Run], tmp_path: Path, value: str
) -> None:
    marker = tmp_path / "ran"
    run = start(["touch", str(marker)], env=watch_env(value))
    assert run.wait() == ShimStatus("spawn", errno.EINVAL)
    assert not marker.exists()
    assert f"bad CORRAL_SHIM_WATCH_PID: {value}\n" in run.log.read_text()


def test_shim_source_compiles_without_warnings(tmp_path: Path) -> None:
    cc = os.environ.get("CC") or "cc"
    flags = ["-O2", "-Wall", "-Wextra", "-Werror", "-c", "-o", str(tmp_path / "shim.o")]
    subprocess.run([cc, *flags, str(SHIM_SOURCE)], check=True)


def test_ensure_shim_is_cached_by_source_hash(shim: Path) -> None:
    digest = hashlib.sha256(SHIM_SOURCE.read_bytes()).hexdigest()[:12]
    assert shim.name == f"corral-shim-{digest}"
    before = shim.stat().st_mtime_ns
    assert ensure_shim(shim.parent) == shim
    assert shim.stat().st_mtime_ns == before
    assert [p.name for p in shim.parent.iterdir()] == [shim.name]


def test_ensure_shim_copies_a_prebuilt_shim_without_compiling(
    shim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A wheel's shim is copied into the private cache (a file its owner replaces later
    is not the one run), named for the source, and no compiler is needed."""
    prebuilt = tmp_path / "site-packages" / "corral-shim"
    prebuilt.parent.mkdir()
    prebuilt.write_bytes(shim.read_bytes())
    prebuilt.chmod(0o644)  # as a wheel installed without the x bit would leave it
    monkeypatch.setenv("CC", "/nonexistent/cc")
    cache = tmp_path / "data" / "bin"
    with caplog.at_level("INFO", logger="corral.executors.shim"):
        installed = ensure_shim(cache, prebuilt)
    assert installed == cache / shim.name
    assert installed.read_bytes() == shim.read_bytes()
    assert installed.stat().st_ino != prebuilt.stat().st_ino
    assert installed.stat().st_mode & 0o777 == 0o755
    assert caplog.records == []
    prebuilt.write_bytes(b"#!/bin/sh\necho replaced\n")
    assert ensure_shim(cache, prebuilt).read_bytes() == shim.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [shim.name]
    ran = subprocess.run([installed], capture_output=True, text=True, check=False)
    assert "usage: corral-shim" in ran.stderr


def test_ensure_shim_replaces_a_shim_of_another_source_version(
    shim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgraded corral (another shim.c) never runs the shim an older one installed."""
    prebuilt = tmp_path / "corral-shim"
    prebuilt.write_bytes(shim.read_bytes())
    cache = tmp_path / "bin"
    cache.mkdir()
    old = cache / "corral-shim-000000000000"
    old.write_bytes(b"#!/bin/sh\nexit 0\n")
    old.chmod(0o755)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert ensure_shim(cache, prebuilt) == cache / shim.name


def test_ensure_shim_compiles_without_a_prebuilt_shim_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "bin"
    with caplog.at_level("INFO", logger="corral.executors.shim"):
        installed = ensure_shim(cache, tmp_path / "no-such-prebuilt")
        assert ensure_shim(cache, None) == installed
    assert os.access(installed, os.X_OK)
    assert [r.getMessage() for r in caplog.records] == [
        f"no prebuilt corral-shim in this install; compiling {SHIM_SOURCE} with cc"
    ]


def test_ensure_shim_without_a_prebuilt_shim_nor_a_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error names both ways out: a compiler, or a wheel (which carries the shim)."""
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(ShimBuildError) as error:
        ensure_shim(tmp_path, tmp_path / "no-such-prebuilt")
    message = str(error.value)
    assert "no prebuilt corral-shim in this install" in message
    assert "install a C compiler (e.g. gcc, or set CC)" in message
    assert "install corral from a wheel" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_ensure_shim_with_a_failing_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "false")
    with pytest.raises(ShimBuildError, match="install gcc"):
        ensure_shim(tmp_path, None)
    assert list(tmp_path.iterdir()) == []


def test_state_files_are_read_strictly(tmp_path: Path) -> None:
    assert read_status(tmp_path / "w") is None
    assert read_pid(tmp_path / "w") is None
    (tmp_path / "w.status").write_text("signal 15\n")
    (tmp_path / "w.pid").write_text("1234\n")
    assert read_status(tmp_path / "w") == ShimStatus("signal", 15)
    assert read_pid(tmp_path / "w") == 1234
    assert read_status(tmp_path / "w").separate  # (from w.status: forget removes it)
    # The status appended to the pid file comes first, once its line is whole.
    (tmp_path / "w.pid").write_text("1234\nexit 3")
    assert read_status(tmp_path / "w") == ShimStatus("signal", 15)
    (tmp_path / "w.pid").write_text("1234\nexit 3\n")
    status = read_status(tmp_path / "w")
    assert status == ShimStatus("exit", 3) and not status.separate
    assert read_pid(tmp_path / "w") == 1234
    (tmp_path / "w.pid").write_text("1234\nexit 3x\n")
    with pytest.raises(ValueError):
        read_status(tmp_path / "w")
    (tmp_path / "w.status").write_text("exited 0\n")
    (tmp_path / "w.pid").write_text("12x\n")
    with pytest.raises(ValueError):
        read_status(tmp_path / "w")
    with pytest.raises(ValueError):
        read_pid(tmp_path / "w")
    (tmp_path / "w.pid").write_text("12x\nexit 0\n")
    with pytest.raises(ValueError):
        read_pid(tmp_path / "w")
