"""The Ray head corral starts itself (``corral serve --executor ray`` without
``--ray-address``), and what a process needs to talk to it. Standard library only:
``import ray`` happens nowhere here (``ray start`` runs as a child process).

**One head per data dir, outliving the server.** ``ensure_head(DATA_DIR)`` reuses the
head named by ``DATA_DIR/ray/address`` when it still answers (its GCS server, the pid
in ``DATA_DIR/ray/pid``, is alive and its port accepts a connection); else it starts
one with ``ray start --head``, which daemonizes: the head outlives ``corral serve``, a
restarted server joins it again, and its agents and workloads carry on. Only
``stop_head(DATA_DIR)`` (or ``python -m corral.executors.ray_head stop DATA_DIR``)
stops it; ``ray stop`` would too, but it stops every Ray process of the machine.

**Loopback only, token auth, no dashboard** (measured with Ray 2.60, docs/ray.md):

- ``ray start --node-ip-address 127.0.0.1`` alone is not enough on Linux: Ray swaps a
  loopback address for the machine's outward one (``resolve_ip_for_localhost``) and
  then binds its GCS, raylet and worker gRPC servers to every interface. With
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (what Ray does on macOS) it keeps
  127.0.0.1, binds every server to it, and refuses to let another machine join. A
  driver needs the same variable (set before ``import ray``), else it dials the
  outward address: ``Head.env`` has it.
- ``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN``: every gRPC server (GCS, raylet,
  workers, the Ray Client server) refuses a caller without the token. The token is
  32 random bytes (hex, as ``ray get-auth-token --generate`` makes), generated once
  into ``DATA_DIR/ray/token`` (0600), never into ``~/.ray``.
- ``--include-dashboard=false``: no dashboard, no Jobs API (the ShadowRay hole).
- Fixed default ports are replaced by free ones (the GCS's ``--port``, the dashboard
  agent's HTTP port, the Ray Client server's 10001 when ``grpcio`` is installed and
  Ray starts it, the dashboard's metrics port 44227 when ``prometheus_client`` is),
  so two heads on one machine do not collide.
- ``--no-monitor`` and ``--include-log-monitor=false``: the autoscaler monitor and the
  log streamer to drivers serve nothing corral uses (a fixed set of nodes; workloads'
  logs are files the agents read), and cost ~100 MB between them.

**Stopping only this head.** Ray has no "stop this cluster" command. The head's
processes are those whose command line names its session dir (``DATA_DIR/ray/session``)
or whose environment carries ``CORRAL_RAY_HEAD=DATA_DIR/ray`` (set for ``ray start``;
Ray's Python processes may overwrite their environment when they rename themselves, so
neither alone is enough), and every descendant of those (workers, agents). Not its GCS
address: once the head is gone, another head may have that port. They are stopped in
``ray stop``'s order (the raylet, the others, the GCS), ``SIGKILL`` after a grace.

**The temp dir** is ``DATA_DIR/ray/tmp`` when that path is short enough for Ray's unix
sockets (``<temp>/session_<date>_<pid>/sockets/plasma_store`` must fit in 107 bytes),
else Ray's default (``/tmp/ray``, with a session dir of its own).

**A cluster corral joins** (``--ray-address HOST:PORT|auto``) is none of this module's
business: nothing is started, and its token, if it uses token auth, comes from the
server's environment (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``,
as for any Ray driver).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from corral.errors import CorralError

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Keeps Ray on 127.0.0.1 (see the module docstring); the head and its drivers need it."""
MARKER = "CORRAL_RAY_HEAD"
"""Set (to ``DATA_DIR/ray``) in the environment of ``ray start``, to find its processes."""
OBJECT_STORE_BYTES = 256 << 20
"""Ray's shared-memory object store: corral passes it small messages only (log chunks,
the shim's bytes), so not Ray's default of 30 % of the machine's memory."""
START_TIMEOUT_SECONDS = 120.0
SOCKET_PATH_MAX = 107
"""Bytes in a unix socket path (``sun_path`` is 108 with its terminating NUL)."""
LONGEST_SOCKET_SUFFIX = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")
"""What Ray appends to its temp dir for its longest socket (a 7-digit pid)."""


class RayNotInstalledError(CorralError):
    """the Ray executor needs Ray: pip install 'corral[ray]'"""


class RayHeadError(CorralError):
    """The Ray head could not be started."""


@dataclass(frozen=True)
class Head:
    """A running Ray head of corral's own."""

    address: str
    """``127.0.0.1:PORT``: the GCS, what ``ray.init(address)`` takes."""
    token: str
    pid: int
    """The GCS server's."""
    started: bool
    """True when ``ensure_head`` started it, False when it found it running."""

    @property
    def env(self) -> dict[str, str]:
        """The variables a driver of this head needs, in ``os.environ`` before
        ``import ray`` (Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` at import)."""
        return {**token_env(self.token), **LOOPBACK_ENV}


def require_ray() -> None:
    """Raise ``RayNotInstalledError`` (one line, naming the extra) unless ``ray`` can be
    imported; imports nothing. A directory named ``ray`` on the path (Ray's own
    ``/tmp/ray``, when the server is started from ``/tmp`` with ``python -m``) is a
    namespace package, not Ray: its spec has no ``origin``."""
    spec = importlib.util.find_spec("ray")
    if spec is None or spec.origin is None:
        raise RayNotInstalledError()  # its docstring is the message


def token_env(token: str) -> dict[str, str]:
    """The variables that make a Ray process present ``token`` to its cluster."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


def ensure_head(
    data_dir: Path, *, cpus: float | None, memory_mb: int | None, gpus: int | None
) -> Head:
    """The head of ``data_dir``: the one running if it answers, else a new one sized to
    the machine or to ``cpus``/``memory_mb``/``gpus`` (a head found running keeps what
    it was started with). Raises ``RayNotInstalledError`` or ``RayHeadError``."""
    require_ray()
    if cpus is not None and cpus != math.floor(cpus):
        raise RayHeadError(f"a Ray node counts whole CPUs: --cpus {cpus} is not one")
    ray_dir = _ray_dir(data_dir)
    with _locked(ray_dir / "lock"):
        token = _token(ray_dir / "token")
        head = _running_head(ray_dir, token)
        if head is not None:
            return head
        _stop_processes(ray_dir, grace_seconds=0.0)  # what is left of a dead head
        return _start_head(ray_dir, token, cpus=cpus, memory_mb=memory_mb, gpus=gpus)


def stop_head(data_dir: Path, *, grace_seconds: float = 5.0) -> bool:
    """Stop the head of ``data_dir`` and every process of it (workers, agents), and
    forget its address; True if there was a process to stop."""
    ray_dir = (data_dir / "ray").absolute()
    if not ray_dir.is_dir():
        return False
    with _locked(ray_dir / "lock"):
        stopped = _stop_processes(ray_dir, grace_seconds=grace_seconds)
        for name in ("address", "pid", "session"):
            (ray_dir / name).unlink(missing_ok=True)
    return stopped


def head_pids(data_dir: Path) -> set[int]:
    """The processes of the head of ``data_dir`` (empty when none runs)."""
    return _head_pids((data_dir / "ray").absolute())


def temp_dir_for(ray_dir: Path) -> Path:
    """``ray_dir/tmp`` when Ray's socket paths under it fit; else a short private one,
    ``<tmp>/corral-ray-<hash of ray_dir and uid>/tmp``, never Ray's default
    ``/tmp/ray`` (0777, no sticky bit: anyone may replace a head's sockets there). Ray
    makes the directory itself 0777: its parent is what keeps others out (0700)."""
    candidate = ray_dir / "tmp"
    if len(os.fsencode(candidate)) + LONGEST_SOCKET_SUFFIX <= SOCKET_PATH_MAX:
        return candidate
    digest = hashlib.sha256(f"{os.geteuid()}:{ray_dir.absolute()}".encode()).hexdigest()
    return Path(tempfile.gettempdir()) / f"corral-ray-{digest[:16]}" / "tmp"


# --- files ------------------------------------------------------------------------------


def _ray_dir(data_dir: Path) -> Path:
    ray_dir = (data_dir / "ray").absolute()
    ray_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ray_dir.chmod(0o700)
    return ray_dir


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One caller at a time per data dir (two servers starting at once, tests)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, text: str) -> None:
    """Replace ``path`` whole (a temp file renamed over it), private to this user."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _token(path: Path) -> str:
    """The token in ``path``, generated there the first time."""
    token = _read(path)
    if not token:
        token = secrets.token_hex(32)
        _write(path, token + "\n")
    path.chmod(0o600)
    return token


# --- processes --------------------------------------------------------------------------


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [os.fsdecode(a) for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def _alive(pid: int) -> bool:
    """Running: zombies are over (PID 1 may be slow to reap them)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _head_pids(ray_dir: Path) -> set[int]:
    """The head's processes (see the module docstring), this one excluded."""
    session = _read(ray_dir / "session")
    marker = f"{MARKER}={ray_dir}".encode()
    me = os.getpid()
    parents: dict[int, int] = {}
    roots: set[int] = set()
    for pid in _all_pids():
        stat = _stat(pid)
        if pid == me or stat is None or stat[0] in ("Z", "X"):
            continue
        parents[pid] = stat[1]
        if (session and _names(_argv(pid), session)) or _has_marker(pid, marker):
            roots.add(pid)
    found = set(roots)
    grown = True
    while grown:  # descendants: a worker's parent is the raylet
        more = {pid for pid, parent in parents.items() if parent in found} - found - {me}
        found |= more
        grown = bool(more)
    return found


def _names(argv: list[str], path: str) -> bool:
    """Whether an argument names ``path`` or a file under it."""
    return any(f"{path}/" in f"{arg}/" for arg in argv)


def _wait_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while True:
        alive = {pid for pid in pids if _alive(pid)}
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _signal(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _stop_processes(ray_dir: Path, *, grace_seconds: float) -> bool:
    """Stop the head's processes: SIGTERM in ``ray stop``'s order (the raylet, the
    others, the GCS), each step waiting up to a third of ``grace_seconds``; then
    SIGKILL to whatever is left."""
    pids = _head_pids(ray_dir)
    if not pids:
        return False
    if grace_seconds > 0:
        raylets = {pid for pid in pids if _comm(pid) == "raylet"}
        gcs = {pid for pid in pids if _comm(pid) == "gcs_server"}
        for step in (raylets, pids - raylets - gcs, gcs):
            _signal(step, signal.SIGTERM)
            _wait_gone(step, grace_seconds / 3)
    left = _wait_gone(pids, 0)
    _signal(left, signal.SIGKILL)
    left = _wait_gone(left, 10.0)
    if left:
        raise RayHeadError(f"Ray processes {sorted(left)} of {ray_dir} survived SIGKILL")
    return True


# --- start ------------------------------------------------------------------------------


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2.0):
            return True
    except (OSError, ValueError):
        return False


def _is_gcs(pid: int, session: str) -> bool:
    return _alive(pid) and _comm(pid) == "gcs_server" and _names(_argv(pid), session)


def _running_head(ray_dir: Path, token: str) -> Head | None:
    address = _read(ray_dir / "address")
    pid = _read(ray_dir / "pid")
    session = _read(ray_dir / "session")
    if not (address and pid and pid.isdigit() and session):
        return None
    if not (_is_gcs(int(pid), session) and _answers(address)):
        return None
    return Head(address=address, token=token, pid=int(pid), started=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _sizes(cpus: float | None, memory_mb: int | None, gpus: int | None) -> list[str]:
    """``ray start``'s resource flags: the overrides, else this machine, counted as the
    local executor counts it (so a Ray corral offers what a local one would)."""
    from corral.executors.local import detect_capacity  # the server's packages, not stdlib

    capacity = detect_capacity(cpus, memory_mb, gpus)
    return [
        f"--num-cpus={int(capacity.cpus)}",
        f"--memory={capacity.memory_mb << 20}",
        f"--num-gpus={capacity.gpus}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
    ]


def _start_command(ray_dir: Path, port: int, sizes: list[str]) -> list[str]:
    command = [
        sys.executable,
        "-P",  # not the cwd on sys.path: a ./ray directory must not shadow the package
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        f"--node-ip-address={LOOPBACK}",
        f"--port={port}",
        "--include-dashboard=false",
        f"--dashboard-agent-listen-port={_free_port()}",
        "--disable-usage-stats",
        "--no-monitor",
        "--include-log-monitor=false",
        *sizes,
    ]
    if importlib.util.find_spec("grpc") is not None:
        # With grpcio, Ray starts its Client server on every head, by default on 10001
        # (no flag turns it off); it binds the node's address and checks the token.
        command.append(f"--ray-client-server-port={_free_port()}")
    from corral.executors.ray_agent import private_dir

    temp_dir = temp_dir_for(ray_dir)
    try:
        private_dir(temp_dir.parent)
    except RuntimeError as exc:
        raise RayHeadError(str(exc).replace("node directory", "Ray temp directory")) from None
    command.append(f"--temp-dir={temp_dir}")
    return command


REPORT_PERIOD = "RAY_raylet_report_resources_period_milliseconds"


def _start_env(ray_dir: Path, token: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR")
    }
    return {
        **env,
        **token_env(token),
        **LOOPBACK_ENV,
        MARKER: str(ray_dir),
        # With prometheus_client installed, the dashboard process serves its metrics
        # (read-only, no token) on a fixed port, 44227, unless told otherwise.
        "DASHBOARD_METRIC_PORT": str(_free_port()),
        # Ray places a group from its view of the nodes' free resources, which learns
        # of CPUs just freed from the raylets' reports (every 100 ms by default) and
        # retries with a growing back-off: one-CPU workloads started one after another
        # then waited up to ~0.9 s now and then (docs/benchmarks.md). 50 ms removed it.
        REPORT_PERIOD: env.get(REPORT_PERIOD, "50"),
    }


def _tail(path: Path, lines: int = 10) -> str:
    """The last ``lines`` of ``path``, a Python traceback in it cut to its last line
    (the exception): the reader wants what went wrong, the file has the rest."""
    kept: list[str] = []
    in_traceback = False
    for line in (_read(path) or "(no output)").splitlines():
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and line[:1] not in (" ", "\t", ""):
            in_traceback = False
        if not in_traceback and line.strip():
            kept.append(line)
    return "\n".join(kept[-lines:])


def _find_gcs(ray_dir: Path, port: int) -> tuple[int, str] | None:
    """The new head's GCS server: its pid and session dir (its ``--log_dir``'s parent:
    Ray 2.60 also passes ``--session-dir``, 2.52 does not)."""
    marker = f"{MARKER}={ray_dir}".encode()
    for pid in _all_pids():
        if _comm(pid) != "gcs_server" or not _has_marker(pid, marker):
            continue
        argv = _argv(pid)
        if f"--gcs_server_port={port}" not in argv:
            continue
        for arg in argv:
            if arg.startswith("--log_dir="):
                return pid, os.path.dirname(arg.removeprefix("--log_dir=").rstrip("/"))
    return None


def _start_head(
    ray_dir: Path, token: str, *, cpus: float | None, memory_mb: int | None, gpus: int | None
) -> Head:
    for name in ("address", "pid", "session"):
        (ray_dir / name).unlink(missing_ok=True)
    port = _free_port()
    command = _start_command(ray_dir, port, _sizes(cpus, memory_mb, gpus))
    log = ray_dir / "start.log"
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        try:
            code: int | None = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_start_env(ray_dir, token),
                cwd=ray_dir,
                timeout=START_TIMEOUT_SECONDS,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
        except OSError as exc:
            raise RayHeadError(f"cannot run {sys.executable}: {exc}") from None
    found = _find_gcs(ray_dir, port) if code == 0 else None
    if found is not None:
        pid, session = found
        _write(ray_dir / "pid", f"{pid}\n")
        _write(ray_dir / "session", f"{session}\n")
    if found is None or not _answers(f"{LOOPBACK}:{port}"):
        _stop_processes(ray_dir, grace_seconds=0.0)
        why = (
            f"timed out after {START_TIMEOUT_SECONDS:.0f} s"
            if code is None
            else f"exit status {code}"
            if code
            else "its GCS server is not running"
        )
        raise RayHeadError(
            f"cannot start a Ray head ({why}); the end of `ray start`'s output"
            f" ({log}):\n{_tail(log)}"
        )
    address = f"{LOOPBACK}:{port}"
    _write(ray_dir / "address", f"{address}\n")
    return Head(address=address, token=token, pid=found[0], started=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m corral.executors.ray_head stop DATA_DIR``: stop that data dir's head."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "stop":
        print("usage: python -m corral.executors.ray_head stop DATA_DIR", file=sys.stderr)
        return 2
    try:
        stopped = stop_head(Path(args[1]))
    except RayHeadError as exc:
        print(exc, file=sys.stderr)
        return 1
    print("stopped the Ray head" if stopped else "no Ray head was running", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
