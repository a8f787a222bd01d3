"""How the ``corral`` command line shows things: tables, the workload detail, the live
status line of ``wait``, and the exit code that mirrors a finished workload. Output
only; no requests."""

from __future__ import annotations

import json
import re
import shlex
import signal
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from corral.wire import Event, Status, Token, Workload

STATUS_STYLES = {
    Status.PENDING: "yellow",
    Status.RUNNING: "cyan",
    Status.COMPLETED: "green",
    Status.FAILED: "bold red",
    Status.KILLED: "magenta",
}
EXIT_ERROR = 1
EXIT_KILLED = 128 + signal.SIGTERM
COMMAND_MAX_CHARS = 40
UNBOUNDED_WIDTH = 10_000
"""Width of tables written to a pipe: one line per row, for grep and awk."""


def print_out(renderable: RenderableType) -> None:
    """Print to stdout: fitted to a terminal; to a pipe, one line per row, unwrapped,
    without trailing blanks."""
    if sys.stdout.isatty():
        Console(highlight=False).print(renderable)
        return
    console = Console(width=UNBOUNDED_WIDTH, highlight=False)
    with console.capture() as captured:
        console.print(renderable)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# --- time ---------------------------------------------------------------------------


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def seconds_between(start: str | None, end: str | None = None) -> float | None:
    """Seconds from ``start`` to ``end`` (default: now), or None when unknown."""
    begin = parse_time(start)
    if begin is None:
        return None
    finish = parse_time(end) if end else datetime.now(UTC)
    return None if finish is None else max(0.0, (finish - begin).total_seconds())


def format_duration(seconds: float | None) -> str:
    """``3.2s``, ``2m05s``, ``1h02m``, ``3d04h``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_age(timestamp: str | None) -> str:
    """``5s``, ``3m``, ``2h``, ``4d``: how long ago."""
    seconds = seconds_between(timestamp)
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def elapsed(workload: Workload) -> float | None:
    """Run time so far (or in all, once finished); time pending while pending."""
    if workload.status is Status.PENDING:
        return seconds_between(workload.created_at)
    return seconds_between(workload.started_at or workload.created_at, workload.finished_at)


# --- pieces -------------------------------------------------------------------------


_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""Control characters, line separators and bidi controls (which reorder what the
terminal shows)."""


def clean(text: str) -> str:
    """User text made safe for a terminal: control characters escaped (``\\n``,
    ``\\x1b``), so a name cannot move the cursor, recolour or forge a line."""
    return _CONTROL_RE.sub(lambda m: repr(m.group())[1:-1], text)


def shown(text: str) -> Text:
    """``clean`` text as a Rich ``Text``: never read as Rich markup either."""
    return Text(clean(text))


def status_text(status: Status) -> Text:
    return Text(str(status), style=STATUS_STYLES.get(status, ""))


def exit_text(workload: Workload) -> str:
    if workload.signal:
        return workload.signal
    return "" if workload.exit_code is None else str(workload.exit_code)


def command_text(command: list[str], limit: int | None = COMMAND_MAX_CHARS) -> str:
    text = clean(shlex.join(command))
    if limit is not None and len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def pairs_text(pairs: dict[str, str]) -> str:
    return clean(", ".join(f"{k}={v}" for k, v in sorted(pairs.items())))


def status_line(workload: Workload) -> Text:
    """``01j… running 3.2s``; with the reason while pending (what it waits for)."""
    line = Text(f"{workload.id} ")
    line.append_text(status_text(workload.status))
    line.append(f" {format_duration(elapsed(workload))}")
    if workload.status is Status.PENDING and workload.reason:
        line.append(f" ({clean(workload.reason)})", style="dim")
    return line


def final_line(workload: Workload) -> Text:
    """``01j… failed after 3.2s: exit code 3``."""
    line = Text(f"{workload.id} ")
    line.append_text(status_text(workload.status))
    line.append(f" after {format_duration(elapsed(workload))}")
    if workload.reason:
        line.append(f": {clean(workload.reason)}")
    return line


# --- whole views --------------------------------------------------------------------


def workload_table(workloads: Iterable[Workload], *, owner: bool = False) -> Table:
    """The ``corral ls`` table; with ``owner``, an OWNER column after the id."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = ("ID", "OWNER", "NAME", "STATUS", "EXIT", "AGE") if owner else None
    for column in columns or ("ID", "NAME", "STATUS", "EXIT", "AGE"):
        table.add_column(column, no_wrap=True)
    table.add_column("COMMAND", no_wrap=True, overflow="ellipsis")
    table.add_column("REASON", overflow="fold")
    for w in workloads:
        cells: list[str | Text] = [
            w.id,
            shown(w.name or ""),
            status_text(w.status),
            exit_text(w),
            format_age(w.created_at),
            Text(command_text(w.command)),
            shown(w.reason or ""),
        ]
        if owner:
            cells.insert(1, shown(w.owner))
        table.add_row(*cells)
    return table


def format_time(timestamp: str | None) -> str:
    """``2024-01-01T12:00:00Z`` (UTC, to the second), or ``-``."""
    parsed = parse_time(timestamp)
    if parsed is None:
        return timestamp or "-"
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_table(tokens: Iterable[Token]) -> Table:
    """The ``corral token list`` table: never a key (the server never returns one)."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "USER", "ADMIN", "UNIX-USER", "CREATED", "REVOKED"):
        table.add_column(column, no_wrap=True)
    for t in tokens:
        table.add_row(
            t.id,
            t.user,
            "yes" if t.admin else "no",
            t.unix_user or "-",
            format_time(t.created_at),
            format_time(t.revoked_at) if t.revoked_at else "-",
        )
    return table


def _time_field(timestamp: str | None) -> str:
    return f"{timestamp} ({format_age(timestamp)} ago)" if timestamp else "-"


def workload_detail(workload: Workload, events: list[Event]) -> RenderableType:
    w = workload
    r = w.resources
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column(overflow="fold")
    rows: list[tuple[str, str | Text]] = [
        ("id", w.id),
        ("owner", shown(w.owner)),
        ("name", shown(w.name or "-")),
        ("status", status_text(w.status)),
        ("reason", shown(w.reason or "-")),
        ("exit code", "-" if w.exit_code is None else str(w.exit_code)),
        ("signal", w.signal or "-"),
        ("command", Text(command_text(w.command, limit=None))),
        ("cwd", shown(w.cwd or "-")),
        ("env", Text(pairs_text(w.env) or "-")),
        ("labels", Text(pairs_text(w.labels) or "-")),
        ("resources", f"cpus {r.cpus:g}, memory {r.memory_mb} MB, gpus {r.gpus}"),
        ("priority", str(w.priority)),
        ("timeout", "-" if w.timeout_seconds is None else format_duration(w.timeout_seconds)),
        ("created", _time_field(w.created_at)),
        ("started", _time_field(w.started_at)),
        ("finished", _time_field(w.finished_at)),
        ("run time", format_duration(elapsed(w)) if w.started_at else "-"),
    ]
    for key, value in rows:
        fields.add_row(key, value)
    history = Table(box=None, header_style="bold", pad_edge=False, title_justify="left")
    for column in ("SEQ", "AT", "EVENT", "FROM", "TO", "ACTOR"):
        history.add_column(column, no_wrap=True)
    history.add_column("REASON", overflow="fold")
    for e in events:
        history.add_row(
            str(e.seq),
            e.at,
            e.type,
            status_text(e.from_status) if e.from_status else "-",
            status_text(e.to_status),
            shown(e.actor or "-"),
            shown(e.reason or ""),
        )
    return Group(fields, Text(""), Text("events", style="bold"), history)


class StatusLine:
    """The live ``<id> running 3.2s`` line on stderr while waiting (a terminal only);
    ``update`` takes each polled workload, the clock ticks between polls."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.workload: Workload | None = None
        self._spinner = Spinner("dots")

    def update(self, workload: Workload) -> None:
        self.workload = workload

    def _render(self) -> RenderableType:
        if self.workload is None:
            return Text("")
        self._spinner.update(text=status_line(self.workload))
        return self._spinner

    @contextmanager
    def shown(self) -> Iterator[StatusLine]:
        if not self.console.is_terminal:
            yield self
            return
        live = Live(
            console=self.console,
            get_renderable=self._render,
            transient=True,
            refresh_per_second=10,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        with live:
            yield self


# --- the exit code of wait and submit --wait ------------------------------------------


def exit_status(workload: Workload) -> int:
    """The exit code that mirrors a finished workload: completed 0; failed with an
    exit code, that code; failed by a signal, 128 + its number; killed 143 (128 +
    SIGTERM); any other failure (timeout, lost, spawn failed) 1."""
    if workload.status is Status.COMPLETED:
        return 0
    if workload.status is Status.KILLED:
        return EXIT_KILLED
    if workload.status is Status.FAILED:
        signum = _signal_number(workload.signal)
        code = workload.exit_code
        if signum is None and code is not None and code < 0:
            signum = _signal_number(str(-code))  # a Python-style returncode
        if signum is not None:
            return 128 + signum
        if code is not None and 1 <= code <= 255:
            return code
    return EXIT_ERROR


def _signal_number(name: str | None) -> int | None:
    """``SIGSEGV``, ``SEGV`` or ``11`` -> 11; None when unknown."""
    if not name:
        return None
    text = name.strip().upper()
    try:
        if text.isdigit():
            number = int(text)
        else:
            number = signal.Signals[text if text.startswith("SIG") else "SIG" + text].value
    except (KeyError, ValueError):
        return None
    return number if 0 < number < 128 else None
