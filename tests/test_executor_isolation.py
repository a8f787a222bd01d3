"""The local executor keeps workloads apart: private files whatever the umask, the
umask the server was started with for workloads, and (as root) workloads run as
the Unix user their owner maps to.

These drive ``LocalExecutor`` directly on a real event loop, with real shims and
processes: the scheduler's part (handing over ``RunAs``) is tested with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from corral.executors.base import Capacity, Outcome, RunAs, resolve_run_as
from corral.executors.local import LocalExecutor, find_shims, is_alive, kill_all
from corral.executors.shim import ShimStatus, read_pid, read_status, shim_argv, state_file
from corral.logs import log_path, ring_path
from corral.model import Workload
from tests.conftest import needs_root
from tests.executors import make_workload

T = TypeVar("T")


class Harness:
    """One ``LocalExecutor`` started on the running loop; outcomes by workload id."""

    def __init__(
        self,
        data_dir: Path,
        *,
        grace: float = 1.0,
        workload_umask: int | None = None,
        max_log_bytes: int | None = None,
    ) -> None:
        self.executor = LocalExecutor(
            data_dir,
            capacity=Capacity(cpus=2, memory_mb=1024, gpus=1),
            kill_grace_seconds=grace,
            workload_umask=workload_umask,
            max_log_bytes=max_log_bytes,
        )
        self.outcomes: dict[str, asyncio.Future[Outcome]] = {}
        self.executor.start(self._on_exit)

    def _on_exit(self, outcome: Outcome) -> None:
        self._future(outcome.workload_id).set_result(outcome)

    def _future(self, workload_id: str) -> asyncio.Future[Outcome]:
        if workload_id not in self.outcomes:
            self.outcomes[workload_id] = asyncio.get_running_loop().create_future()
        return self.outcomes[workload_id]

    async def launch(
        self, workload: Workload, gpu_devices: Sequence[int] = (), run_as: RunAs | None = None
    ) -> None:
        await self.executor.launch(workload, gpu_devices, run_as)

    async def outcome(self, workload: Workload, timeout: float = 10.0) -> Outcome:
        return await asyncio.wait_for(asyncio.shield(self._future(workload.id)), timeout)

    def log(self, workload: Workload) -> Path:
        return log_path(self.executor.data_dir, workload.id)


async def until(predicate: Callable[[], T], timeout: float = 5.0, what: str = "") -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)
    return value


def run(main: Callable[[], Coroutine[object, object, None]]) -> None:
    asyncio.run(main())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "data"
    yield data
    kill_all(data / "run")


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_files_are_0600_whatever_the_umask_and_workloads_get_the_servers(
    data_dir: Path, tmp_path: Path
) -> None:
    """The test process runs with umask 000 (so does the launcher it starts, and every
    shim): the log, the pid, devices, status and launcher files are 0600 all the same,
    and the workload gets the umask it is given (the server's original one), not the
    shim's; a ``CORRAL_SHIM_UMASK`` of the workload's own is dropped."""
    flag = tmp_path / "go"
    script = f"umask; env | grep -c CORRAL_SHIM; while [ ! -e {flag} ]; do sleep 0.02; done"
    w = make_workload(["sh", "-c", script], env={"CORRAL_SHIM_UMASK": "0000"})

    async def main() -> None:
        h = Harness(data_dir, workload_umask=0o027)
        try:
            await h.launch(w, [0])
            state = h.executor.run_dir / w.id
            await until(lambda: state_file(state, "pid").exists(), what="the pid file")
            for path in (h.log(w), state_file(state, "pid"), state_file(state, "devices")):
                assert mode(path) == 0o600, path
            flag.touch()
            outcome = await h.outcome(w)
            assert outcome.exit_code == 0
            assert read_status(state) == ShimStatus("exit", 0)  # in the pid file, still 0600
            assert mode(state_file(state, "pid")) == 0o600
            assert not state_file(state, "status").exists()
            assert mode(h.executor.run_dir / "launcher.log") == 0o600
            assert h.log(w).read_text() == "0027\n0\n"
        finally:
            h.executor.close()

    with umask(0):
        run(main)


def test_without_a_workload_umask_the_workload_keeps_the_shims(data_dir: Path) -> None:
    w = make_workload(["sh", "-c", "umask"])

    async def main() -> None:
        h = Harness(data_dir)
        try:
            await h.launch(w)
            assert (await h.outcome(w)).exit_code == 0
            assert h.log(w).read_text() == "0077\n"
        finally:
            h.executor.close()

    with umask(0o077):
        run(main)


def test_resolve_run_as() -> None:
    root = resolve_run_as("root")
    assert (root.uid, root.gid, root.name) == (0, 0, "root")
    assert root.home == pwd.getpwnam("root").pw_dir
    assert root.groups[0] == 0 and set(root.groups) == set(os.getgrouplist("root", 0))
    with pytest.raises(ValueError, match="no Unix user named 'corral-no-such-user'"):
        resolve_run_as("corral-no-such-user")


# --- as other Unix users (root only) ------------------------------------------------

GROUP, USER_A, USER_B = "corral-tg", "corral-ta", "corral-tb"


@dataclass(frozen=True)
class Users:
    a: RunAs
    """In the extra group ``corral-tg``."""
    b: RunAs
    group: int


def _ensure(kind: str, name: str, *args: str) -> None:
    """``groupadd``/``useradd`` NAME unless it exists (another session may create it
    at the same moment: exists afterwards is what counts)."""
    lookup = grp.getgrnam if kind == "groupadd" else pwd.getpwnam
    with contextlib.suppress(KeyError):
        lookup(name)
        return
    done = subprocess.run([kind, *args, name], capture_output=True, text=True, check=False)
    try:
        lookup(name)
    except KeyError:
        raise AssertionError(f"{kind} {name} failed: {done.stderr}") from None


@pytest.fixture(scope="session")
def users() -> Users:
    """Two accounts, created once (and left for the next run: useradd is idempotent
    here); ``corral-ta`` is also in ``corral-tg``."""
    needs_root("running workloads as other users (useradd, setuid)")
    _ensure("groupadd", GROUP)
    _ensure("useradd", USER_A, "-m", "-G", GROUP)
    _ensure("useradd", USER_B, "-m")
    if USER_A not in grp.getgrnam(GROUP).gr_mem:
        subprocess.run(["usermod", "-aG", GROUP, USER_A], check=True)
    return Users(resolve_run_as(USER_A), resolve_run_as(USER_B), grp.getgrnam(GROUP).gr_gid)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A data dir the test users can walk through (pytest's own is 0700 root), so that
    what keeps them out of a log is the log's own mode."""
    top = Path(tempfile.mkdtemp(prefix="corral-users-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        kill_all(top / "data" / "run")
        shutil.rmtree(top, ignore_errors=True)


def proc_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # real, effective, saved, fs
    raise AssertionError(pid)


def gone(pid: int) -> bool:
    return not is_alive(pid)  # a zombie counts as gone: PID 1 here does not reap


def test_a_workload_runs_as_its_user_with_its_groups_and_home(
    users: Users, shared_dir: Path
) -> None:
    # An exported shell's identity (root's, say) does not pass for the account's.
    w = make_workload(
        ["sh", "-c", "id -u; id -g; id -G; echo $HOME $USER $LOGNAME"],
        env={"HOME": "/root", "USER": "root", "LOGNAME": "root"},
    )

    async def main() -> None:
        h = Harness(shared_dir / "data", workload_umask=0o022)
        try:
            await h.launch(w, run_as=users.a)
            assert (await h.outcome(w)).exit_code == 0
            log = h.log(w)
            uid, gid, groups, env = log.read_text().splitlines()
            assert (int(uid), int(gid)) == (users.a.uid, users.a.gid)
            assert {int(g) for g in groups.split()} == set(users.a.groups)
            assert users.group in users.a.groups
            assert env.split() == [users.a.home, USER_A, USER_A]
            assert users.a.home == f"/home/{USER_A}"
            owner = log.stat()
            assert (owner.st_uid, owner.st_gid, mode(log)) == (users.a.uid, users.a.gid, 0o600)
        finally:
            h.executor.close()

    run(main)


def test_a_capped_log_and_its_ring_are_the_users(users: Users, shared_dir: Path) -> None:
    """Under ``--max-log-bytes`` the shim (root) writes the log of a workload run as a
    user: the ring beside it, while it runs, and the finished log are that user's,
    0600."""
    flag = shared_dir / "go"
    script = f"yes | head -c 5000; while [ ! -e {flag} ]; do sleep 0.02; done; echo end"
    w = make_workload(["sh", "-c", script])

    async def main() -> None:
        h = Harness(shared_dir / "data", max_log_bytes=100)
        try:
            await h.launch(w, run_as=users.a)
            ring = ring_path(h.log(w))
            await until(ring.exists, what="the ring")
            for path in (h.log(w), ring):
                owner = path.stat()
                assert (owner.st_uid, owner.st_gid, mode(path)) == (users.a.uid, users.a.gid, 0o600)
            flag.touch()
            assert (await h.outcome(w)).exit_code == 0
            assert h.log(w).read_bytes() == b"y\n" * 25 + b"[corral: 4904 bytes dropped]\n" + (
                b"y\n" * 23 + b"end\n"
            )
            assert h.log(w).stat().st_uid == users.a.uid and not ring.exists()
        finally:
            h.executor.close()

    run(main)


def test_a_user_cannot_read_another_users_log_nor_enter_a_closed_cwd(
    users: Users, shared_dir: Path
) -> None:
    """The log of corral-tb's workload is 0600 and corral-tb's: corral-ta's workload
    cannot read it, though it can reach it. The user's rights apply to the workload's
    cwd too (the change of user comes before the chdir)."""
    b = make_workload(["echo", "secret of b"])
    closed = shared_dir / "closed"
    closed.mkdir(mode=0o700)

    async def main() -> None:
        h = Harness(shared_dir / "data")
        try:
            await h.launch(b, run_as=users.b)
            assert (await h.outcome(b)).exit_code == 0
            b_log = h.log(b)
            assert b_log.read_text() == "secret of b\n"  # the server (root) reads it
            assert (b_log.stat().st_uid, mode(b_log)) == (users.b.uid, 0o600)

            a = make_workload(["sh", "-c", f"ls -l {b_log}; cat {b_log}"])
            await h.launch(a, run_as=users.a)
            assert (await h.outcome(a)).exit_code == 1
            text = h.log(a).read_text()
            assert f"{b_log.name}\n" in text, "it can see the file..."
            assert f"cat: {b_log}: Permission denied\n" in text, "...but not read it"
            assert "secret" not in text

            c = make_workload(["true"], cwd=str(closed))
            await h.launch(c, run_as=users.a)
            outcome = await h.outcome(c)
            assert outcome.spawn_error == f"cwd {closed}: Permission denied"
            d = make_workload(["true"], cwd=str(closed))
            await h.launch(d)  # the server's own user (root) may
            assert (await h.outcome(d)).exit_code == 0
        finally:
            h.executor.close()

    run(main)


@pytest.mark.parametrize(
    ("script", "expected", "min_seconds"),
    [
        ("sleep 300 & echo $$ $!; wait", signal.SIGTERM, 0.0),
        ('trap "" TERM; sleep 300 & echo $$ $!; wait', signal.SIGKILL, 1.0),
    ],
    ids=["cooperative", "ignores-sigterm"],
)
def test_terminate_still_stops_a_users_workload_and_its_group(
    users: Users, shared_dir: Path, script: str, expected: int, min_seconds: float
) -> None:
    """The shim stays root while its workload runs as the user, so SIGTERM, then
    SIGKILL after the grace period (1 s), reach the whole group."""
    w = make_workload(["sh", "-c", script])

    async def main() -> None:
        h = Harness(shared_dir / "data", grace=1.0)
        try:
            await h.launch(w, run_as=users.a)
            text = await until(lambda: h.log(w).read_text().strip(), what="the pids")
            pids = [int(p) for p in text.split()]
            shim = find_shims(h.executor.run_dir)[w.id]
            assert [proc_uid(p) for p in pids] == [users.a.uid] * 2
            assert proc_uid(shim) == 0
            began = time.monotonic()
            h.executor.terminate(w.id)
            outcome = await h.outcome(w, timeout=10)
            took = time.monotonic() - began
            assert outcome.signal == expected
            assert min_seconds <= took < min_seconds + 1.5, took
            assert all(gone(p) for p in pids)
        finally:
            h.executor.close()

    run(main)


def test_a_restarted_server_adopts_and_stops_a_users_workload(
    users: Users, shared_dir: Path
) -> None:
    """Shims are found by their command line, whoever their workload runs as: a new
    executor on the same data dir adopts the shim and can still stop the workload."""
    w = make_workload(["sleep", "300"])

    async def main() -> None:
        first = Harness(shared_dir / "data")
        await first.launch(w, run_as=users.a)
        state = first.executor.run_dir / w.id
        pid = await until(lambda: read_pid(state), what="the pid file")
        await until(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "sleep")
        first.executor.close()  # the server stops; its shims live on
        second = Harness(shared_dir / "data")
        try:
            assert second.executor.adopt(w) == []  # watched again, not lost
            assert second.executor.active() == {w.id}
            assert proc_uid(pid) == users.a.uid
            second.executor.terminate(w.id)
            assert (await second.outcome(w)).signal == signal.SIGTERM
            assert gone(pid)
        finally:
            second.executor.close()

    run(main)


def test_a_shim_that_cannot_change_user_reports_a_spawn_failure(
    users: Users, shared_dir: Path
) -> None:
    """Dropping to the user is checked: a shim without the right to (run as
    corral-ta, asked for corral-tb) runs nothing and records ``spawn EPERM``."""
    h_dir = shared_dir / "data"
    shim = LocalExecutor(
        h_dir, capacity=Capacity(cpus=1, memory_mb=1, gpus=0), kill_grace_seconds=1
    ).shim
    state_dir = shared_dir / "a-state"
    state_dir.mkdir()
    os.chown(state_dir, users.a.uid, users.a.gid)
    marker = shared_dir / "ran"
    env = {
        "PATH": os.environ["PATH"],
        "CORRAL_SHIM_UID": str(users.b.uid),
        "CORRAL_SHIM_GID": str(users.b.gid),
        "CORRAL_SHIM_GROUPS": ",".join(map(str, users.b.groups)),
    }
    argv = shim_argv(shim, state_dir / "w", 1.0, None, ["touch", str(marker)])
    with open(shared_dir / "log", "wb") as log:
        done = subprocess.run(
            argv, env=env, stdout=log, stderr=log, user=users.a.uid, group=users.a.gid,
            extra_groups=[], timeout=10, check=False,
        )  # fmt: skip
    assert done.returncode == 0
    assert read_status(state_dir / "w") == ShimStatus("spawn", errno.EPERM)
    assert not marker.exists()
