"""Log files read whole, by tail and in chunks, against a plain-Python reference."""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

from corral import logs
from corral.logs import follow_log, log_chunks, open_reader

LINE = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"."))
LONG_LINE = st.integers(0, 3 * logs.TAIL_BLOCK_BYTES).map(lambda n: b"y" * n)


def read_log(path: Path, *, tail: int | None = None) -> bytes:
    """What the logs endpoint sends: the chunks from where the last ``tail`` lines
    begin."""
    return b"".join(log_chunks(open_reader(path, tail)))


def reference_tail(data: bytes, n: int | None) -> bytes:
    if n is None:
        return data
    lines = re.findall(rb"[^\n]*\n|[^\n]+$", data)  # (splitlines would also cut at \r)
    return b"".join(lines[-n:]) if n > 0 else b""


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.one_of(LINE, LONG_LINE), max_size=40),
    unterminated=st.booleans(),
    tail=st.one_of(st.none(), st.integers(0, 45)),
)
def test_tail_is_the_last_lines(lines: list[bytes], unterminated: bool, tail: int | None) -> None:
    data = b"".join(line + b"\n" for line in lines)
    if unterminated and lines:
        data = data[:-1]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.log"
        path.write_bytes(data)
        assert read_log(path, tail=tail) == reference_tail(data, tail)


def reference_bounded_tail(data: bytes, n: int, scan: int) -> bytes:
    """``reference_tail``, looking back at most ``scan`` bytes for line starts."""
    whole = reference_tail(data, n)
    floor = len(data) - scan
    if len(data) - len(whole) >= max(floor, 0):
        return whole
    # The first line start at or after the floor (a final newline starts nothing).
    newline = data.find(b"\n", floor - 1, len(data) - 1)
    return data[newline + 1 :] if newline >= 0 else data[floor:]


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b".")), max_size=12),
    unterminated=st.booleans(),
    tail=st.integers(1, 14),
    scan=st.integers(1, 120),
)
def test_tail_looks_back_at_most_tail_scan_bytes(
    lines: list[bytes], unterminated: bool, tail: int, scan: int
) -> None:
    """``TAIL_SCAN_BYTES`` (small here, and blocks of 7 bytes): the last lines when
    they start within it, else from the first line that does, else from the bound."""
    data = b"".join(line + b"\n" for line in lines)
    if unterminated and lines:
        data = data[:-1]
    with (
        tempfile.TemporaryDirectory() as tmp,
        patch.object(logs, "TAIL_SCAN_BYTES", scan),
        patch.object(logs, "TAIL_BLOCK_BYTES", 7),
    ):
        path = Path(tmp) / "w.log"
        path.write_bytes(data)
        assert read_log(path, tail=tail) == reference_bounded_tail(data, tail, scan)


def test_chunks_cover_the_log_once_and_stay_small(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    data = bytes(range(11, 256)) * 5000  # 1.2 MB, no newline at all
    path.write_bytes(data)
    reader = open_reader(path)
    reader.pos = 1000
    chunks = list(log_chunks(reader))
    assert b"".join(chunks) == data[1000:]
    assert max(map(len, chunks)) <= logs.READ_CHUNK_BYTES and len(chunks) > 4
    assert open_reader(path, 1).pos == 0  # one (unterminated) line: all of it


def test_a_log_not_written_yet_is_empty(tmp_path: Path) -> None:
    missing = tmp_path / "none.log"
    assert read_log(missing) == b"" and read_log(missing, tail=5) == b""
    (tmp_path / "a-file").write_text("")
    assert read_log(tmp_path / "a-file" / "under-a-file.log", tail=2) == b""  # ENOTDIR


def test_a_log_removed_mid_read_is_read_whole(tmp_path: Path) -> None:
    """Its workload deleted (retention) while a plain read or a follow streams it: the
    reader holds the file open, so the read that started gets the whole log (it was
    cut at the chunk the file went, and answered as if whole)."""
    path = tmp_path / "w.log"
    data = bytes(range(11, 256)) * 5000  # 1.2 MB: five chunks
    path.write_bytes(data)
    chunks = log_chunks(open_reader(path))
    first = next(chunks)
    path.unlink()
    assert first + b"".join(chunks) == data

    path.write_bytes(data)

    async def follow() -> bytes:
        got = []

        async def finished() -> bool:
            return not path.exists()  # deleted: ended

        async for chunk in follow_log(open_reader(path), finished):
            got.append(chunk)
            path.unlink(missing_ok=True)
        return b"".join(got)

    assert asyncio.run(follow()) == data
