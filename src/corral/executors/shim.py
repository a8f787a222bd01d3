"""The per-workload watcher ("shim"): a tiny C program that outlives the server.

Each workload runs under its own ``corral-shim`` process, started as a session leader
with stdout and stderr on the workload's log. The shim runs the workload in its own
process group, reaps it and its orphans, forwards kill requests (SIGTERM, then SIGKILL
after a grace period) to the whole group, and records how the workload ended in a state
file pair ``STATE.pid`` / ``STATE.status`` (``STATE`` is a path prefix such as
``<data>/run/<workload id>``: no directory per workload to create and remove). The
protocol is described at the top of ``shim.c``; this module builds the binary once per
source version and reads the state files it writes.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

SHIM_SOURCE = Path(__file__).with_name("shim.c")
PID_FILE = "pid"
STATUS_FILE = "status"

_STATUS_KINDS = ("exit", "signal", "spawn", "chdir")
_INSTALL_HINT = "corral needs a C compiler (cc) once to build its process watcher: install gcc"


class ShimBuildError(RuntimeError):
    """The shim could not be compiled; the message says what to install or fix."""


@dataclass(frozen=True)
class ShimStatus:
    """How a workload ended, as recorded by its shim.

    ``exit``: exited with code ``value``; ``signal``: killed by signal ``value``;
    ``spawn``: never ran, because exec failed with errno ``value``; ``chdir``: never
    ran, because changing to its working directory failed with errno ``value``.
    """

    kind: Literal["exit", "signal", "spawn", "chdir"]
    value: int


def ensure_shim(cache_dir: Path) -> Path:
    """The path of a compiled shim for the current ``shim.c``, building it if missing.

    The binary is ``cache_dir / "corral-shim-<first 12 hex digits of sha256(source)>"``,
    so a changed source gets a new binary. It is built with ``$CC`` (default ``cc``),
    statically when the C library allows it, into a temporary file that is then renamed:
    concurrent callers never see a partial binary. Raises ``ShimBuildError`` when no
    compiler is found or compilation fails.
    """
    source = SHIM_SOURCE.read_bytes()
    target = cache_dir / f"corral-shim-{hashlib.sha256(source).hexdigest()[:12]}"
    if os.access(target, os.X_OK):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    compiler = shlex.split(os.environ.get("CC") or "cc")
    if not compiler or shutil.which(compiler[0]) is None:
        raise ShimBuildError(f"{_INSTALL_HINT} (no {compiler[0] if compiler else 'cc'} found)")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=cache_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        error = _compile(compiler, tmp, static=True)
        if error is not None:
            error = _compile(compiler, tmp, static=False)
        if error is not None:
            raise ShimBuildError(f"{_INSTALL_HINT} ({compiler[0]} failed: {error})")
        tmp.chmod(0o755)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _compile(compiler: list[str], output: Path, *, static: bool) -> str | None:
    """Compiles the shim into ``output``; None on success, else the first error line."""
    flags = ["-O2", "-s", *(["-static"] if static else [])]
    try:
        done = subprocess.run(
            [*compiler, *flags, "-o", str(output), str(SHIM_SOURCE)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [f"exit status {done.returncode}"])[0]


def shim_argv(
    shim: Path, state: Path, grace_seconds: float, cwd: Path | None, argv: Sequence[str]
) -> list[str]:
    """The command line that runs ``argv`` under ``shim`` (``cwd=None``: don't chdir)."""
    if grace_seconds < 0:
        raise ValueError("grace_seconds must be >= 0")
    if not argv:
        raise ValueError("argv must not be empty")
    where = "" if cwd is None else str(cwd)
    return [str(shim), str(state), f"{grace_seconds:.6f}", where, "--", *argv]


def read_status(state: Path) -> ShimStatus | None:
    """The workload's final status, or None while the shim has not written it yet.

    The shim writes the file atomically and only once its workload's process group is
    gone, so a status means the workload is over and its log complete. Raises
    ``ValueError`` if the file is not in the shim's format.
    """
    text = _read(state_file(state, STATUS_FILE))
    if text is None:
        return None
    kind, _, value = text.strip().partition(" ")
    if kind not in _STATUS_KINDS or not (value.isascii() and value.isdigit()):
        raise ValueError(f"malformed shim status {text!r} in {state}")
    return ShimStatus(cast(Literal["exit", "signal", "spawn", "chdir"], kind), int(value))


def read_pid(state: Path) -> int | None:
    """The workload's pid (also its process group id), or None before the shim forked.

    Raises ``ValueError`` if the file is not in the shim's format.
    """
    text = _read(state_file(state, PID_FILE))
    if text is None:
        return None
    if not (text.isascii() and text.strip().isdigit()):
        raise ValueError(f"malformed shim pid {text!r} in {state}")
    return int(text)


def state_file(state: Path, name: str) -> Path:
    """``STATE.NAME``, one of the files the shim writes (or ``devices``, the server's)."""
    return state.with_name(f"{state.name}.{name}")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
