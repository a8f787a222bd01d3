"""How the ``corral`` command line shows things, as plain text: tables fitted to the
terminal, the workload detail, ``corral status``, the live line of ``wait``, and the
exit status that mirrors a finished workload. Output only; no requests.

Colour (ANSI SGR) only when the stream is a terminal and ``NO_COLOR`` is unset (and
``TERM`` is not ``dumb``). Every piece of user text (names, reasons, commands, labels)
goes through ``clean`` first: it cannot move the cursor, recolour or forge a line.

Tables never cut an id. Their width is ``$COLUMNS`` when set, else the terminal's when
stdout is one; written to a pipe without ``$COLUMNS`` a row is one line, whole. To
fit, a table cuts its cuttable columns first (in their order: the command, then the
reason), then drops its droppable ones (in their order), and overflows only when what
is left (the id, the status) is wider than the terminal.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence

from corral.wire import Event, ServerStatus, Status, Token, Workload

TYPE_CHECKING = False  # not typing's: importing typing costs each call milliseconds
if TYPE_CHECKING:
    from datetime import datetime
    from typing import IO, Any

# datetime, shlex, signal and corral.units are imported where used: submit and kill
# never need them.

EXIT_ERROR = 1
EXIT_KILLED = 143
"""128 + SIGTERM: a workload killed through corral."""
COMMAND_MAX_CHARS = 60
"""The COMMAND column of ``ls`` at most (``-o wide`` and ``show`` show it whole)."""
CUT_MIN = 12
"""A cut column keeps at least this many characters (with its ``…``)."""
GAP = "  "

SGR = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "magenta": "35",
    "cyan": "36",
    "bold red": "1;31",
}
STATUS_STYLES = {
    Status.PENDING: "yellow",
    Status.RUNNING: "cyan",
    Status.COMPLETED: "green",
    Status.FAILED: "bold red",
    Status.KILLED: "magenta",
}


def colour_on(stream: IO[str]) -> bool:
    """Colour for this stream: a terminal, ``NO_COLOR`` unset or empty, not a dumb one."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def paint(text: str, style: str | None, colour: bool) -> str:
    if not colour or not style or not text:
        return text
    return f"\x1b[{SGR[style]}m{text}\x1b[0m"


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def as_json(value: Any) -> Any:
    """A wire record (or a list of them) as JSON-ready data, every field."""
    if isinstance(value, list):
        return [as_json(v) for v in value]
    as_dict = getattr(value, "as_dict", None)
    return value if as_dict is None else as_dict()


def table_width(stream: IO[str] | None = None) -> int | None:
    """Columns to fit: ``$COLUMNS`` when set, else the terminal's; None (unbounded) for
    a pipe without ``$COLUMNS``."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    out = stream or sys.stdout
    try:
        if out.isatty():
            return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, ValueError, OSError):
        pass
    return None


# --- text -----------------------------------------------------------------------------

_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""Control characters, line separators and bidi controls (which reorder what the
terminal shows)."""


def clean(text: str) -> str:
    """User text made safe for a terminal: control characters escaped (``\\n``,
    ``\\x1b``), so a name cannot move the cursor, recolour or forge a line."""
    return _CONTROL_RE.sub(lambda m: repr(m.group())[1:-1], text)


def display_width(text: str) -> int:
    """Terminal cells: wide (East Asian) characters take two, combining marks none."""
    if text.isascii():
        return len(text)
    import unicodedata  # only for text that needs it

    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells, ending with ``…`` when cut."""
    if display_width(text) <= width:
        return text
    if width <= 0:
        return ""
    out, used = [], 0
    for c in text:
        w = display_width(c)
        if used + w > width - 1:
            break
        out.append(c)
        used += w
    return "".join(out) + "…"


def command_text(command: Sequence[str]) -> str:
    import shlex

    return clean(shlex.join(command))


def pairs_text(pairs: dict[str, str]) -> str:
    return clean(", ".join(f"{k}={v}" for k, v in sorted(pairs.items())))


ENV_SHOWN_MAX = 8


def env_text(env: dict[str, str]) -> str:
    """A few variables as ``K=V``; a whole exported environment as a count."""
    if not env:
        return "-"
    if len(env) <= ENV_SHOWN_MAX:
        return pairs_text(env)
    return f"{len(env)} variables (--json shows them)"


# --- time -----------------------------------------------------------------------------


def parse_time(value: str | None) -> datetime | None:
    from datetime import UTC, datetime

    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def seconds_between(start: str | None, end: str | None = None) -> float | None:
    """Seconds from ``start`` to ``end`` (default: now), or None when unknown."""
    from datetime import UTC, datetime

    begin = parse_time(start)
    if begin is None:
        return None
    finish = parse_time(end) if end else datetime.now(UTC)
    return None if finish is None else max(0.0, (finish - begin).total_seconds())


def format_elapsed(seconds: float | None) -> str:
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


def format_time(timestamp: str | None) -> str:
    """``2024-01-01T12:00:00Z`` (UTC, to the second), or ``-``."""
    from datetime import UTC

    parsed = parse_time(timestamp)
    if parsed is None:
        return timestamp or "-"
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_time(workload: Workload) -> float | None:
    """Run time so far (or in all, once finished); None when it never started."""
    if workload.started_at is None:
        return None
    return seconds_between(workload.started_at, workload.finished_at)


# --- pieces ---------------------------------------------------------------------------


def status_text(workload: Workload) -> str:
    """``running``; ``killed (stopping)`` while a killed workload's process exits."""
    return f"{workload.status} (stopping)" if workload.stopping else str(workload.status)


def exit_text(workload: Workload) -> str:
    if workload.signal:
        return workload.signal
    return "" if workload.exit_code is None else str(workload.exit_code)


def status_line(workload: Workload, colour: bool = False) -> str:
    """``01j… running 3.2s``; while pending, for how long and why."""
    status = paint(status_text(workload), STATUS_STYLES.get(workload.status), colour)
    if workload.status is Status.PENDING:
        line = f"{workload.id} {status} {format_elapsed(seconds_between(workload.created_at))}"
        if workload.reason:
            line += " " + paint(f"({clean(workload.reason)})", "dim", colour)
        return line
    return f"{workload.id} {status} {format_elapsed(run_time(workload))}"


def final_line(workload: Workload, colour: bool = False) -> str:
    """``01j… failed after 3.2s: exit code 3``; ``01j… killed before it started: …``
    for one that never ran (no run time to speak of)."""
    status = paint(status_text(workload), STATUS_STYLES.get(workload.status), colour)
    ran = run_time(workload)
    when = "before it started" if ran is None else f"after {format_elapsed(ran)}"
    line = f"{workload.id} {status} {when}"
    if workload.reason:
        line += f": {clean(workload.reason)}"
    return line


# --- tables ---------------------------------------------------------------------------


class Column:
    """A table column: its title, its cells (clean text), and how it may give way."""

    def __init__(
        self,
        title: str,
        cells: list[str],
        *,
        styles: list[str | None] | None = None,
        cut_rank: int | None = None,
        drop_rank: int | None = None,
    ) -> None:
        self.title = title
        self.cells = cells
        self.styles = styles
        self.cut_rank = cut_rank
        """Cut to fit in this order (0 first); None: never cut."""
        self.drop_rank = drop_rank
        """Dropped to fit in this order (0 first); None: never dropped."""
        self.natural = max([display_width(title), *map(display_width, cells)])
        self.width = self.natural


def _drop_rank(column: Column) -> int:
    return column.drop_rank if column.drop_rank is not None else 0


def _cut_rank(column: Column) -> int:
    return column.cut_rank if column.cut_rank is not None else 0


def fit(columns: list[Column], width: int | None) -> list[Column]:
    """The columns that fit ``width`` (None: all, uncut), with their widths set."""
    shown = list(columns)
    for column in shown:
        column.width = column.natural
    if width is None:
        return shown
    droppable = sorted((c for c in shown if c.drop_rank is not None), key=_drop_rank)
    while True:
        for column in shown:
            column.width = column.natural
        excess = sum(c.width for c in shown) + len(GAP) * (len(shown) - 1) - width
        cuttable = sorted((c for c in shown if c.cut_rank is not None), key=_cut_rank)
        for column in cuttable:
            if excess <= 0:
                break
            floor = min(column.natural, max(CUT_MIN, display_width(column.title)))
            give = min(column.width - floor, excess)
            column.width -= give
            excess -= give
        if excess <= 0 or not droppable:
            return shown
        shown.remove(droppable.pop(0))


def render_table(columns: list[Column], width: int | None, colour: bool) -> list[str]:
    """The table's lines: a header, then one line per row, no trailing blanks."""
    shown = fit(columns, width)
    rows = len(shown[0].cells) if shown else 0
    lines = []
    header = GAP.join(pad(c.title, c.width) for c in shown).rstrip()
    lines.append(paint(header, "bold", colour))
    for i in range(rows):
        parts = []
        for column in shown:
            text = cut(column.cells[i], column.width)
            style = column.styles[i] if column.styles else None
            padding = " " * (column.width - display_width(text))
            parts.append(paint(text, style, colour) + padding)
        lines.append(GAP.join(parts).rstrip())
    return lines


def pad(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


def write_lines(lines: Iterable[str], stream: IO[str] | None = None) -> None:
    (stream or sys.stdout).write("".join(line + "\n" for line in lines))


def workload_table(
    workloads: Sequence[Workload],
    *,
    owner: bool = False,
    wide: bool = False,
    width: int | None = None,
    colour: bool = False,
) -> list[str]:
    """The ``corral ls`` table. Columns ``ID [OWNER] NAME STATUS EXIT AGE COMMAND
    REASON``; ``wide`` adds CPUS, MEM, GPUS and LABELS and cuts nothing. To fit
    ``width``, the command is cut, then the reason; then REASON, COMMAND, AGE, EXIT,
    NAME, OWNER are dropped in turn. The id never gives way."""
    w = workloads
    commands = [command_text(x.command) for x in w]
    if not wide:
        commands = [cut(c, COMMAND_MAX_CHARS) for c in commands]
    columns = [Column("ID", [x.id for x in w])]
    if owner:
        columns.append(Column("OWNER", [clean(x.owner) for x in w], drop_rank=5))
    columns += [
        Column("NAME", [clean(x.name or "") for x in w], drop_rank=4),
        Column(
            "STATUS",
            [status_text(x) for x in w],
            styles=[STATUS_STYLES.get(x.status) for x in w],
        ),
        Column("EXIT", [exit_text(x) for x in w], drop_rank=3),
        Column("AGE", [format_age(x.created_at) for x in w], drop_rank=2),
    ]
    if wide:
        columns += [
            Column("CPUS", [f"{x.resources.cpus:g}" for x in w]),
            Column("MEM", [format_size(x.resources.memory_mb) for x in w]),
            Column("GPUS", [str(x.resources.gpus) for x in w]),
            Column("LABELS", [pairs_text(x.labels) for x in w]),
        ]
    columns += [
        Column("COMMAND", commands, cut_rank=0, drop_rank=1),
        Column("REASON", [clean(x.reason or "") for x in w], cut_rank=1, drop_rank=0),
    ]
    return render_table(columns, None if wide else width, colour)


def token_table(tokens: Iterable[Token], colour: bool = False) -> list[str]:
    """The ``corral token list`` table: never a key (the server never returns one)."""
    t = list(tokens)
    columns = [
        Column("ID", [x.id for x in t]),
        Column("USER", [clean(x.user) for x in t]),
        Column("ROLE", [clean(x.role) for x in t]),
        Column("UNIX-USER", [clean(x.unix_user or "-") for x in t]),
        Column("CREATED", [format_time(x.created_at) for x in t]),
        Column("REVOKED", [format_time(x.revoked_at) if x.revoked_at else "-" for x in t]),
    ]
    return render_table(columns, None, colour)


def fields_block(rows: Sequence[tuple[str, str]], colour: bool) -> list[str]:
    """``key  value`` lines, the keys aligned."""
    key_width = max(len(k) for k, _ in rows)
    return [paint(pad(k, key_width), "bold", colour) + GAP + v for k, v in rows]


def _time_field(timestamp: str | None) -> str:
    return f"{timestamp} ({format_age(timestamp)} ago)" if timestamp else "-"


def workload_detail(workload: Workload, events: Sequence[Event], colour: bool = False) -> list[str]:
    """``corral show``: every field, then the history."""
    from corral.units import format_duration

    w = workload
    r = w.resources
    status = paint(status_text(w), STATUS_STYLES.get(w.status), colour)
    rows = [
        ("id", w.id),
        ("owner", clean(w.owner)),
        ("name", clean(w.name or "-")),
        ("status", status),
        ("reason", clean(w.reason or "-")),
        ("exit code", "-" if w.exit_code is None else str(w.exit_code)),
        ("signal", w.signal or "-"),
        ("command", command_text(w.command)),
        ("cwd", clean(w.cwd or "-")),
        ("env", env_text(w.env)),
        ("labels", pairs_text(w.labels) or "-"),
        ("resources", f"cpus {r.cpus:g}, memory {format_size(r.memory_mb)}, gpus {r.gpus}"),
        ("priority", str(w.priority)),
        ("timeout", "-" if w.timeout_seconds is None else format_duration(w.timeout_seconds)),
    ]
    if w.depends_on:
        kind = "to complete" if w.dependency_type == "afterok" else "to end"
        rows.append(("after", f"{', '.join(w.depends_on)} ({kind}; {w.dependency_type})"))
    if w.array_index is not None:
        rows.append(("array index", str(w.array_index)))
    if w.batch_id is not None:
        limit = "" if w.max_running is None else f" (at most {w.max_running} running at once)"
        rows.append(("batch", w.batch_id + limit))
    rows += [
        ("created", _time_field(w.created_at)),
        ("started", _time_field(w.started_at)),
        ("finished", _time_field(w.finished_at)),
        ("run time", format_elapsed(run_time(w)) if w.started_at else "-"),
        ("node", clean(w.node or "-")),
    ]
    history = [
        Column("SEQ", [str(e.seq) for e in events]),
        Column("AT", [e.at for e in events]),
        Column("EVENT", [clean(e.type) for e in events]),
        Column(
            "FROM",
            [str(e.from_status) if e.from_status else "-" for e in events],
            styles=[STATUS_STYLES.get(e.from_status) if e.from_status else None for e in events],
        ),
        Column(
            "TO",
            [str(e.to_status) for e in events],
            styles=[STATUS_STYLES.get(e.to_status) for e in events],
        ),
        Column("ACTOR", [clean(e.actor or "-") for e in events]),
        Column("REASON", [clean(e.reason or "") for e in events]),
    ]
    return [
        *fields_block(rows, colour),
        "",
        paint("events", "bold", colour),
        *render_table(history, None, colour),
    ]


def format_size(mib: int) -> str:
    from corral.units import format_size as size

    return size(mib)


def _amounts(cpus: float, memory_mb: int, gpus: int) -> str:
    return f"cpus {cpus:g}, memory {format_size(max(memory_mb, 0))}, gpus {gpus}"


def status_view(status: ServerStatus, width: int | None, colour: bool) -> list[str]:
    """``corral status``: capacity, used, free, counts by status, the queue's head."""
    counts = ", ".join(f"{status.counts[s]} {s}" for s in Status if status.counts.get(s))
    rows = []
    if status.server is not None:  # (servers before issue 11 had no names)
        rows.append(("server", clean(status.server)))
        rows.append(
            ("leader", clean(status.leader) if status.leader else "none (no server schedules now)")
        )
    rows.append(("executor", status.executor))
    for name in ("capacity", "used", "free"):
        amount = getattr(status, name)
        rows.append((name, _amounts(amount.cpus, amount.memory_mb, amount.gpus)))
    rows.append(("workloads", counts or "none"))
    lines = fields_block(rows, colour)
    q = status.queue
    if not q:
        return [*lines, "", "queue: empty"]
    more = f", the first {len(q)} shown" if status.queue_length > len(q) else ""
    lines += ["", f"queue: {status.queue_length} pending, in scheduling order{more}"]
    columns = [
        Column("ID", [e.id for e in q]),
        Column("OWNER", [clean(e.owner) for e in q], drop_rank=3),
        Column("NAME", [clean(e.name or "") for e in q], drop_rank=2),
        Column("PRIO", [str(e.priority) for e in q], drop_rank=4),
        Column("CPUS", [f"{e.resources.cpus:g}" for e in q], drop_rank=5),
        Column("MEM", [format_size(e.resources.memory_mb) for e in q], drop_rank=6),
        Column("GPUS", [str(e.resources.gpus) for e in q], drop_rank=7),
        Column("REASON", [clean(e.reason or "") for e in q], cut_rank=0, drop_rank=1),
    ]
    return lines + render_table(columns, width, colour)


class StatusLine:
    """The live ``<id> running 3.2s`` line on stderr while waiting (a terminal only),
    redrawn on each poll."""

    def __init__(self, stream: IO[str], *, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.colour = enabled and colour_on(stream)
        self.prefix = ""
        self._drawn = False
        self._last = 0.0

    def update(self, workload: Workload) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self._drawn and now - self._last < 0.1:
            return
        self._last = now
        self.stream.write("\r\x1b[K" + self.prefix + status_line(workload, self.colour))
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


# --- the exit status of wait and submit --wait ----------------------------------------


def exit_status(workload: Workload) -> int:
    """The exit status that mirrors a finished workload: completed 0; failed with an
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
    import signal

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
