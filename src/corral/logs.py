"""Workload log files: one per workload under ``<data-dir>/logs``; stdout and stderr
are written to it directly by the workload's process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

from corral.errors import CorralError

TAIL_BLOCK_BYTES = 64 * 1024
READ_CHUNK_BYTES = 256 * 1024


def log_path(data_dir: Path, workload_id: str) -> Path:
    return data_dir / "logs" / f"{workload_id}.log"


class FileLogs:
    """Workloads' logs as files of one directory, where the API reads them: the local
    executor's workloads write there, the Ray executor copies its nodes' logs there."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def path(self, workload_id: str) -> Path:
        return log_path(self.data_dir, workload_id)


class LogUnavailableError(CorralError):
    """The log exists but cannot be read (the OS's reason follows)."""


_ABSENT = (FileNotFoundError, NotADirectoryError)
"""A log that is not there (yet, or any more): read as empty."""


def open_log(path: Path) -> int | None:
    """A descriptor of the log, None when there is none, or ``LogUnavailableError``
    when the OS refuses it (so a route answers a problem before it starts a body)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except _ABSENT:
        return None
    except OSError as exc:
        raise LogUnavailableError(f"cannot read the log: {exc.strerror}") from None


def log_start(fd: int | None, tail: int | None) -> int:
    """The byte offset where the last ``tail`` lines begin (0 for the whole log)."""
    if tail is None or fd is None:
        return 0
    return _tail_offset(fd, tail)


def log_chunks(path: Path, *, start: int = 0) -> Iterator[bytes]:
    """The log from byte ``start`` to its size when iteration starts, in chunks of at
    most ``READ_CHUNK_BYTES``: memory stays flat however large. No descriptor is held
    between chunks (each is read by ``_read_from``): a body abandoned half-way, its
    client gone, holds nothing open. A log the OS refuses by then ends the body."""
    try:
        end = os.stat(path).st_size
    except OSError:
        return
    offset = start
    while offset < end:
        chunk = _read_from(path, offset, min(READ_CHUNK_BYTES, end - offset))
        if not chunk:
            return
        offset += len(chunk)
        yield chunk


def _tail_offset(fd: int, lines: int) -> int:
    """Where the last ``lines`` lines start, scanning backwards block by block and
    keeping none of them (a final line without a newline counts as a line)."""
    end = os.fstat(fd).st_size
    if lines <= 0:
        return end
    # Newlines to pass, walking back: ``lines`` of them, plus the log's last byte when
    # that is a newline (it ends the last line rather than starting one).
    if end and os.pread(fd, 1, end - 1) == b"\n":
        lines += 1
    pos = end
    while pos > 0:
        step = min(TAIL_BLOCK_BYTES, pos)
        pos -= step
        block = os.pread(fd, step, pos)
        count = block.count(b"\n")
        if count >= lines:
            cut = len(block)
            for _ in range(lines):
                cut = block.rfind(b"\n", 0, cut)
            return pos + cut + 1
        lines -= count
    return 0


FOLLOW_POLL_SECONDS = 0.1


async def follow_log(
    path: Path, is_finished: Callable[[], Awaitable[bool]], *, start: int = 0
) -> AsyncIterator[bytes]:
    """Yield the log from byte ``start`` as it grows, until the workload is finished.

    ``is_finished`` is checked *before* each read: corral records a terminal status only
    after the process's output is in the file, so the read that follows a "finished"
    answer drains everything and nothing is cut off.
    """
    offset = start
    while True:
        finished = await is_finished()
        chunk = _read_from(path, offset)
        if chunk:
            offset += len(chunk)
            yield chunk
            continue
        if finished:
            return
        await asyncio.sleep(FOLLOW_POLL_SECONDS)


def _read_from(path: Path, offset: int, size: int = READ_CHUNK_BYTES) -> bytes:
    """Up to ``size`` bytes of the log at ``offset`` (b"" for a log that is not there
    or that the OS refuses), opened and closed around the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.pread(fd, size, offset)
    except OSError:
        return b""
    finally:
        os.close(fd)
