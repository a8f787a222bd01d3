"""``LocalExecutor``: runs workloads as processes on this machine.

Each workload runs under its own ``corral-shim`` (see ``shim.c``), a session leader
forked by the resident shim launcher (``launcher.py``; ``posix_spawn`` of the shim
when a request does not fit the launcher). The shim runs the command in its own process
group with stdout and stderr on ``<data>/logs/<id>.log`` (with ``max_log_bytes``, on
a pipe the shim copies into it, keeping head and tail: ``corral.logs``), forwards
kill requests to the group (SIGTERM, then SIGKILL after the grace period), and
writes how the command ended to ``<data>/run/<id>.status``. Because the shim, not the
server, is the parent, a restarted server re-adopts running workloads and still
learns their exit codes.

Exits are noticed without threads or polling: each shim has a pidfd registered with
the event loop, readable the moment the shim exits (whoever its parent is by then).
Launches run on a small pool of threads (a launcher request waits for the fork;
``spawn.spawn_session`` releases the GIL while glibc waits for the shim's exec, which
``os.posix_spawn`` held, and the whole server waited for every exec).

Files in ``<data>/run/``, per workload: ``<id>.pid`` (written by the shim: the pid,
then the status as its second line; ``<id>.status`` where the shim could not append,
or from an older shim) and ``<id>.devices`` (GPU indices, by the server); removed once
the scheduler has recorded the outcome. These and the logs are created 0600 whatever
the umask; workloads get ``workload_umask`` (the server's original one) through the
shim. Nothing else is written per launch: the launch path is the executor's hot path,
and every file operation showed in its profile (on ext4, creating a file costs more
the more files were removed near it in the last minutes: docs/benchmarks.md, issue
13). A restarted server finds live shims by
their command line (``/proc/*/cmdline`` names the shim binary and the workload's
state path), which also rules out reused pids. A shim forked by the launcher takes
that name only once it runs, just after the launcher's reply: ``close`` waits for
every shim it watches to have done so (a server that crashes instead restarts far
slower than a shim takes to run).

With ``watch_pid`` (the Ray agent passes its own pid: ``docs/ray.md``), every shim
also watches that process and stops its workload's group, as for a kill, once it has
exited: a shim outlives the server by design, but must not outlive the agent of a
removed Ray node. A shim whose watched process is already gone runs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corral.executors.base import (
    Capacity,
    Node,
    NotStartedError,
    OnChange,
    OnExit,
    Outcome,
    RunAs,
    SpawnError,
)
from corral.executors.launcher import Launcher
from corral.executors.shim import (
    PID_FILE,
    ensure_shim,
    read_pid,
    read_status,
    shim_argv,
    state_file,
)
from corral.executors.spawn import spawn_session
from corral.logs import FileLogs, finish_capped_log, log_path
from corral.model import Workload
from corral.threads import Threads

log = logging.getLogger(__name__)

NAMING_SECONDS = 5.0
"""How long ``close`` waits for shims forked just before it to take their names."""
BASE_ENV_KEYS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR")
"""Copied from the server's environment; everything else comes from the workload."""
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
NOFILE_VARIABLE = "CORRAL_SHIM_NOFILE"
"""Tells the shim the workload's soft open-files limit; the shim removes it."""
UMASK_VARIABLE = "CORRAL_SHIM_UMASK"
"""Tells the shim the workload's umask (octal); the shim removes it."""
UID_VARIABLE = "CORRAL_SHIM_UID"
GID_VARIABLE = "CORRAL_SHIM_GID"
GROUPS_VARIABLE = "CORRAL_SHIM_GROUPS"
"""With the two above: run the workload as that user (its groups comma-separated);
the shim removes all three."""
WATCH_VARIABLE = "CORRAL_SHIM_WATCH_PID"
"""Tells the shim the process whose exit stops the workload; the shim removes it."""
LOG_CAP_VARIABLE = "CORRAL_SHIM_LOG_CAP"
LOG_VARIABLE = "CORRAL_SHIM_LOG"
"""With the one above: cap the log (at that path) at that many bytes (``corral.logs``);
the shim removes both."""
SHIM_PREFIX = "CORRAL_SHIM_"
"""Of the variables above, the shim's instructions: only the server sets them (a
workload's own are dropped)."""
HIDDEN_PREFIX = SHIM_PREFIX + "ENV_"
"""A shim exec'd by the server gets the workload's loader variables under this prefix
(it renames them back): a dynamically linked shim stays root, and must not load a
library a user named."""
LOADER_VARIABLES = frozenset(
    {
        "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN",
        "LOCPATH", "MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS",
        "TMPDIR", "TZDIR",
    }
)  # fmt: skip
"""glibc's list of variables unsafe for a privileged program (``unsecvars.h``), with
every ``LD_*`` besides."""


def hide_loader_variables(env: dict[str, str]) -> dict[str, str]:
    """``env`` for exec'ing a shim: loader variables renamed with ``HIDDEN_PREFIX``."""
    return {
        (HIDDEN_PREFIX + k if k.startswith("LD_") or k in LOADER_VARIABLES else k): v
        for k, v in env.items()
    }


FILE_MODE = 0o600
"""Logs and state files, whatever the umask: only the server (and a log's owner) reads them."""
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
SPAWN_THREADS = 2
"""Launches in flight at once: each waits (without the GIL) for the launcher's reply
or for a directly spawned shim's exec."""
SHIM_NAME = "corral-shim"


@dataclass(slots=True)
class _Proc:
    shim_pid: int
    pidfd: int
    state: Path
    is_child: bool
    cwd: str | None
    forked: bool
    """Forked by the launcher here: it names itself only once it runs (see close)."""


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone (``/proc/PID/stat`` state)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in _GONE


_GONE = (b"Z", b"X")  # /proc/PID/stat states of a process that has exited


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, pgrp,
    session, …), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2 :].split()


def detect_capacity(
    cpus: float | None = None, memory_mb: int | None = None, gpus: int | None = None
) -> Capacity:
    """This machine's CPUs, memory and GPUs (``nvidia-smi``), unless overridden."""
    if cpus is None:
        cpus = float(len(os.sched_getaffinity(0)))
    if memory_mb is None:
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    if gpus is None:
        gpus = _count_gpus()
    return Capacity(cpus=cpus, memory_mb=memory_mb, gpus=gpus)


def _count_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


class LocalExecutor:
    """Processes on this machine, each under a shim; see the module docstring.

    ``watch_pid``: a process (the Ray agent's own) whose exit stops every workload
    started here; a launch after it has exited records the spawn error ESRCH."""

    kind: Literal["local", "ray"] = "local"
    placement = False

    def __init__(
        self,
        data_dir: Path,
        *,
        capacity: Capacity,
        kill_grace_seconds: float,
        workload_open_files: int | None = None,
        workload_umask: int | None = None,
        watch_pid: int | None = None,
        max_log_bytes: int | None = None,
    ) -> None:
        self.capacity = capacity
        self.max_log_bytes = max_log_bytes or None
        """The cap of each workload's log, in bytes (None: none; ``corral.logs``)."""
        self.workload_open_files = workload_open_files
        """The soft open-files limit workloads get (the server's own may be raised)."""
        self.workload_umask = workload_umask
        """The umask workloads get (the server's own is 077), or None: the shim's."""
        self.watch_pid = watch_pid
        """A process whose exit stops every workload (the Ray agent's), or None."""
        self.kill_grace_seconds = kill_grace_seconds
        self.data_dir = data_dir
        self.logs = FileLogs(data_dir)
        self.node = Node(socket.gethostname(), "localhost", capacity)
        self.run_dir = data_dir / "run"
        self.shim = ensure_shim(data_dir / "bin")
        self._procs: dict[str, _Proc] = {}
        self._shims: dict[str, int] | None = None  # found at the first adopt()
        self._stray_pidfds: set[int] = set()
        self._launching: set[str] = set()
        self._stop_on_start: set[str] = set()
        self._with_devices: set[str] = set()  # may have a GPU file (see ``forget``)
        self._status_in_pid: set[str] = set()  # no .status file to remove (``forget``)
        self._spawner = Threads(SPAWN_THREADS, "corral-spawn")
        self._on_exit: OnExit | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        env.setdefault("PATH", DEFAULT_PATH)
        self._base_env = env
        self._launcher = Launcher(self.shim, env, self.run_dir / "launcher.log")
        (data_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    async def open(self) -> None:
        pass

    def start(self, on_exit: OnExit, on_change: OnChange | None = None) -> None:
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()

    def active(self) -> set[str]:
        return set(self._procs)

    def nodes(self) -> list[Node]:
        return [self.node]

    def node_of(self, workload_id: str) -> str | None:
        return self.node.id

    # This executor needs no placement (``placement`` is False): a workload that fits
    # the machine is claimed and launched at once.
    def place(self, workload: Workload) -> asyncio.Future[str]:
        raise NotImplementedError("the local executor places nothing")

    def unplace(self, workload_id: str) -> None:
        raise NotImplementedError("the local executor places nothing")

    def placing_reason(self, workload: Workload) -> str:
        raise NotImplementedError("the local executor places nothing")

    # --- launch -------------------------------------------------------------------

    def launch(
        self, workload: Workload, gpu_devices: Sequence[int], run_as: RunAs | None = None
    ) -> Awaitable[None]:
        """See ``Executor.launch``. The launch starts now on a worker thread (a
        launcher request waits for its reply; ``spawn.py`` says why a direct spawn
        needs a thread), and the workload counts as launching from this call on: a
        ``terminate`` before the shim is watched is applied once it is.

        With ``run_as``, the log is given to that account before the shim starts,
        and the shim's child drops to it before its chdir and exec (the shim stays
        root). ``HOME``, ``USER`` and ``LOGNAME`` are the account's, whatever the
        workload's ``env`` says (the CLI exports the submitter's shell, whose are not
        the account's when an admin submits for a mapped user, or root runs the CLI)."""
        assert self._loop is not None, "start() first"
        state = self.run_dir / workload.id
        if gpu_devices:
            self._with_devices.add(workload.id)
            try:
                _write_private(state_file(state, "devices"), ",".join(map(str, gpu_devices)))
            except OSError as exc:
                raise SpawnError(f"cannot record its GPUs: {exc.strerror}") from None
        env = {**self._base_env, **workload.env, "CORRAL_WORKLOAD_ID": workload.id}
        if run_as is not None:
            env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
        if workload.array_index is not None:
            env["CORRAL_ARRAY_INDEX"] = str(workload.array_index)
        for name in [k for k in env if k.startswith(SHIM_PREFIX)]:
            env.pop(name)
        if self.capacity.gpus or gpu_devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_devices))
        if self.workload_open_files is not None:
            env[NOFILE_VARIABLE] = str(self.workload_open_files)
        if self.workload_umask is not None:
            env[UMASK_VARIABLE] = f"{self.workload_umask:04o}"
        if run_as is not None:
            env[UID_VARIABLE] = str(run_as.uid)
            env[GID_VARIABLE] = str(run_as.gid)
            env[GROUPS_VARIABLE] = ",".join(map(str, run_as.groups))
        if self.watch_pid is not None:
            env[WATCH_VARIABLE] = str(self.watch_pid)
        cwd = Path(workload.cwd) if workload.cwd else None
        argv = shim_argv(self.shim, state, self.kill_grace_seconds, cwd, workload.command)
        log = log_path(self.data_dir, workload.id)
        if self.max_log_bytes is not None:
            env[LOG_CAP_VARIABLE] = str(self.max_log_bytes)
            env[LOG_VARIABLE] = str(log)
        spawned = self._spawner.submit(functools.partial(self._spawn_shim, argv, env, log, run_as))
        self._launching.add(workload.id)
        return self._watch_spawned(workload, spawned)

    async def _watch_spawned(
        self, workload: Workload, spawned: Awaitable[tuple[int, int | None]]
    ) -> None:
        wid = workload.id
        try:
            pid, pidfd = await spawned
        except BaseException:
            self._stop_on_start.discard(wid)
            raise
        finally:
            self._launching.discard(wid)
        try:
            # A shim forked by the launcher comes with a pidfd (the launcher reaps
            # it); one spawned here is our child, and waited for once it exits.
            self._watch(workload, pid, is_child=pidfd is None, pidfd=pidfd)
        except OSError as exc:
            # Unwatched, it could be neither killed nor followed: stop it now. The
            # workload has a process group of its own, which only the shim knows, so
            # the shim is asked (it stops the group as for a kill, then exits); a
            # thread of its own reaps it and removes its state files.
            self._stop_on_start.discard(wid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            threading.Thread(target=self._reap_unwatched, args=(wid, pid), daemon=True).start()
            raise SpawnError(f"cannot watch its process: {exc.strerror}") from None
        if wid in self._stop_on_start:
            self._stop_on_start.discard(wid)
            self.terminate(wid)

    def _spawn_shim(
        self, argv: list[str], env: dict[str, str], log: Path, run_as: RunAs | None
    ) -> tuple[int, int | None]:
        """On a spawn thread: open the log (giving it to ``run_as``) and start the
        shim on it, through the launcher when it can (see ``launcher.py``), else by
        ``posix_spawn``. Returns the shim's pid and, from the launcher, a pidfd."""
        try:
            log_fd = os.open(log, _LOG_FLAGS, FILE_MODE)
        except OSError as exc:
            raise SpawnError(f"cannot open its log: {exc.strerror}") from None
        try:
            if run_as is not None:
                try:
                    os.fchown(log_fd, run_as.uid, run_as.gid)
                except OSError as exc:
                    reason = f"cannot give its log to {run_as.name}: {exc.strerror}"
                    raise SpawnError(reason) from None
            launched = self._launcher.spawn(argv[1:], env, log_fd)
            if launched is not None:
                return launched
            return spawn_session(argv[0], argv, hide_loader_variables(env), log_fd), None
        except (OSError, ValueError) as exc:  # ValueError: a NUL in argv or env
            raise SpawnError(exc.strerror if isinstance(exc, OSError) else str(exc)) from None
        finally:
            os.close(log_fd)

    def _reap_unwatched(self, workload_id: str, pid: int) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.forget, workload_id)

    def _watch(
        self, workload: Workload, pid: int, *, is_child: bool, pidfd: int | None = None
    ) -> None:
        assert self._loop is not None, "start() first"
        forked = pidfd is not None  # (only the launcher hands a pidfd over)
        if pidfd is None:
            pidfd = os.pidfd_open(pid)
        try:
            self._loop.add_reader(pidfd, self._exited, workload.id)
        except BaseException:
            os.close(pidfd)
            raise
        state = self.run_dir / workload.id
        self._procs[workload.id] = _Proc(pid, pidfd, state, is_child, workload.cwd, forked)

    def _unwatch(self, pidfd: int) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(pidfd)
        os.close(pidfd)

    def _exited(self, workload_id: str) -> None:
        proc = self._procs.pop(workload_id)
        self._unwatch(proc.pidfd)
        if proc.is_child:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.shim_pid, os.WNOHANG)
        watcher = f"(pid {proc.shim_pid}) died"
        self._report(self._outcome(workload_id, proc.state, proc.cwd, watcher))

    def _outcome(self, workload_id: str, state: Path, cwd: str | None, watcher: str) -> Outcome:
        try:
            status = read_status(state)
        except ValueError as exc:
            status, problem = None, str(exc)
        else:
            problem = "it recorded no exit status"
        if status is None:
            self._kill_orphaned_group(workload_id, state)
        log = self.logs.path(workload_id)
        if status is None or self.max_log_bytes is not None:
            # A capped log whose shim died (or could not finish it) still has its ring.
            finish_capped_log(log)
        try:
            log_bytes: int | None = os.stat(log).st_size
        except OSError:
            log_bytes = None
        if status is not None and not status.separate:
            self._status_in_pid.add(workload_id)
        if status is None:
            lost = f"its process watcher {watcher}; {problem}"
            return Outcome(workload_id, lost=lost, log_bytes=log_bytes)
        if status.kind == "exit":
            return Outcome(workload_id, exit_code=status.value, log_bytes=log_bytes)
        if status.kind == "signal":
            return Outcome(workload_id, signal=status.value, log_bytes=log_bytes)
        reason = os.strerror(status.value)
        if status.kind == "chdir":
            reason = f"cwd {cwd}: {reason}"
        return Outcome(workload_id, spawn_error=reason, log_bytes=log_bytes)

    def _report(self, outcome: Outcome) -> None:
        assert self._on_exit is not None, "start() first"
        self._on_exit(outcome)

    # --- adopt, terminate, forget ---------------------------------------------------

    def adopt(self, workload: Workload) -> list[int] | None:
        """See ``Executor.adopt``; outcomes found now are reported on the next loop turn."""
        if self._shims is None:
            self._shims = find_shims(self.run_dir)
        state = self.run_dir / workload.id
        self._with_devices.add(workload.id)  # the server before may have written one
        shim_pid = self._shims.pop(workload.id, None)
        if shim_pid is not None:
            try:
                self._watch(workload, shim_pid, is_child=False)
                return _read_devices(state)
            except ProcessLookupError:
                pass  # exited just now: its status (if any) is on disk
        if not state_file(state, "pid").exists() and not state_file(state, "status").exists():
            # No shim, and none wrote a pid (the shim does so before the command may
            # exec): the earlier server stopped between the claim and the spawn.
            raise NotStartedError(workload.id)
        self._report_soon(self._outcome(workload.id, state, workload.cwd, "is gone"))
        return None

    def stop_unadopted(self) -> list[str]:
        """See ``Executor.stop_unadopted``."""
        assert self._loop is not None, "start() first"
        strays = self._shims if self._shims is not None else find_shims(self.run_dir)
        self._shims = {}
        self._with_devices.update(strays)  # the server before may have written their GPU files
        for workload_id, shim_pid in strays.items():
            try:
                pidfd = os.pidfd_open(shim_pid)
            except ProcessLookupError:
                self.forget(workload_id)
                continue
            # The pidfd pins the process: if it is still this workload's shim now (and
            # not a reused pid), the signal reaches that shim.
            if _shim_state(shim_pid) != str(self.run_dir / workload_id):
                os.close(pidfd)
                self.forget(workload_id)
                continue
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGTERM)  # it stops its group
            self._stray_pidfds.add(pidfd)
            self._loop.add_reader(pidfd, self._stray_exited, workload_id, pidfd)
            log.warning("stopping workload %s: it is not running in the store", workload_id)
        return list(strays)

    def _stray_exited(self, workload_id: str, pidfd: int) -> None:
        self._stray_pidfds.discard(pidfd)
        self._unwatch(pidfd)
        self.forget(workload_id)

    def _report_soon(self, outcome: Outcome) -> None:
        assert self._loop is not None, "start() first"
        self._loop.call_soon(self._report, outcome)

    def terminate(self, workload_id: str) -> None:
        if workload_id in self._launching:
            self._stop_on_start.add(workload_id)
            return
        proc = self._procs.get(workload_id)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):  # exiting: its pidfd reports it
            os.kill(proc.shim_pid, signal.SIGTERM)

    def forget(self, workload_id: str) -> None:
        """The outcome is recorded: remove the workload's state files. (Runs on the
        event loop at every exit: plain strings; ``.status`` only where the status
        was not read from the ``.pid`` file (see ``shim.c``); and the GPU file only
        where there may be one: on a machine with GPUs, or for a workload launched
        here with devices or found from the server before, adopted or stray, which
        may have had GPUs when this one has none.)"""
        state = f"{self.run_dir}/{workload_id}"
        if workload_id in self._status_in_pid:
            self._status_in_pid.discard(workload_id)
            names = ["pid"]
        else:
            names = ["status", "pid"]
        if workload_id in self._with_devices or self.capacity.gpus:
            self._with_devices.discard(workload_id)
            names.append("devices")
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{state}.{name}")

    def close(self) -> None:
        # A spawn in flight finishes (its shim is adopted by the next server).
        self._spawner.close()
        self._launcher.close()
        self._await_named()
        for pidfd in [proc.pidfd for proc in self._procs.values()] + list(self._stray_pidfds):
            self._unwatch(pidfd)
        self._procs.clear()
        self._stray_pidfds.clear()

    def _await_named(self) -> None:
        """Wait (up to ``NAMING_SECONDS`` in all) until every shim the launcher forked
        here has taken its name, or exited: such a shim starts its session and writes
        its command line over the launcher's only once it runs, after the reply, and
        a loaded machine may not run it for a while. Until then no ``find_shims``
        sees it: a server started next (a restart in process, as the tests make, is
        immediate) would take its workload for never started, and start it again.
        (Adopted shims and those spawned by exec are named already.)"""
        deadline = time.monotonic() + NAMING_SECONDS
        for wid, proc in self._procs.items():
            if not proc.forked:
                continue
            want = str(proc.state)
            # The pidfd, readable once the shim has exited, pins the pid: no reuse.
            while _shim_state(proc.shim_pid) != want:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    log.warning("closing before the shim of workload %s has started", wid)
                    return
                exited = select.poll()  # (not select(): a busy server's pidfds pass 1024)
                exited.register(proc.pidfd, select.POLLIN)
                if exited.poll(min(wait, 0.002) * 1000):
                    break

    def _kill_orphaned_group(self, workload_id: str, state: Path) -> None:
        """Without its shim, nothing would stop the workload: SIGKILL its group, if the
        group leader is still this workload's process (its environment says so)."""
        try:
            pgid = read_pid(state)
        except ValueError:
            return
        if pgid and _is_workload_process(pgid, workload_id):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            log.warning("killed the orphaned process group %d of workload %s", pgid, workload_id)


def find_shims(run_dir: Path) -> dict[str, int]:
    """Live shims of this data directory (any build of the shim), by workload id: one
    pass over ``/proc``."""
    found: dict[str, int] = {}
    prefix = str(run_dir) + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        state = _shim_state(int(entry))
        if state is not None and state.startswith(prefix):
            found[state.removeprefix(prefix)] = int(entry)
    return found


def kill_all(run_dir: Path, *, wait_seconds: float = 5.0) -> None:
    """SIGKILL every shim of ``run_dir`` (those forked that have not named themselves
    yet too) and every workload process group recorded there (a workload leads a group
    of its own, which killing its shim misses), then wait until they are gone. For the
    teardown of tests and benchmarks: the server never calls it."""
    if not run_dir.is_dir():
        return
    killed: list[int] = []
    for _ in range(2):  # again: a shim may have named itself between two reads
        for shim_pid in _shims_of(run_dir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(shim_pid, signal.SIGKILL)
                killed.append(shim_pid)
    for pid_file in run_dir.glob(f"*.{PID_FILE}"):
        try:
            pgid = read_pid(run_dir / pid_file.name.removesuffix(f".{PID_FILE}"))
        except ValueError:
            continue
        if pgid and is_alive(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
                killed.append(pgid)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline and any(is_alive(p) for p in killed):
        time.sleep(0.01)


def _shims_of(run_dir: Path) -> list[int]:
    """One pass over ``/proc``: the live shims of ``run_dir``, and the shims forked by
    a launcher of its data dir's shim (``bin/``) that have not named themselves yet.
    Those still have the launcher's command line, but not its session: a launcher is
    a session leader, and a forked shim becomes one only as it names itself. So a
    launcher (its server may still use it) is left alone, whoever its parent is, and
    a forked shim is found even when its launcher has gone (the server killed)."""
    state_prefix = str(run_dir) + "/"
    launcher_prefix = os.fsencode(f"{run_dir.parent}/bin/")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        state = _shim_state(pid)
        if state is not None:
            if state.startswith(state_prefix):
                found.append(pid)
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and argv[0].startswith(launcher_prefix) and argv[1] == b"--launcher":
            fields = _stat_fields(pid)
            if fields is not None and fields[0] not in _GONE and int(fields[3]) != pid:
                found.append(pid)  # 3: its session, not its own
    return found


def _shim_state(pid: int) -> str | None:
    """The state path of the live shim running as ``pid``, or None if it is no shim.

    A shim is a session leader (started with setsid, or forked by the launcher,
    which calls it). Its workload's
    process, between the fork and the exec, has the same command line but a session
    of its parent's: without that check a restart could take it for the shim."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    if len(argv) <= 2 or not Path(argv[0].decode(errors="replace")).name.startswith(SHIM_NAME):
        return None
    fields = _stat_fields(pid)
    if fields is None or fields[0] in _GONE or int(fields[3]) != pid:  # 3: session
        return None
    return argv[1].decode(errors="replace")


def _is_workload_process(pid: int, workload_id: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:
        return False
    return f"CORRAL_WORKLOAD_ID={workload_id}".encode() in environ and is_alive(pid)


def _write_private(path: Path, text: str) -> None:
    """Writes ``path`` (mode 0600 when it is created, whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read_devices(state: Path) -> list[int]:
    try:
        text = state_file(state, "devices").read_text().strip()
    except FileNotFoundError:
        return []
    return [int(d) for d in text.split(",") if d]
