"""Workload log files: one per workload under ``<data-dir>/logs``; stdout and stderr
are written to it directly by the workload's process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

TAIL_BLOCK_BYTES = 64 * 1024


def log_path(data_dir: Path, workload_id: str) -> Path:
    return data_dir / "logs" / f"{workload_id}.log"


def read_log(path: Path, *, tail: int | None = None) -> bytes:
    """The whole log, or its last ``tail`` lines; empty when nothing was written yet."""
    try:
        with open(path, "rb") as f:
            if tail is None:
                return f.read()
            return _tail(f.fileno(), tail)
    except FileNotFoundError:
        return b""


def _tail(fd: int, lines: int) -> bytes:
    """The last ``lines`` lines, reading backwards in blocks (a final line without a
    newline counts as a line)."""
    if lines <= 0:
        return b""
    end = os.fstat(fd).st_size
    data = b""
    pos = end
    while pos > 0:
        step = min(TAIL_BLOCK_BYTES, pos)
        pos -= step
        data = os.pread(fd, step, pos) + data
        # one more newline than wanted, not counting a trailing one
        body = data[:-1] if data.endswith(b"\n") else data
        if body.count(b"\n") >= lines:
            break
    body_end = len(data) - 1 if data.endswith(b"\n") else len(data)
    cut = body_end
    for _ in range(lines):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            return data
    return data[cut + 1 :]


FOLLOW_POLL_SECONDS = 0.1
READ_CHUNK_BYTES = 256 * 1024


async def follow_log(
    path: Path, is_finished: Callable[[], bool], *, start: int = 0
) -> AsyncIterator[bytes]:
    """Yield the log from byte ``start`` as it grows, until the workload is finished.

    ``is_finished`` is checked *before* each read: corral records a terminal status only
    after the process's output is in the file, so the read that follows a "finished"
    answer drains everything and nothing is cut off.
    """
    offset = start
    while True:
        finished = is_finished()
        chunk = _read_from(path, offset)
        if chunk:
            offset += len(chunk)
            yield chunk
            continue
        if finished:
            return
        await asyncio.sleep(FOLLOW_POLL_SECONDS)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, READ_CHUNK_BYTES, offset)
    finally:
        os.close(fd)
