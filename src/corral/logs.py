"""Workload log files: one per workload under ``<data-dir>/logs``, read by the API.

**Uncapped** (the default), stdout and stderr are written to ``<id>.log`` directly by
the workload's processes, and the log is read as the file it is.

**Capped** (``corral serve --max-log-bytes N``, ``docs/operations.md``): the shim
keeps the first N/2 bytes of the output and the last N-N/2, and writes, where the
middle was, one line ``[corral: D bytes dropped]`` (preceded by a newline when the
head does not end a line; none at all when nothing was dropped). The protocol is at
the top of ``executors/shim.c``; in short:

- While the workload runs, ``<id>.log`` holds the head only and never grows past it;
  once the head is full the shim writes the tail into a fixed-size ring file,
  ``<id>.log.ring``: a header (where the head ends, the ring's size) written once,
  a state record ``LO HI SEALED CHECK`` (the tail holds the output's bytes LO..HI
  counted from the head's end, so LO were dropped), then the ring's bytes. So the
  disk holds about N bytes (plus a 128-byte header) however much is written.
- At the end the shim seals the ring (its last record), appends marker and tail to
  the log, and removes the ring, before it records the exit status. The finished log
  is one plain file, and every size the log file has had is a prefix of it.
- A shim that died, or could not finish (a full disk: the log is cut back to its
  head), leaves the ring: the executor finishes the log once the process is over
  (``finish_capped_log``).

**Reading** (``LogReader``) gives a coherent log at any moment with one rule: when
``<id>.log.ring`` exists, the log reads as head + marker + ring, else as the file.

- Positions are in output bytes: the head's bytes are the file's, the ring's are
  counted on from the head's end (a marker stands for the bytes it counts). A
  reader looks for the ring only while it is within the head, where both agree: a
  reader past the head on the file is reading the finished log (or a prefix of it).
- A reader holds the ring open once found, so that a follower never misses its last
  state: once a sealed ring is read to its end the reader moves to the finished log,
  past its head, marker and tail (computed from the sealed record), and reads on
  there (the shim's last words, if any).
- The shim overwrites the ring's oldest bytes while a reader reads them: the reader
  reads the record, the bytes, and the record again, and keeps the bytes only when
  they are still at or past LO (a write raises LO before it overwrites). A reader
  that falls behind the ring (a follower slower than the workload, a slow client of
  a plain read) writes its own marker for the bytes it missed (newline first when
  the last byte it gave does not end a line) and goes on from the oldest byte kept,
  so every byte of the output is given or counted, once.
- Records are checked (FNV-1a 64): a record read while the shim writes it is read
  again.
- A reader holds the log file open from its first read that finds it (its ring too,
  once found) to its end: a log removed meanwhile (its workload deleted by
  retention) reads on whole through the descriptor. The log file is never replaced,
  only created, appended to and (at a start) truncated, so the descriptor stays the
  log's.

On a Ray node the node's log is capped the same way; the server's copy (appended
from the node's log by offset) then holds the head while the workload runs, and the
whole log once it has ended (``executors/ray.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from corral.errors import CorralError
from corral.threads import Threads

TAIL_BLOCK_BYTES = 64 * 1024
TAIL_SCAN_BYTES = 64 << 20
"""How far back ``tail`` looks for the start of its lines: when the last N lines
reach further, the answer starts at the first line that starts within the last
``TAIL_SCAN_BYTES`` (or there, in the middle of a line, when none does). Without a
bound, ``tail=1`` of a multi-GB log without a newline read all of it first."""
TAIL_THREADS = 2
"""Threads that look for tails (``open_reader_off_loop``): a scan is at most
``TAIL_SCAN_BYTES``, and waits for these, not for the loop's or anyone else's."""
READ_CHUNK_BYTES = 256 * 1024
RING_SUFFIX = ".ring"
"""``<id>.log.ring``: the tail of a capped log, while its workload runs."""
TMP_SUFFIX = ".tmp"
"""``<id>.log.ring.tmp``: a ring the shim is making (renamed once its header is in)."""
RING_RECORD = 64
"""The ring's state record's offset, and the length of its two header lines."""
RING_DATA = 128
"""The offset of the ring's bytes."""
_RING_MAGIC = b"corral-log-ring 1 "
_RECORD_CHECKED = 43  # "%020d %020d %d": the bytes the record's check covers
_TORN_RETRIES = 1000

log = logging.getLogger(__name__)


def log_path(data_dir: Path, workload_id: str) -> Path:
    return data_dir / "logs" / f"{workload_id}.log"


def ring_path(path: Path) -> Path:
    """The ring file of the log at ``path`` (there only while a capped log runs)."""
    return path.with_name(path.name + RING_SUFFIX)


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


def marker(dropped: int, before: bytes) -> bytes:
    """The line that stands for ``dropped`` bytes, after the byte ``before`` (b"":
    none): on a line of its own."""
    newline = b"\n" if before not in (b"", b"\n") else b""
    return newline + b"[corral: %d bytes dropped]\n" % dropped


# --- the ring -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RingState:
    """A ring's header and one state record (see the module docstring)."""

    head_end: int
    size: int
    lo: int
    hi: int
    sealed: bool


def _fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def read_ring(fd: int) -> RingState | None:
    """The ring's state, or None when the file is not a ring (or its record never
    reads whole)."""
    for _ in range(_TORN_RETRIES):
        raw = os.pread(fd, RING_DATA, 0)
        header, record = raw[:RING_RECORD], raw[RING_RECORD:]
        if not header.startswith(_RING_MAGIC) or len(record) < RING_RECORD:
            return None
        try:
            head_end, size = map(int, header[len(_RING_MAGIC) :].split())
            lo, hi, sealed, check = record.split()
            whole = int(check, 16) == _fnv1a(record[:_RECORD_CHECKED])
        except ValueError:
            whole = False
        if whole and size > 0 and int(lo) <= int(hi):
            return RingState(head_end, size, int(lo), int(hi), sealed == b"1")
    return None


def _write_record(fd: int, lo: int, hi: int, *, sealed: bool) -> None:
    line = b"%020d %020d %d" % (lo, hi, 1 if sealed else 0)
    line += b" %016x" % _fnv1a(line)
    os.pwrite(fd, line.ljust(RING_RECORD - 1) + b"\n", RING_RECORD)


def _ring_bytes(fd: int, state: RingState, start: int, size: int) -> bytes:
    """Up to ``size`` of the ring's bytes from output byte ``start`` (past the head),
    in one or two reads (it wraps)."""
    parts = []
    while size > 0:
        at = start % state.size
        part = os.pread(fd, min(size, state.size - at), RING_DATA + at)
        if not part:
            break
        parts.append(part)
        start += len(part)
        size -= len(part)
    return b"".join(parts)


# --- reading ----------------------------------------------------------------------------


class LogReader:
    """A log read forward from a position, in chunks, capped or not (see the module
    docstring). ``read`` never blocks on the workload; ``close`` (or the end of the
    generators below) releases the log and the ring it may hold."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        """In output bytes (the file's offset when no ring was found)."""
        self.last = b""
        """The last byte given (a marker starts a line after it)."""
        self.marked = False
        """The last read gave a marker (past it: the oldest byte the ring kept then)."""
        self._log: int | None = None
        """The log file, open once found (``_log_fd``)."""
        self._ring: int | None = None
        self._final = False
        """Past the head of a finished log: there is no ring to look for."""

    def close(self) -> None:
        if self._ring is not None:
            os.close(self._ring)
            self._ring = None
        if self._log is not None:
            os.close(self._log)
            self._log = None

    def open_log(self) -> int | None:
        """The log file's descriptor, opened at the first call that finds the file
        and kept to ``close``; None while there is no such file. Raises ``OSError``
        when the OS refuses it."""
        if self._log is None:
            with contextlib.suppress(*_ABSENT):
                self._log = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return self._log

    def _read_log(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of the log file at ``offset``: b"" when there is no
        such file (yet), or the OS refuses it."""
        try:
            fd = self.open_log()
            return os.pread(fd, size, offset) if fd is not None else b""
        except OSError:
            return b""

    def __del__(self) -> None:
        self.close()  # a body never started (its client gone first) never closes it

    def find_ring(self) -> None:
        """Take the log's ring, if it has one and this reader is within its head.
        Raises ``OSError`` when the OS refuses it."""
        if self._ring is not None or self._final:
            return
        try:
            fd = os.open(ring_path(self.path), os.O_RDONLY | os.O_CLOEXEC)
        except _ABSENT:
            return
        state = read_ring(fd)
        if state is None or self.pos > state.head_end:
            os.close(fd)  # not a ring; or the finished log, read past its head
            self._final = state is not None
            return
        self._ring = fd

    def end(self) -> int:
        """Where what the log holds now ends, in this reader's positions."""
        with contextlib.suppress(OSError):
            self.find_ring()
        state = read_ring(self._ring) if self._ring is not None else None
        if state is not None:
            return state.head_end + state.hi
        try:
            fd = self.open_log()
            return os.fstat(fd).st_size if fd is not None else 0
        except OSError:
            return 0

    def read(self, limit: int = READ_CHUNK_BYTES) -> bytes:
        """The next bytes there are now, at most ``limit`` of the output (a marker is
        given whole); b"" when there are none yet."""
        self.marked = False
        try:
            self.find_ring()
        except OSError:
            return b""
        if self._ring is None:
            data = self._read_log(self.pos, limit)
            self.pos += len(data)
        else:
            data = self._read_capped(self._ring, limit)
        if data:
            self.last = data[-1:]
        return data

    def _read_capped(self, fd: int, limit: int) -> bytes:
        while True:
            state = read_ring(fd)
            if state is None:
                return b""
            head_end = state.head_end
            if self.pos < head_end:
                data = self._read_log(self.pos, min(limit, head_end - self.pos))
                self.pos += len(data)
                return data
            lo, hi = head_end + state.lo, head_end + state.hi
            if self.pos < lo:
                dropped = marker(lo - self.pos, self.last)
                self.pos = lo
                self.marked = True
                return dropped
            if self.pos < hi:
                data = _ring_bytes(fd, state, self.pos - head_end, min(limit, hi - self.pos))
                again = read_ring(fd)
                if again is None or self.pos < head_end + again.lo:
                    continue  # overwritten as it was read: a marker for them, from LO
                self.pos += len(data)
                return data
            if not state.sealed:
                return b""
            # All of it given: on in the finished log, past its head, marker and tail.
            before = self._read_log(head_end - 1, 1) if head_end else b""
            final_marker = marker(state.lo, before) if state.lo else b""
            self.pos = head_end + len(final_marker) + state.hi - state.lo
            self.close()
            self._final = True
            data = self._read_log(self.pos, limit)
            self.pos += len(data)
            return data

    def start_at_tail(self, lines: int) -> None:
        """Start where the last ``lines`` lines of the log begin (a final line without
        a newline counts as a line; a marker is a line)."""
        self.find_ring()
        state = read_ring(self._ring) if self._ring is not None else None
        view = _View(self.open_log(), self._ring, state)
        start = _tail_offset(view.read, view.size, lines)
        self.pos, self.last = view.position(start)


class _View:
    """The log as it reads now, for finding its last lines: the file, or (with a ring)
    head + marker + tail."""

    def __init__(self, log_fd: int | None, ring: int | None, state: RingState | None) -> None:
        self.log_fd, self.ring, self.state = log_fd, ring, state
        if state is None:
            self.head_end = self.size = os.fstat(log_fd).st_size if log_fd is not None else 0
            self.marker = b""
            return
        self.head_end = state.head_end
        before = self._head(self.head_end - 1, 1) if self.head_end else b""
        self.marker = marker(state.lo, before) if state.lo else b""
        self.size = self.head_end + len(self.marker) + state.hi - state.lo

    def _head(self, at: int, size: int) -> bytes:
        return os.pread(self.log_fd, size, at) if self.log_fd is not None else b""

    def read(self, at: int, size: int) -> bytes:
        parts = []
        mark_end = self.head_end + len(self.marker)
        size = min(size, self.size - at)
        while size > 0:
            if at < self.head_end:
                part = self._head(at, min(size, self.head_end - at))
            elif at < mark_end:
                part = self.marker[at - self.head_end : at - self.head_end + size]
            else:
                assert self.ring is not None and self.state is not None
                part = _ring_bytes(self.ring, self.state, self.state.lo + at - mark_end, size)
            if not part:
                break
            parts.append(part)
            at += len(part)
            size -= len(part)
        return b"".join(parts)

    def position(self, at: int) -> tuple[int, bytes]:
        """A reader's position and last byte to read the view from ``at``."""
        mark_end = self.head_end + len(self.marker)
        if at < self.head_end or self.state is None:
            return at, b""
        if at < mark_end:
            return self.head_end, b""  # the marker, on a line of its own
        return self.head_end + self.state.lo + at - mark_end, self.read(at - 1, 1)


def open_reader(path: Path, tail: int | None = None) -> LogReader:
    """A reader of the log at ``path`` from its start, or from its last ``tail`` lines;
    ``LogUnavailableError`` when the OS refuses it (so that a route answers a problem
    before it starts a body). A log that is not there reads as empty."""
    reader = LogReader(path)
    try:
        reader.open_log()  # held to the end: a log removed meanwhile is read whole
        if tail is None:
            reader.find_ring()
        else:
            reader.start_at_tail(tail)
    except OSError as exc:
        reader.close()
        raise LogUnavailableError(f"cannot read the log: {exc.strerror}") from None
    return reader


_tail_threads: Threads | None = None


async def open_reader_off_loop(path: Path, tail: int | None = None) -> LogReader:
    """``open_reader`` for a route: finding the last ``tail`` lines reads back up to
    ``TAIL_SCAN_BYTES`` (0.9-4 s of the event loop for a 2 GiB log without a newline
    before that bound, and before this), so it runs on one of ``TAIL_THREADS``
    threads of its own. A request cancelled meanwhile closes the reader it would
    have had."""
    global _tail_threads
    if tail is None:
        return open_reader(path)
    if _tail_threads is None:
        _tail_threads = Threads(TAIL_THREADS, "corral-log-tail")
    gone = threading.Event()  # its request went away: a scan not started yet is not run
    opening = _tail_threads.submit(lambda: None if gone.is_set() else open_reader(path, tail))
    try:
        reader = await asyncio.shield(opening)
    except asyncio.CancelledError:
        gone.set()
        opening.add_done_callback(_close_opened)
        raise
    assert reader is not None
    return reader


def _close_opened(opening: asyncio.Future[LogReader | None]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        reader = opening.result()
        if reader is not None:
            reader.close()


def log_chunks(reader: LogReader) -> Iterator[bytes]:
    """The log from the reader's position to where it ends when iteration starts, in
    chunks of at most ``READ_CHUNK_BYTES``: memory stays flat however large. The
    reader's descriptors of the log (and of a capped log's ring) are held to the end,
    and released then (a body abandoned half-way is closed by its server, or its
    generator collected): a log removed meanwhile is read whole. A log the OS refuses
    by then ends the body."""
    try:
        end = reader.end()
        while reader.pos < end:
            chunk = reader.read(min(READ_CHUNK_BYTES, end - reader.pos))
            if not chunk:
                return
            yield chunk
            if reader.pos >= end and reader.marked:
                end = reader.end()  # fell behind the ring: on to what it holds now
    finally:
        reader.close()


def _tail_offset(pread: Callable[[int, int], bytes], end: int, lines: int) -> int:
    """Where the last ``lines`` lines of ``end`` bytes start, scanning backwards block
    by block and keeping none of them (a final line without a newline counts as a
    line), at most ``TAIL_SCAN_BYTES`` back (see there)."""
    if lines <= 0:
        return end
    # Newlines to pass, walking back: ``lines`` of them, plus the log's last byte when
    # that is a newline (it ends the last line rather than starting one).
    if end and pread(end - 1, 1) == b"\n":
        lines += 1
    floor = max(0, end - TAIL_SCAN_BYTES)
    low = max(0, floor - 1)  # (a newline just before the bound starts a line at it)
    earliest = None  # the first line start seen, walking back
    pos = end
    while pos > low:
        step = min(TAIL_BLOCK_BYTES, pos - low)
        pos -= step
        block = pread(pos, step)
        count = block.count(b"\n")
        if count >= lines:
            cut = len(block)
            for _ in range(lines):
                cut = block.rfind(b"\n", 0, cut)
            return pos + cut + 1
        if count:
            first = pos + block.find(b"\n") + 1  # (the earliest line start of the block)
            if first < end:
                earliest = first
        lines -= count
    return earliest if floor and earliest is not None else floor


FOLLOW_POLL_SECONDS = 0.1


async def follow_log(
    reader: LogReader, is_finished: Callable[[], Awaitable[bool]]
) -> AsyncIterator[bytes]:
    """Yield the log from the reader's position as it grows, until the workload is
    finished.

    ``is_finished`` is checked *before* each read: corral records a terminal status only
    after the process's output is in the file, so the read that follows a "finished"
    answer drains everything and nothing is cut off.
    """
    try:
        while True:
            finished = await is_finished()
            chunk = reader.read()
            if chunk:
                yield chunk
                continue
            if finished:
                return
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
    finally:
        reader.close()


# --- after the end ----------------------------------------------------------------------


def finish_capped_log(path: Path) -> None:
    """Append a capped log's marker and tail to its head and remove its ring, as its
    shim does at the end, when the shim did not (it died, or the disk was full then).
    Only once the workload's process is over: nothing writes to the ring any more.
    Seals the ring first, so that followers move on to the log; on failure (logged)
    the log is cut back to its head, and readers still join the sealed ring to it."""
    ring = ring_path(path)
    try:
        fd = os.open(ring, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        state = read_ring(fd)
        if state is None:
            return
        if not state.sealed:
            _write_record(fd, state.lo, state.hi, sealed=True)
        out = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.ftruncate(out, state.head_end)  # what an earlier attempt left
            with open(path, "rb") as head:
                view = _View(head.fileno(), fd, state)
                at = state.head_end
                while at < view.size:
                    chunk = view.read(at, READ_CHUNK_BYTES)
                    _write_all(out, chunk)
                    at += len(chunk)
            ring.unlink()
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(out, state.head_end)
            raise
        finally:
            os.close(out)
    except OSError as exc:
        log.warning("cannot finish the capped log %s: %s", path, exc.strerror or exc)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def remove_log(path: Path) -> bool:
    """Remove the log at ``path`` with what a capped log may leave beside it (its
    ring, a ring the shim was making: ``RING_SUFFIX + TMP_SUFFIX``), once its
    workload is deleted; whether any of them was removed. One the OS refuses to
    remove is logged and left (the workload is gone either way)."""
    ring = ring_path(path)
    removed = False
    for each in (ring.with_name(ring.name + TMP_SUFFIX), ring, path):
        try:
            each.unlink()
        except _ABSENT:
            continue
        except OSError as exc:
            log.warning("cannot remove the log %s: %s", each, exc.strerror or exc)
            continue
        removed = True
    return removed
