"""The per-workload watcher ("shim"): a tiny C program that outlives the server.

Each workload runs under its own ``corral-shim`` process, started as a session leader
with stdout and stderr on the workload's log. The shim runs the workload in its own
process group, reaps it and its orphans, forwards kill requests (SIGTERM, then SIGKILL
after a grace period) to the whole group, and records how the workload ended in its
state file ``STATE.pid`` (``STATE`` is a path prefix such as ``<data>/run/<workload
id>``: no directory per workload to create and remove): the workload's pid, then, once
it is over, its status as a second line (``STATE.status`` where that cannot be done,
and from shims older than this protocol; ``read_status`` reads both). With a
log cap it copies the workload's output into the log itself, keeping the head and the
tail (``corral.logs``). The protocol is described at the top of ``shim.c``; this
module installs the binary once per source version (a copy of the one a wheel
carries, else compiled with ``cc``: see ``ensure_shim``) and reads the state files it
writes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

SHIM_SOURCE = Path(__file__).with_name("shim.c")
PREBUILT_SHIM = Path(__file__).with_name("bin") / "corral-shim"
"""The shim a wheel carries, compiled from ``SHIM_SOURCE`` when the wheel was built
(``setup.py``); absent from an editable install or a source tree."""
PID_FILE = "pid"
STATUS_FILE = "status"

log = logging.getLogger(__name__)

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
    ``separate``: read from ``STATE.status`` rather than from ``STATE.pid`` (whoever
    removes the state files removes both then).
    """

    kind: Literal["exit", "signal", "spawn", "chdir"]
    value: int
    separate: bool = field(default=False, compare=False)


def ensure_shim(cache_dir: Path, prebuilt: Path | None = PREBUILT_SHIM) -> Path:
    """The path of a shim for the current ``shim.c`` in ``cache_dir``, installing it if
    missing.

    The binary is ``cache_dir / "corral-shim-<first 12 hex digits of sha256(source)>"``,
    so a changed source (an upgraded corral) gets a new binary. It comes from the
    ``prebuilt`` one that a wheel carries (``PREBUILT_SHIM``, built from the same
    ``shim.c`` when the wheel was) when there is one: a copy, so that a file in the
    install, which its owner may replace, is never the one run; else (an editable
    install, or a source tree) it is compiled with ``$CC`` (``build_shim``), logging
    one line saying why. ``cache_dir`` gets the umask's mode: the server's 077 makes
    it 0700 (in a 0700 data dir). Raises ``ShimBuildError`` with neither a prebuilt
    shim nor a working compiler, naming both remedies.
    """
    target = shim_path(cache_dir)
    if os.access(target, os.X_OK):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    if prebuilt is not None and prebuilt.is_file():
        _install(prebuilt, target)
        return target
    compiler = _compiler()
    if compiler is None:
        raise ShimBuildError(
            "no prebuilt corral-shim in this install (an editable one, or a source tree) and"
            f" no C compiler ({os.environ.get('CC') or 'cc'}) to build one from {SHIM_SOURCE}:"
            " install a C compiler (e.g. gcc, or set CC), or install corral from a wheel,"
            " which carries a prebuilt corral-shim (`pip wheel .` makes one on a machine"
            " with a compiler)"
        )
    log.info(
        "no prebuilt corral-shim in this install; compiling %s with %s",
        SHIM_SOURCE,
        shlex.join(compiler),
    )
    build_shim(target, compiler)
    return target


def shim_path(cache_dir: Path) -> Path:
    """Where ``ensure_shim`` keeps the shim of the current ``shim.c`` in ``cache_dir``
    (a Ray node's agent writes the server's shim there)."""
    digest = hashlib.sha256(SHIM_SOURCE.read_bytes()).hexdigest()[:12]
    return cache_dir / f"corral-shim-{digest}"


def build_shim(output: Path, compiler: list[str] | None = None) -> None:
    """Compile ``shim.c`` into ``output`` (executable), with ``compiler`` (default: ``$CC``,
    else ``cc``): statically when the C library allows it, into a temporary file that is
    then renamed, so concurrent callers never see a partial binary. The wheel's build
    (``setup.py``) and ``ensure_shim`` both use it. Raises ``ShimBuildError`` when no
    compiler is found or compilation fails.
    """
    if compiler is None:
        compiler = _compiler()
    if compiler is None:
        name = os.environ.get("CC") or "cc"
        raise ShimBuildError(f"{_INSTALL_HINT} (no {name} found)")
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        error = _compile(compiler, tmp, static=True)
        if error is not None:
            error = _compile(compiler, tmp, static=False)
        if error is not None:
            raise ShimBuildError(f"{_INSTALL_HINT} ({compiler[0]} failed: {error})")
        tmp.chmod(0o755)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def _compiler() -> list[str] | None:
    """``$CC`` (default ``cc``) as a command line, or None when it is not found."""
    compiler = shlex.split(os.environ.get("CC") or "cc")
    if not compiler or shutil.which(compiler[0]) is None:
        return None
    return compiler


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


def _install(prebuilt: Path, target: Path) -> None:
    """Copy ``prebuilt`` to ``target`` (mode 0755) through a temporary file and a rename."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, prebuilt.open("rb") as src:
            shutil.copyfileobj(src, out)
        tmp.chmod(0o755)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


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

    The shim writes it only once its workload's process group is gone, so a status
    means the workload is over and its log complete: the second line of
    ``STATE.pid``, taken only once whole (ending in a newline), else ``STATE.status``
    (where the shim could not append, or a shim older than the append wrote it; see
    ``shim.c``). Raises ``ValueError`` if what is there is not in the shim's format.
    """
    text = _read(f"{state}.{PID_FILE}")  # (no Path built: read at every exit)
    if text is not None:
        _, _, rest = text.partition("\n")
        line, newline, _ = rest.partition("\n")
        if newline:
            return _parse_status(line, state, separate=False)
    text = _read(f"{state}.{STATUS_FILE}")
    if text is None:
        return None
    return _parse_status(text.strip(), state, separate=True)


def _parse_status(line: str, state: Path, *, separate: bool) -> ShimStatus:
    kind, _, value = line.partition(" ")
    if kind not in _STATUS_KINDS or not (value.isascii() and value.isdigit()):
        raise ValueError(f"malformed shim status {line!r} in {state}")
    kind_ = cast(Literal["exit", "signal", "spawn", "chdir"], kind)
    return ShimStatus(kind_, int(value), separate)


def read_pid(state: Path) -> int | None:
    """The workload's pid (also its process group id), or None before the shim forked:
    the first line of ``STATE.pid`` (a second one is the status).

    Raises ``ValueError`` if the file is not in the shim's format.
    """
    text = _read(state_file(state, PID_FILE))
    if text is None:
        return None
    first = text.partition("\n")[0]
    if not (first.isascii() and first.isdigit()):
        raise ValueError(f"malformed shim pid {text!r} in {state}")
    return int(first)


def state_file(state: Path, name: str) -> Path:
    """``STATE.NAME``, one of the files the shim writes (or ``devices``, the server's)."""
    return state.with_name(f"{state.name}.{name}")


def _read(path: Path | str) -> str | None:
    """The text of a small file, or None when there is none (raw ``os`` calls: this
    runs on the event loop at every exit)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()  # UnicodeDecodeError is a ValueError: malformed
