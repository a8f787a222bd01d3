"""The server log: one record per line, in text or JSON; user text never forges a line.

Formatters in process, then a real ``corral serve`` (its stderr goes to a file).
"""

from __future__ import annotations

import io
import json
import logging
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import serverlog
from corral.keys import default_admin
from tests.server import LiveServer

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


# --- a real server ---------------------------------------------------------------


def _refuse_name(data_dir: Path, name: str) -> None:
    """The database itself refuses a workload with this name (a fault the API does
    not expect: it answers 500)."""
    conn = sqlite3.connect(data_dir / "corral.db", timeout=10, isolation_level=None)
    try:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON workloads"
            f" WHEN NEW.name = '{name}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    finally:
        conn.close()


def _exercise(server: LiveServer) -> dict[str, Any]:
    """Requests carrying hostile text, a kill, a read and an unexpected error."""
    _refuse_name(server.data_dir, "boom")
    with server.http() as http:
        created = http.post(
            "/v1/workloads",
            json={"command": ["echo", EVIL], "name": EVIL_NAME, "labels": {"team": "ml"}},
        )
        assert created.status_code == 201, created.text
        wid = created.json()["id"]
        bad_label = http.post("/v1/workloads", json={"command": ["x"], "labels": {"k": EVIL}})
        assert bad_label.status_code == 422
        evil_path = "/v1/workloads/x%0D%0AINFO%20corral.api%20forged%1B%5B31m"
        assert http.delete(evil_path).status_code == 404
        assert http.get(f"/v1/workloads/{wid}").status_code == 200
        assert http.delete(f"/v1/workloads/{wid}").status_code == 200
        boom = http.post("/v1/workloads", json={"command": ["x"], "name": "boom"})
        assert boom.status_code == 500
        assert boom.headers["content-type"] == "application/problem+json"
        assert "Traceback" not in boom.text and "refused" not in boom.text
    server.stop()
    return {"id": wid}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


ADMIN = default_admin()  # the user of the admin key the server makes


def test_text_log_of_a_real_server(data_dir: Path) -> None:
    server = LiveServer(data_dir, "--executor", "none")
    with server:
        wid = _exercise(server)["id"]
    raw = server.log.read_bytes()
    assert b"\r" not in raw and b"\x1b" not in raw
    text = raw.decode()
    lines = text.splitlines()
    assert lines[0].startswith("corral serving http://127.0.0.1:")  # the plain banner
    records: list[str] = []
    for line in lines[1:]:
        if line.startswith("  "):  # a traceback line, under its record
            records[-1] += "\n" + line
        else:
            assert TEXT_RECORD.match(line), line
            records.append(line)
    # In the name, the path and the id: always right after an escaped line break.
    before_forged = text.split(FORGED)[:-1]
    assert len(before_forged) == 3 and all(part.endswith("\\n") for part in before_forged)
    assert f"\\n{FORGED}" in text and f"%0D%0A{FORGED}" not in text
    assert f"\\r\\n{FORGED}\\x1b[31m" in text

    requests = [r for r in records if " corral.api request " in r]
    assert len(requests) == 5, requests  # the GET is not logged
    create, bad, evil_kill, kill, boom = requests
    assert " status=201 " in create and f" user={ADMIN} id={wid} " in create
    assert create.endswith(f' name="evil\\n{FORGED}"')
    assert " status=422 " in bad and "method=POST path=/v1/workloads " in bad
    assert "method=DELETE path=/v1/workloads/x\\r\\nINFO" in evil_kill.replace('"', "")
    assert " status=404 " in evil_kill
    assert kill.endswith(f" status=200 duration_ms={_ms(kill)} user={ADMIN} id={wid}")
    assert " status=500 " in boom
    assert re.search(r" duration_ms=\d+(\.\d+)? ", create)

    errors = [r for r in records if " ERROR " in r.split("\n")[0]]
    assert len(errors) == 1, errors  # logged once: uvicorn's copy is dropped
    (error,) = errors
    head, *trace = error.split("\n")
    assert head.endswith(" ERROR corral.api unexpected error method=POST path=/v1/workloads")
    assert trace[0] == "  Traceback (most recent call last):"
    assert any("refused by the test" in line for line in trace)


def _ms(line: str) -> str:
    found = re.search(r" duration_ms=(\S+) ", line)
    assert found
    return found.group(1)


def test_json_log_of_a_real_server(data_dir: Path) -> None:
    server = LiveServer(data_dir, "--executor", "none", env={"CORRAL_LOG_FORMAT": "json"})
    with server:
        wid = _exercise(server)["id"]
    raw = server.log.read_bytes()
    assert b"\r" not in raw and b"\x1b" not in raw
    records = [json.loads(line) for line in raw.decode().splitlines()]
    assert all(isinstance(r, dict) and re.fullmatch(TS, r["ts"]) for r in records)
    assert all(FORGED not in line or "\\n" in line for line in raw.decode().splitlines())

    banner = records[0]
    assert banner["logger"] == "corral.server" and banner["level"] == "INFO"
    assert banner["msg"].startswith("corral serving ") and banner["url"] == server.url

    requests = [r for r in records if r["logger"] == "corral.api" and r["msg"] == "request"]
    assert [(r["method"], r["status"]) for r in requests] == [
        ("POST", 201),
        ("POST", 422),
        ("DELETE", 404),
        ("DELETE", 200),
        ("POST", 500),
    ]
    create, _, evil_kill, kill, _ = requests
    assert create["id"] == wid and create["name"] == EVIL_NAME and create["user"] == ADMIN
    assert create["path"] == "/v1/workloads" and isinstance(create["duration_ms"], float)
    assert evil_kill["path"] == f"/v1/workloads/x\r\n{FORGED}\x1b[31m"
    assert kill["id"] == wid

    errors = [r for r in records if r["level"] == "ERROR"]
    assert len(errors) == 1, errors
    assert errors[0]["msg"] == "unexpected error" and errors[0]["path"] == "/v1/workloads"
    assert errors[0]["exc"].startswith("Traceback (most recent call last):")
    assert "refused by the test" in errors[0]["exc"]
