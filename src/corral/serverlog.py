"""Logging for ``corral serve``: one record per line, in text or JSON, on stderr.

Text: ``2026-11-29T12:00:00.123Z INFO corral.api request method=POST status=201 …``.
Every control character (CR, LF, ESC, …, and the Unicode line and paragraph
separators and bidi controls) in the message, its arguments or the ``extra=``
fields is escaped (``\\n``, ``\\r``, ``\\x1b``, ``\\u2028``), and so is ``\\``, so user
text can never start a line of its own nor repaint the terminal. Values with spaces,
``"`` or ``=`` are quoted. A traceback is the only multi-line part: each of its lines
is indented by two spaces (and escaped the same way), so none can pass for a record.

JSON: one object per line, ``{"ts", "level", "logger", "msg", <fields>, "exc"}``, with
every non-ASCII character escaped (``\\u2028`` too), so a line is a record.

Fields are the ``extra=`` items of the logging call, and the items of an
``extra={"fields": {...}}`` dict (whose keys may be LogRecord attribute names, such
as ``name``); they cannot replace ``ts``, ``level``, ``logger``, ``msg`` or ``exc``.

uvicorn's loggers go through the same handler; its access log stays off
(``api/access.py`` logs the state-changing requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
from logging import INFO
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]

# LogRecord attributes that are not ``extra=`` fields (plus uvicorn's colored copy of
# its message, and ``taskName`` from Python 3.12).
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}

_N_ATTRS = len(logging.makeLogRecord({}).__dict__)
_UNSAFE = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\\\\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
_QUOTE = re.compile('[\\s"=]')
_PLAIN = re.compile('[^\\s"=\\x00-\\x1f\\x7f-\\x9f\\\\\u2028\u2029\u202a-\u202e\u2066-\u2069]+')
"""A value written as it is: no character to escape, nor one that asks for quotes."""

LOGGED_MARK = "__corral_logged__"
"""Set on an exception once its traceback is in the log (``mark_logged``), so
uvicorn's own "Exception in ASGI application" record of it is dropped."""


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control character (and ``\\``) written as an escape."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape_char, text)


def _value(value: object) -> str:
    if type(value) is int or type(value) is float:
        return repr(value)
    text = value if isinstance(value, str) else str(value)
    if _PLAIN.fullmatch(text):
        return text
    text = escape(text)
    if not text or _QUOTE.search(text):
        return '"' + text.replace('"', '\\"') + '"'
    return text


FIELDS = "fields"
"""``extra={"fields": {...}}`` gives fields whose names ``extra=`` refuses, being
LogRecord attributes (``name``, ``args``, ``module``, …)."""


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields given to the logging call with ``extra=`` (``fields`` flattened)."""
    attrs = record.__dict__
    fields = attrs.get(FIELDS)
    if len(attrs) == _N_ATTRS + 1 and isinstance(fields, dict):  # only "fields"
        return fields
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in _RECORD_ATTRS:
            continue
        if key == FIELDS and isinstance(value, dict):
            out.update(value)
        else:
            out[key] = value
    return out


class _Clock:
    """A record's time (``time.time()``) as RFC 3339 UTC with milliseconds; the
    formatted second is cached (read once per call, so a thread never mixes two)."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return f"{cached[1]}.{int((created - second) * 1000):03d}Z"


def _traceback(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts) if parts else None


class _Formatter(logging.Formatter):
    """A record as one line (``render``), from a LogRecord or, for ``info_fields``,
    from its parts."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        return self.render(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            extra_fields(record),
            _traceback(self, record),
        )

    def render(
        self,
        created: float,
        level: str,
        name: str,
        msg: str,
        fields: dict[str, Any],
        trace: str | None = None,
    ) -> str:
        raise NotImplementedError


class TextFormatter(_Formatter):
    def render(
        self,
        created: float,
        level: str,
        name: str,
        msg: str,
        fields: dict[str, Any],
        trace: str | None = None,
    ) -> str:
        line = f"{self._clock(created)} {level} {escape(name)} {escape(msg)}"
        if fields:
            line += "".join([f" {escape(k)}={_value(v)}" for k, v in fields.items()])
        if trace:
            line += "".join("\n  " + escape(part) for part in trace.split("\n"))
        return line


class JsonFormatter(_Formatter):
    def render(
        self,
        created: float,
        level: str,
        name: str,
        msg: str,
        fields: dict[str, Any],
        trace: str | None = None,
    ) -> str:
        out: dict[str, Any] = {
            "ts": self._clock(created),
            "level": level,
            "logger": name,
            "msg": msg,
        }
        for key, value in fields.items():
            out.setdefault(key, value)  # the fixed fields cannot be overridden
        if trace:
            out["exc"] = trace
        return json.dumps(out, default=str)  # ASCII only: "\u2028" is escaped too


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record as a line. A warning or worse is written and flushed at once;
    INFO lines logged on an event loop (one per state-changing request) are gathered
    and written together when the loop turn ends: one write for a batch of requests
    instead of one each (it was a tenth of a create's cost). A crash may lose the INFO
    lines of its last loop turn, never a warning; the events table keeps who did what.
    Drops a record about an exception already logged with its traceback (uvicorn logs
    what Starlette re-raises after answering 500)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and getattr(record.exc_info[1], LOGGED_MARK, False):
            return
        try:
            self.put(self.format(record) + "\n", now=record.levelno >= logging.WARNING)
        except Exception:
            self.handleError(record)

    def put(self, line: str, *, now: bool) -> None:
        """Write ``line`` after the lines queued before it: at once when ``now`` or
        off a loop, else at the end of this loop turn. (Called under the lock.)"""
        if not now and self._later(line):
            return
        lines, self._pending = [*self._pending, line], []
        self._write(lines)  # (lines a failed write took are not written twice)

    def _later(self, line: str) -> bool:
        """Queue ``line`` for the end of this loop turn; False off a loop."""
        if self._pending:
            self._pending.append(line)
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._pending.append(line)
        loop.call_soon(self._drain)
        return True

    def _drain(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                lines, self._pending = self._pending, []
                try:
                    self._write(lines)
                except Exception:
                    self.handleError(logging.makeLogRecord({"msg": "request log lost"}))

    def _write(self, lines: list[str]) -> None:
        self.stream.write("".join(lines))
        self.stream.flush()

    def flush(self) -> None:
        self._drain()
        super().flush()


_direct: tuple[_Handler, _Formatter] | None = None
"""corral's handler and its formatter once ``configure`` ran: ``info_fields`` writes
to it directly."""


def info_fields(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> None:
    """``logger.info(msg, extra={"fields": fields})``, the same line, at a third of the
    cost when corral's handler is the one that writes it (the request log's path: a
    LogRecord, the logger tree and the handler's locking were most of it)."""
    direct = _direct
    if (
        direct is None
        or logger.handlers
        or logger.filters
        or direct[0].filters
        or logging.root.handlers != [direct[0]]  # others (a test's, Sentry's) get records
        or not logger.isEnabledFor(INFO)
    ):
        logger.info(msg, extra={FIELDS: fields})
        return
    handler, formatter = direct
    line = formatter.render(time.time(), "INFO", logger.name, msg, fields)
    with handler.lock:  # type: ignore[union-attr]
        try:
            handler.put(line + "\n", now=False)
        except Exception:
            handler.handleError(logging.makeLogRecord({"msg": msg}))


def mark_logged(exc: BaseException) -> None:
    # An exception that takes no attributes gets a second record, from uvicorn.
    with contextlib.suppress(AttributeError):
        setattr(exc, LOGGED_MARK, True)


def configure(fmt: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Send every record (corral's at INFO, others' at WARNING) to ``stream``
    (stderr) in ``fmt``; uvicorn's loggers included, its access log off. Call again
    to reconfigure."""
    handler = _Handler(stream or sys.stderr)
    formatter: _Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        if isinstance(old, _Handler):
            root.removeHandler(old)
    root.addHandler(handler)
    global _direct
    _direct = (handler, formatter)
    # Neither format shows the caller's file and line, nor the process name: skip
    # looking them up for every record (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logMultiprocessing = False
    root.setLevel(logging.WARNING)
    logging.getLogger("corral").setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
        logger.setLevel(logging.WARNING)
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    access.disabled = True


def announce(fmt: LogFormat, banner: str, **fields: object) -> None:
    """The startup line: plain on stderr in text format (for the human who started
    the server), a record in JSON."""
    if fmt == "json":
        logging.getLogger("corral.server").info(banner, extra=fields)
    else:
        print(banner, file=sys.stderr, flush=True)
