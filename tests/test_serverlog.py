"""The server log: one record per line, in text or JSON; user text never forges a line.

Formatters in process.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import serverlog

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
TEXT_RECORD = re.compile(rf"^{TS} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ ")
FORGED = "INFO corral.api forged"
EVIL_NAME = f"evil\n{FORGED}"
EVIL = "a\r\nb\x1b[31mred\u2028c"


@pytest.fixture
def emit() -> Iterator[Any]:
    """Log through a formatter of either kind into a string."""
    logger = logging.getLogger("corral.test.serverlog")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)

    def run(fmt: str, *args: Any, exc: BaseException | None = None, **kw: Any) -> str:
        out = io.StringIO()
        handler = logging.StreamHandler(out)
        formatter = serverlog.JsonFormatter() if fmt == "json" else serverlog.TextFormatter()
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        try:
            logger.info(*args, exc_info=exc, **kw)
        finally:
            logger.removeHandler(handler)
        return out.getvalue()

    yield run
    logger.propagate = True


def _raised(message: str) -> BaseException:
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


def test_text_is_one_escaped_line_per_record(emit: Any) -> None:
    text = emit(
        "text",
        "hello %s",
        EVIL_NAME,
        extra={"who": EVIL, "n": 3, "empty": "", "q": 'say "hi"', "fields": {"name": "x y"}},
    )
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert "\r" not in text and "\x1b" not in text and "\u2028" not in text
    assert TEXT_RECORD.match(text)
    line = text.rstrip("\n")
    assert line.split(" ", 3)[1:3] == ["INFO", "corral.test.serverlog"]
    assert r"hello evil\nINFO corral.api forged" in line
    assert r" who=a\r\nb\x1b[31mred\u2028c " in line  # no space left to quote for
    assert ' n=3 empty="" q="say \\"hi\\"" name="x y"' in line


def test_text_escapes_backslash_so_escapes_are_unambiguous(emit: Any) -> None:
    line = emit("text", "path %s", "C:\\new", extra={"k": "a\\nb"}).rstrip("\n")
    assert line.endswith(r"path C:\\new k=a\\nb")


def test_text_traceback_lines_are_indented_and_escaped(emit: Any) -> None:
    exc = _raised(f"bad\n2026-11-29T12:00:00.000Z {FORGED}\r\x1b[2J")
    text = emit("text", "failed", exc=exc)
    first, *rest = text.rstrip("\n").split("\n")
    assert TEXT_RECORD.match(first) and first.endswith(" failed")
    assert rest and all(line.startswith("  ") for line in rest), rest
    assert rest[0] == "  Traceback (most recent call last):"
    assert f"  2026-11-29T12:00:00.000Z {FORGED}\\r\\x1b[2J" in rest
    assert "\r" not in text and "\x1b" not in text


def test_json_is_one_object_per_line(emit: Any) -> None:
    exc = _raised("bad\nthing")
    text = emit(
        "json",
        "hello %s",
        EVIL_NAME,
        exc=exc,
        extra={"who": EVIL, "n": 3, "path": Path("/x"), "fields": {"name": "w", "level": "X"}},
    )
    assert text.count("\n") == 1 and text.isascii()
    record = json.loads(text)
    assert re.fullmatch(TS, record["ts"])
    assert record["level"] == "INFO" and record["logger"] == "corral.test.serverlog"
    assert record["msg"] == f"hello {EVIL_NAME}"
    assert record["who"] == EVIL and record["n"] == 3 and record["path"] == "/x"
    assert record["name"] == "w"  # a LogRecord attribute's name, given through "fields"
    assert record["exc"].startswith("Traceback") and "ValueError: bad\nthing" in record["exc"]
    assert list(record)[:4] == ["ts", "level", "logger", "msg"]
