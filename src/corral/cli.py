"""The ``corral`` command line: a thin face over ``corral.Client`` (and ``serve``).

It starts in tens of milliseconds: ``argparse`` and the light client only (standard
library), plain text out (``cli_render``); ``corral serve`` imports the server when it
runs. Every failure prints one line to stderr, never a traceback, and exits with a
status that says what kind of failure it was (``EXIT_HELP``).

Handles: wherever a workload is named, a full id, a unique prefix of one (at least
``PREFIX_MIN`` characters), or a name unique among the caller's active workloads
(``resolve``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

from corral import __version__
from corral.cli_render import (
    EXIT_ERROR,
    StatusLine,
    as_json,
    clean,
    colour_on,
    exit_status,
    final_line,
    print_json,
    status_view,
    table_width,
    token_table,
    workload_detail,
    workload_table,
    write_lines,
)
from corral.client import (
    RETRY_FOR,
    APIError,
    Client,
    CorralClientError,
    Forbidden,
    InvalidInput,
    InvalidTransition,
    NotFound,
    ServerUnreachable,
    Unauthorized,
    WaitTimeout,
)
from corral.defaults import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_URL, is_loopback
from corral.wire import (
    ENV_NAME_RE,
    TERMINAL,
    UNIX_USER_RE,
    USER_NAME_RE,
    Status,
    Workload,
    check_label,
)

TYPE_CHECKING = False  # not typing's: importing typing costs each call milliseconds
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = ["exit_status", "main", "run"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_KEY_REFUSED = 4
EXIT_WAIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
EXIT_HELP = """\
exit status:
  0    done (wait, submit --wait: the workload completed)
  1    corral refused: not found, conflict, invalid input, server error
  2    usage: a bad flag or value, too short an id prefix
  3    the server cannot be reached (nothing listens, DNS, TLS)
  4    the server refused the API key (401, 403)
  124  wait --timeout ran out
  130  interrupted (Ctrl-C)
  wait and submit --wait exit with the workload's outcome: 0 completed, its exit code
  when it failed with one, 128+N when killed by signal N, 143 killed through corral,
  1 any other failure (timeout, spawn failure, lost); with several, the outcome of the
  first (in the order given) that did not complete.

workloads are named by a full id, a unique prefix of one (4 characters or more), or
a name unique among your active workloads.

environment: CORRAL_URL (the server), CORRAL_TOKEN or CORRAL_TOKEN_FILE (the API key),
CORRAL_DATA_DIR (a local server's data dir, whose key file is used), NO_COLOR."""

PREFIX_MIN = 4
ID_LENGTH = 26
ID_RE = re.compile(r"[0-9a-hjkmnp-tv-z]{26}")
PREFIX_RE = re.compile(r"[0-9a-hjkmnp-tv-z]+")
"""Ids are Crockford base32, lower case."""
KEY_RE = re.compile(r"[\x21-\x7e]+")
ACTIVE = (Status.PENDING, Status.RUNNING)
FINISHED = tuple(s for s in Status if s in TERMINAL)
PAGE_MAX = 1000
"""The largest page the server returns (``limit`` of ``GET /v1/workloads``)."""
BATCH_MAX = 1000
"""The most workloads one batch may create (``POST /v1/workloads/batch``)."""
CANDIDATES_SHOWN = 10
TOKEN_FLAG_SOURCE = "--token"
NEVER_EXPORTED = frozenset(
    {"CORRAL_TOKEN", "CORRAL_TOKEN_FILE", "RAY_AUTH_TOKEN", "CORRAL_DB", "PGPASSWORD"}
)
"""Secrets of the shell a submit never copies into a workload (a workload's env is
stored and shown to its owner and admins): the API key, and what operators export
for `corral serve` (Ray's token, the database URL with its password, libpq's
password). ``-e`` still sets any of them on purpose."""
STATUS_CHOICES = ", ".join(Status)


class CliError(Exception):
    """An error to show the user as one line, with its exit status."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def usage(message: str) -> CliError:
    return CliError(message, EXIT_USAGE)


# --- the parser -------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line naming the command's ``--help``."""

    def error(self, message: str) -> NoReturn:
        raise usage(f"{_usage_text(message)} (see: {self.prog} --help)")


def _usage_text(message: str) -> str:
    """argparse's wording, made plainer."""
    if message.startswith("the following arguments are required: "):
        return "missing " + message.split(": ", 1)[1]
    match = re.match(r"one of the arguments (.+) is required$", message)
    if match:
        return "missing " + " or ".join(match[1].split())
    match = re.match(r"argument (\S+): not allowed with argument (\S+)$", message)
    if match:
        return f"{match[1]} cannot be given with {match[2]}"
    match = re.match(r"argument (\S+): invalid choice: '([^']*)'", message)
    if match and match[1] == "COMMAND":
        return f"no command {match[2]!r}"
    if match:
        return f"invalid {match[1]} {match[2]!r}"
    match = re.match(r"argument ([^:]+): expected one argument", message)
    if match:
        return f"{match[1].split('/')[-1]} needs a value"
    if message.startswith("unrecognized arguments: "):
        return "unknown argument " + message.split(": ", 1)[1]
    return message


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=min(table_width() or 100, 100))


Handler = Callable[[argparse.Namespace], int]


def build_parser(only: str | None = None, *, every: bool = True) -> Parser:
    """The whole parser; with ``every=False``, only the command ``only`` and its
    arguments (every command listed, none with arguments, when ``only`` is None or
    unknown: for the help and the error): building what one call does not use would
    cost each call milliseconds."""
    root = Parser(
        prog="corral",
        description="corral: submit commands, run them when resources allow, follow and kill them.",
        epilog=EXIT_HELP,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    root.add_argument(
        "--server",
        metavar="URL",
        help=f"the corral server (default: $CORRAL_URL, else {DEFAULT_URL})",
    )
    root.add_argument(
        "--token",
        metavar="KEY",
        help="the API key (default: $CORRAL_TOKEN, $CORRAL_TOKEN_FILE, $CORRAL_DATA_DIR/token,"
        " $XDG_DATA_HOME/corral/token); a flag is visible to every user of this machine in ps",
    )
    root.add_argument("--version", action="version", version=f"corral {__version__}")
    commands = root.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    table = _commands()
    known = only in {name for name, *_ in table}
    for name, handler, summary, populate, extra in table:
        if not every and known and name != only:
            continue  # another command: not even listed, when no help lists them
        sub = _subcommand(commands, name, handler, summary, server=False, **extra)
        if not every and name != only:
            continue
        if name not in ("serve", "completion"):
            _server_after(sub)
        populate(sub)
    return root


def _subcommand(
    parsers: Any, name: str, handler: Handler, summary: str, *, server: bool, **extra: Any
) -> Parser:
    """A command's parser (``corral NAME``, ``corral token NAME``): its help, its handler,
    and with ``server`` the ``--server`` it may take after its name."""
    sub: Parser = parsers.add_parser(
        name,
        help=summary,
        description=extra.pop("description", summary),
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        **extra,
    )
    sub.set_defaults(handler=handler)
    if server:
        _server_after(sub)
    return sub


def _server_after(sub: Parser) -> None:
    sub.add_argument("--server", dest="server_after", metavar="URL", help="the corral server")


def _commands() -> list[tuple[str, Handler, str, Callable[[Parser], None], dict[str, Any]]]:
    """Each command: name, handler, summary, what adds its arguments, parser options."""
    completion = (
        "print a completion script: commands, flags, and ids through corral ls -q.\n"
        '  bash: eval "$(corral completion bash)" in ~/.bashrc\n'
        '  zsh:  eval "$(corral completion zsh)" in ~/.zshrc (after compinit)\n'
        "  fish: corral completion fish > ~/.config/fish/completions/corral.fish"
    )
    submit_usage = (
        "corral submit [OPTIONS] [--] CMD [ARG...]\n       corral submit [OPTIONS] --from-file FILE"
    )
    return [
        ("serve", cmd_serve, "run the API server (and scheduler, executor)", _serve_parser, {}),
        (
            "submit",
            cmd_submit,
            "submit a command (or many); print the ids",
            _submit_parser,
            {"usage": submit_usage},
        ),
        ("ls", cmd_ls, "list workloads: active ones, then recent finished ones", _ls_parser, {}),
        ("show", cmd_show, "show one workload and its history", _show_parser, {}),
        ("kill", cmd_kill, "kill workloads (SIGTERM, then SIGKILL)", _kill_parser, {}),
        (
            "clean",
            cmd_clean,
            "delete finished workloads older than an age, with their events and logs",
            _clean_parser,
            {},
        ),
        ("wait", cmd_wait, "wait until workloads end; exit like them", _wait_parser, {}),
        ("logs", cmd_logs, "print a workload's output (stdout and stderr)", _logs_parser, {}),
        ("watch", cmd_watch, "print every event as it happens, until stopped", _watch_parser, {}),
        (
            "status",
            cmd_status,
            "the machine: capacity, used, free, counts, head of the queue",
            _json_flag,
            {},
        ),
        ("token", cmd_token_help, "manage API keys (admin keys only)", _token_parser, {}),
        (
            "completion",
            cmd_completion,
            "print a shell completion script",
            _completion_parser,
            {"description": completion},
        ),
    ]


def _json_flag(p: Parser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def _show_parser(p: Parser) -> None:
    p.add_argument("handle", metavar="ID", help="an id, a unique prefix of one, or a name")
    _json_flag(p)


def _logs_parser(p: Parser) -> None:
    p.add_argument("handle", metavar="ID", help="an id, a unique prefix of one, or a name")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the workload ends"
    )
    p.add_argument("--tail", metavar="N", help="start with the last N lines")


def _watch_parser(p: Parser) -> None:
    p.add_argument(
        "handles", nargs="*", metavar="ID", help="only these (ids, unique prefixes or names)"
    )
    p.add_argument(
        "-l", "--label", action="append", metavar="K=V", help="with this label (repeatable)"
    )
    p.add_argument(
        "--status", action="append", metavar="STATUS", help=f"moving to: {STATUS_CHOICES}"
    )
    p.add_argument(
        "--since",
        metavar="DURATION",
        help="from the events of the last DURATION (30s, 10m, 1h, 7d; default: the named"
        " workloads' whole history, else from now on)",
    )
    p.add_argument("--after", metavar="EVENT_ID", help="from after this event id (0: all kept)")
    _json_flag(p)


def _completion_parser(p: Parser) -> None:
    p.add_argument("shell", metavar="SHELL", choices=("bash", "zsh", "fish"))


def command_word(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the first word not an option or the value of
    ``--server`` or ``--token``), or None (also after ``--help``, which lists them all)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in ("--server", "--token"):
            skip = True
        elif word in ("--", "-h", "--help"):
            return None
        elif not word.startswith("-"):
            return word
    return None


def _serve_parser(p: Parser) -> None:
    p.add_argument("--host", help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=_int_flag("--port"), help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--db", metavar="URL", help="database URL (default sqlite:///DATA_DIR/corral.db)"
    )
    p.add_argument(
        "--data-dir", metavar="DIR", help="database and logs (default $XDG_DATA_HOME/corral)"
    )
    p.add_argument(
        "--executor",
        metavar="local|ray|none",
        help="local: run workloads here; ray: on a Ray cluster; none: API only (default local)",
    )
    p.add_argument(
        "--ray-address",
        metavar="auto|HOST:PORT",
        help="the Ray cluster to join (--executor ray); default: start one on this machine",
    )
    p.add_argument(
        "--ray-node-dir",
        metavar="DIR",
        help="where each Ray node keeps its workloads' logs and state (default: its /tmp)",
    )
    p.add_argument(
        "--name",
        help="this server's name among the servers of one database (default: the host name)",
    )
    p.add_argument(
        "--scheduler",
        metavar="auto|never",
        help="auto: schedule when holding the database's scheduler lease, else stand by;"
        " never: serve the API only (default auto)",
    )
    p.add_argument(
        "--lease",
        metavar="DURATION",
        help="how long the scheduler lease lasts unrenewed: a standby takes over after"
        " it (default 15s)",
    )
    p.add_argument(
        "--advertise-url",
        metavar="URL",
        help="where other servers of the database reach this one: http(s)://HOST[:PORT]"
        " (default http://HOST:PORT; with --host 0.0.0.0, the FQDN if --allowed-host"
        " lists it, else the first non-loopback --allowed-host)",
    )
    p.add_argument("--cpus", type=_float_flag("--cpus"), help="CPUs to schedule (default: all)")
    p.add_argument(
        "--memory-mb", metavar="SIZE", help="memory to schedule: MiB, or 64G (default: all)"
    )
    p.add_argument(
        "--gpus", type=_int_flag("--gpus"), help="GPUs to schedule (default: nvidia-smi's count)"
    )
    p.add_argument(
        "--kill-grace",
        metavar="DURATION",
        help="time between SIGTERM and SIGKILL when stopping a workload (default 10s)",
    )
    p.add_argument(
        "--max-log-bytes",
        metavar="SIZE",
        help="keep each workload's log to its first and last SIZE/2 bytes, with a line"
        " saying how many were dropped between: 10M, 1G or bytes (default 0: no cap)",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="check no API key: every request acts as an admin (loopback only; unsafe on a"
        " shared machine)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a host name clients may use besides the loopback ones (repeatable); needed"
        " with a non-loopback --host",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        metavar="ORIGIN",
        help="a browser origin (https://host[:port]) that may change state (repeatable)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate")
    p.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert")
    p.add_argument(
        "--rate-limit",
        type=_float_flag("--rate-limit"),
        metavar="N",
        help="requests per second per API key (bursts of twice that); 0: no limit (default 200)",
    )
    p.add_argument(
        "--log-format",
        metavar="text|json",
        help="the server log on stderr, one line per record (default text; $CORRAL_LOG_FORMAT)",
    )
    p.add_argument(
        "--retain-finished",
        metavar="DURATION",
        help="delete finished workloads, their events and logs, this long after they ended:"
        " 12h, 7d (default: keep them)",
    )


def _submit_parser(p: Parser) -> None:
    p.add_argument("--name", help="a name: shown in listings, usable as a handle")
    p.add_argument("-l", "--label", action="append", metavar="K=V", help="a label (repeatable)")
    p.add_argument(
        "-e", "--env", action="append", metavar="K=V", help="set a variable (repeatable; wins)"
    )
    p.add_argument(
        "--export",
        metavar="ALL|NONE|VAR,...",
        default="ALL",
        help="which of this shell's variables the workload gets (default ALL, as sbatch;"
        " never CORRAL_TOKEN, CORRAL_TOKEN_FILE, RAY_AUTH_TOKEN, CORRAL_DB, PGPASSWORD"
        " or the API key)",
    )
    p.add_argument("--cpus", metavar="N", help="CPUs it needs (default 1)")
    p.add_argument("--memory", metavar="SIZE", help="memory it needs: 512M, 4G, 1.5T (MiB bare)")
    p.add_argument("--memory-mb", metavar="MIB", help="memory it needs, in MiB (or --memory)")
    p.add_argument("--gpus", metavar="N", help="GPUs it needs (default 0)")
    p.add_argument("--priority", metavar="N", help="higher runs first (default 0)")
    p.add_argument(
        "--timeout",
        metavar="DURATION",
        help="stop it (as failed) after this long running: 90 (seconds), 15m, 1h30m, 1:30:00",
    )
    p.add_argument(
        "--cwd", metavar="DIR", help="working directory (default: the current one, as sbatch)"
    )
    p.add_argument(
        "--after",
        action="append",
        metavar="ID,...",
        help="start only once these completed (killed with them if one fails)",
    )
    p.add_argument(
        "--after-any",
        action="append",
        metavar="ID,...",
        help="start only once these ended, however they ended",
    )
    p.add_argument(
        "--array",
        metavar="SPEC",
        help="one workload per index, each with $CORRAL_ARRAY_INDEX: 0-99, 0-99%%4 (at most"
        " 4 running at once), 1,3,5, 0-15:4 (every 4th)",
    )
    p.add_argument(
        "--from-file",
        metavar="FILE",
        help="one command a line (quoted as in a shell; blank lines and # comments skipped;"
        " - reads stdin), submitted together",
    )
    p.add_argument("--wait", action="store_true", help="wait for the end; exit like it")
    p.add_argument("--json", action="store_true", help="print the workloads as JSON")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="print the ids only; nothing on stderr"
    )
    p.add_argument(
        "argv",  # not "command": that is the subcommand's name
        nargs=argparse.REMAINDER,
        metavar="CMD",
        help="the command and its arguments (options after it are its own)",
    )


def _selector_flags(p: Parser, *, status_help: str) -> None:
    p.add_argument(
        "-l", "--label", action="append", metavar="K=V", help="with this label (repeatable)"
    )
    p.add_argument(
        "--status", action="append", metavar="STATUS", help=f"{status_help}: {STATUS_CHOICES}"
    )
    p.add_argument("--name", metavar="NAME", help="with this name")


def _ls_parser(p: Parser) -> None:
    _selector_flags(p, status_help="only these statuses (comma-separated or repeated)")
    p.add_argument("--limit", metavar="N", help="at most N (default 50)")
    p.add_argument("--all", action="store_true", help="every one, no limit")
    p.add_argument(
        "-o", dest="output", metavar="wide", choices=("wide",), help="wide: more columns, uncut"
    )
    p.add_argument("--json", action="store_true", help="print JSON, every field")
    p.add_argument("-q", "--quiet", action="store_true", help="print the ids only")
    p.add_argument(
        "--all-users", action="store_true", help="everyone's, with an OWNER column (admin keys)"
    )


def _kill_parser(p: Parser) -> None:
    p.add_argument("handles", nargs="*", metavar="ID", help="ids, unique prefixes or names")
    _selector_flags(p, status_help="those with these statuses (default: pending, running)")
    p.add_argument("--all", action="store_true", help="every active workload of yours")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask to confirm --all")
    p.add_argument("--json", action="store_true", help="print what was killed as JSON")


def _clean_parser(p: Parser) -> None:
    p.add_argument(
        "--older-than",
        metavar="DURATION",
        help="those that ended longer ago than this: 3d, 12h, 90m, 0 (every finished one);"
        " yours, or with an admin key everyone's (required)",
    )
    p.add_argument("--json", action="store_true", help='print {"deleted": N}')


def _wait_parser(p: Parser) -> None:
    p.add_argument("handles", nargs="*", metavar="ID", help="ids, unique prefixes or names")
    _selector_flags(p, status_help="those with these statuses (default: any)")
    p.add_argument(
        "--timeout", metavar="DURATION", help="give up after this long (exit 124): 30, 5m, 1h"
    )
    p.add_argument("--json", action="store_true", help="print the final workloads as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="nothing on stderr but errors")


def _token_parser(p: Parser) -> None:
    p.set_defaults(token_parser=p)
    tokens = p.add_subparsers(dest="token_command", metavar="COMMAND", title="commands")
    create = _subcommand(
        tokens,
        "create",
        cmd_token_create,
        "create an API key and print it",
        server=True,
        description="Create an API key and print it (alone on stdout: KEY=$(corral token"
        " create ...)).",
    )
    whose = create.add_mutually_exclusive_group(required=True)
    whose.add_argument("--user", metavar="NAME", help="whose key (created with its first key)")
    whose.add_argument(
        "--metrics",
        metavar="NAME",
        help="a metrics key named NAME (a scraper's): it may only GET /metrics",
    )
    create.add_argument("--admin", action="store_true", help="an admin key: sees everything")
    create.add_argument(
        "--unix-user",
        metavar="U",
        help="run this user's workloads as this Unix account (the server must run as root)",
    )
    create.add_argument("--description", metavar="TEXT", help="who or what it is for")
    create.add_argument("--json", action="store_true", help="print the token as JSON (with key)")
    listing = _subcommand(
        tokens, "list", cmd_token_list, "list API keys (never the keys)", server=True
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = _subcommand(tokens, "revoke", cmd_token_revoke, "revoke an API key", server=True)
    revoke.add_argument("token_id", metavar="ID")


def _int_flag(flag: str) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise usage(f"invalid {flag} {text!r}: expected a whole number") from None

    return convert


def _float_flag(flag: str) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise usage(f"invalid {flag} {text!r}: expected a number") from None

    return convert


# --- the client and handles ----------------------------------------------------------------


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[Client]:
    """A client for ``--server`` after the command, else before it, else
    ``$CORRAL_URL``, else the default; with ``--token``, else the key it finds."""
    token = args.token
    if token is not None and not KEY_RE.fullmatch(token.strip()):
        raise usage("invalid --token: a key is one word of printable ASCII (corral_…)")
    url = getattr(args, "server_after", None) or args.server
    try:
        client = Client(url, token=token, on_retry=_say_retrying())
    except CorralClientError as exc:
        if str(exc).startswith("invalid server URL"):  # a bad --server or $CORRAL_URL
            raise usage(str(exc)) from None
        raise
    with client:
        if token is not None:
            client.token_source = TOKEN_FLAG_SOURCE
        yield client


def _say_retrying() -> Callable[[APIError, float], None]:
    """The client's ``on_retry``: one line on stderr at the first wait of the command
    (a 429, or a 503 while the server's database is locked or unreachable), so a
    command that waits for up to ``RETRY_FOR`` seconds says why."""
    said = False

    def say(error: APIError, delay: float) -> None:
        nonlocal said
        if not said:
            said = True
            detail = " ".join(error.detail.split())
            print(
                f"corral: {detail}; retrying for up to {RETRY_FOR:g} s…",
                file=sys.stderr,
                flush=True,
            )

    return say


def resolve(client: Client, handle: str) -> str:
    """The id a handle names: a full id as is; else the one workload whose id starts
    with it (4 characters or more); else the one active workload of the caller with
    that name. Ambiguous: exit 1 listing the candidates; too short: exit 2."""
    text = handle.strip()
    lowered = text.lower()
    if not text:
        raise usage("an empty workload id or name")
    if ID_RE.fullmatch(lowered):
        return lowered
    is_prefix = bool(PREFIX_RE.fullmatch(lowered))
    if is_prefix and len(lowered) >= PREFIX_MIN:
        matches, total = _matches(client, lowered, id_prefix=lowered)
        if not matches:  # an admin may name anyone's
            with suppress(Forbidden):
                matches, total = _matches(client, lowered, id_prefix=lowered, all_users=True)
        if len(matches) == 1:
            return matches[0].id
        if matches:
            raise _ambiguous(text, matches, total)
    named, total = _matches(client, text, name=text, status=ACTIVE)
    if len(named) == 1:
        return named[0].id
    if named:
        raise _ambiguous(text, named, total)
    if is_prefix and len(lowered) < PREFIX_MIN:
        raise usage(
            f"{text!r} is too short for an id prefix (at least {PREFIX_MIN} characters) and"
            " names no active workload"
        )
    raise _no_workload(text)


def _matches(client: Client, handle: str, **query: Any) -> tuple[list[Workload], int | None]:
    """The workloads a prefix or a name matches (at most ``CANDIDATES_SHOWN``), and how
    many in all. Checked here too: a server that ignored the filter names nothing."""
    page = client.page(limit=CANDIDATES_SHOWN, count=True, **query)
    prefix = query.get("id_prefix")
    items = [
        w
        for w in page.items
        if (w.id.startswith(prefix) if prefix is not None else w.name == handle)
    ]
    return items, page.total if len(items) == len(page.items) else len(items)


def _ambiguous(handle: str, items: Sequence[Workload], total: int | None) -> CliError:
    count = max(total or 0, len(items))
    shown = ", ".join(f"{w.id} ({clean(w.name or '-')}, {w.status})" for w in items)
    more = ", …" if count > len(items) else ""
    return CliError(f"{clean(handle)} matches {count} workloads: {shown}{more}")


def _no_workload(handle: str) -> CliError:
    if len(handle) == ID_LENGTH:
        return CliError(f"no workload {clean(handle)} (corral ls lists them)")
    return CliError(
        f"no workload {clean(handle)}: no id of yours starts with it, and"
        " no active one has that name (names work while active; corral ls lists them)"
    )


def resolve_all(client: Client, handles: Sequence[str]) -> list[str]:
    """Each handle's id, in order, without repeats."""
    ids: list[str] = []
    for handle in handles:
        workload_id = resolve(client, handle)
        if workload_id not in ids:
            ids.append(workload_id)
    return ids


# --- values ---------------------------------------------------------------------------------


def pairs(
    values: Sequence[str] | None, flag: str, *, labels: bool = False, env: bool = False
) -> dict[str, str]:
    """``["K=V", …]`` -> ``{"K": "V"}``; a malformed one is a usage error."""
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise usage(f"invalid {flag} {item!r}: expected KEY=VALUE")
        if labels:
            try:
                check_label(key, value)
            except ValueError as exc:
                raise usage(f"invalid {flag} {item!r}: {exc}") from None
        if env and not ENV_NAME_RE.fullmatch(key):
            raise usage(
                f"invalid {flag} {item!r}: {key!r} is not a variable name"
                " (letters, digits and _, not starting with a digit)"
            )
        out[key] = value
    return out


def statuses(values: Sequence[str] | None) -> list[Status]:
    """``--status running,pending --status failed`` -> the statuses, validated."""
    out: list[Status] = []
    for value in values or []:
        for part in value.split(","):
            name = part.strip().lower()
            try:
                status = Status(name)
            except ValueError:
                raise usage(f"invalid --status {part!r}: use one of {STATUS_CHOICES}") from None
            if status not in out:
                out.append(status)
    return out


def number(text: str | None, flag: str, *, integer: bool = False, minimum: float = 0) -> Any:
    """``text`` as a number (None stays None); below ``minimum`` is a usage error."""
    if text is None:
        return None
    try:
        value: float = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise usage(f"invalid {flag} {text!r}: expected {kind}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise usage(f"invalid {flag} {text!r}: expected a finite number")
    if value < minimum:
        raise usage(f"{flag} must be >= {minimum:g}")
    return value


def size(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    from corral.units import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise usage(f"invalid {flag}: {exc}") from None


def duration(text: str | None, flag: str, *, zero: bool = False, age: bool = False) -> float | None:
    """The seconds of ``flag``'s ``text`` (None: not given), > 0 (or 0 with
    ``zero``); with ``age``, at most retention's largest age. Else a usage error."""
    if text is None:
        return None
    from corral.units import AGE_MAX_SECONDS, AGE_MAX_TEXT, parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise usage(f"invalid {flag}: {exc}") from None
    if seconds <= 0 and not (zero and seconds == 0):
        raise usage(f"{flag} must be > 0")
    if age and seconds > AGE_MAX_SECONDS:
        raise usage(f"{flag}: at most {AGE_MAX_TEXT}")
    return seconds


# --- serve ------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the API server; its packages are imported here, and only here."""
    try:
        from pydantic import ValidationError

        from corral.config import Settings
        from corral.server import ServeError
        from corral.server import serve as run_server
    except ImportError as exc:
        missing = exc.name or "a server package"
        raise CliError(
            f"corral serve needs the server's packages ({missing} is missing):"
            " pip install 'corral[server]'"
        ) from None
    optional = {
        "host": args.host,
        "port": args.port,
        "executor": args.executor,
        "ray_address": args.ray_address,
        "ray_node_dir": args.ray_node_dir,
        "db": args.db,
        "data_dir": args.data_dir,
        "cpus": args.cpus,
        "memory_mb": size(args.memory_mb, "--memory-mb"),
        "gpus": args.gpus,
        "kill_grace_seconds": duration(args.kill_grace, "--kill-grace", zero=True),
        "max_log_bytes": args.max_log_bytes,
        "name": args.name,
        "scheduler": args.scheduler,
        "lease_seconds": duration(args.lease, "--lease"),
        "advertise_url": args.advertise_url,
        "no_auth": args.no_auth or None,
        "allowed_hosts": args.allowed_host,
        "allowed_origins": args.allowed_origin,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "rate_limit": args.rate_limit,
        "log_format": args.log_format,
        "retain_finished_seconds": duration(args.retain_finished, "--retain-finished", age=True),
    }
    overrides = {k: v for k, v in optional.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        option = str(first["loc"][0]).replace("_seconds", "").replace("_", "-")
        option = {"allowed-hosts": "allowed-host", "allowed-origins": "allowed-origin"}.get(
            option, option
        )
        message = str(first["msg"]).removeprefix("Value error, ")
        raise usage(f"invalid --{option}: {message}") from None
    if settings.db_url.startswith(("postgresql:", "postgres:")):
        from corral.store.postgres import pool_size_from_env

        try:
            pool_size_from_env()  # a bad setting is a usage error, before any work
        except ValueError as exc:
            raise usage(str(exc)) from None
    try:
        run_server(settings)
    except ServeError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


# --- submit -----------------------------------------------------------------------------------


def exported_env(spec: str, key: str | None) -> dict[str, str]:
    """The submitting shell's variables that ``--export`` passes on: ``ALL``, ``NONE``
    or ``VAR,VAR…`` (those that are set). Never ``CORRAL_TOKEN``, ``CORRAL_TOKEN_FILE``,
    a variable whose value contains the API key in use, or a name that is not a
    variable name (bash's exported functions, ``BASH_FUNC_f%%``)."""
    choice = spec.strip()
    if choice.upper() == "NONE":
        return {}
    if choice.upper() == "ALL":
        names = list(os.environ)
    else:
        names = [n.strip() for n in choice.split(",") if n.strip()]
        for name in names:
            if not ENV_NAME_RE.fullmatch(name):
                raise usage(
                    f"invalid --export {spec!r}: {name!r} is not a variable name (ALL, NONE,"
                    " or names separated by commas)"
                )
        if not names:
            raise usage("invalid --export '': ALL, NONE, or names separated by commas")
    env = {}
    for name in names:
        value = os.environ.get(name)
        if value is None or name in NEVER_EXPORTED or not ENV_NAME_RE.fullmatch(name):
            continue
        if key and key in value:
            continue
        env[name] = value
    return env


def key_in_use(client: Client) -> str | None:
    """The API key the client sends, to keep it out of the exported environment."""
    key = getattr(client, "key", None)
    if isinstance(key, str) and key:
        return key
    headers = getattr(client, "_headers", None) or {}  # the Client keeps it only there
    bearer = headers.get("Authorization", "") if isinstance(headers, dict) else ""
    return bearer.removeprefix("Bearer ").strip() or None


def parse_array(spec: str) -> tuple[list[int], int | None]:
    """``0-99%4`` -> (0…99, 4); ``1,3,5``; ``0-15:4`` (every 4th). Usage errors name
    ``--array``."""
    text, percent, limit = spec.strip().partition("%")
    max_running = None
    if percent:
        if not limit.isdigit() or int(limit) < 1:
            raise usage(f"invalid --array {spec!r}: %N needs a whole number N >= 1")
        max_running = int(limit)
    indices: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:-(\d+)(?::(\d+))?)?\s*", part)
        if match is None:
            raise usage(
                f"invalid --array {spec!r}: use ranges and indices, e.g. 0-99, 0-99%4, 1,3,5,"
                " 0-15:4"
            )
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        step = int(match[3]) if match[3] is not None else 1
        if last < first:
            raise usage(f"invalid --array {spec!r}: {first}-{last} ends before it starts")
        if step < 1:
            raise usage(f"invalid --array {spec!r}: a step is at least 1")
        if (last - first) // step + 1 > BATCH_MAX:
            raise usage(f"invalid --array {spec!r}: at most {BATCH_MAX} workloads in one submit")
        indices.extend(range(first, last + 1, step))
    unique = sorted(set(indices))
    if len(unique) > BATCH_MAX:
        raise usage(f"invalid --array {spec!r}: at most {BATCH_MAX} workloads in one submit")
    return unique, max_running


def read_commands(path: str) -> list[tuple[int, list[str]]]:
    """``--from-file``: (line number, argv) for each command line, quoted as in a
    shell; blank lines and comments skipped."""
    import shlex

    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(os.path.expanduser(path), encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise usage(f"cannot read --from-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise usage(f"cannot read --from-file {path}: not UTF-8 text") from None
    commands = []
    for number_, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            argv = shlex.split(line, comments=True)
        except ValueError as exc:
            raise usage(f"{path} line {number_}: {str(exc).lower()}") from None
        if argv:
            commands.append((number_, argv))
    if not commands:
        raise usage(f"--from-file {path} has no command")
    if len(commands) > BATCH_MAX:
        raise usage(f"--from-file {path} has {len(commands)} commands; at most {BATCH_MAX}")
    return commands


def _dependencies(client: Client, args: argparse.Namespace) -> tuple[list[str], str | None]:
    after = [h for v in args.after or [] for h in v.split(",") if h.strip()]
    after_any = [h for v in args.after_any or [] for h in v.split(",") if h.strip()]
    if after and after_any:
        raise usage("give --after or --after-any, not both")
    if not after and not after_any:
        return [], None
    return resolve_all(client, after or after_any), "afterok" if after else "afterany"


def _base_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The API body every workload of this submit shares (no command yet)."""
    if args.memory is not None and args.memory_mb is not None:
        raise usage("give --memory or --memory-mb, not both")
    memory = size(args.memory, "--memory")
    if memory is None:
        memory = size(args.memory_mb, "--memory-mb")
    resources = {
        "cpus": number(args.cpus, "--cpus"),
        "memory_mb": memory,
        "gpus": number(args.gpus, "--gpus", integer=True),
    }
    spec: dict[str, Any] = {
        "name": args.name,
        "labels": pairs(args.label, "--label", labels=True) or None,
        "priority": number(args.priority, "--priority", integer=True, minimum=-(2**31)),
        "timeout_seconds": duration(args.timeout, "--timeout"),
        "cwd": os.path.abspath(os.path.expanduser(args.cwd if args.cwd is not None else ".")),
    }
    spec = {k: v for k, v in spec.items() if v is not None}
    if any(v is not None for v in resources.values()):
        spec["resources"] = {k: v for k, v in resources.items() if v is not None}
    return spec


def _command(args: argparse.Namespace) -> list[str]:
    """The command after the options (and ``--``); none with ``--from-file``."""
    command = list(args.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if args.from_file is not None and command:
        raise usage("give a command or --from-file, not both (see: corral submit --help)")
    if args.from_file is not None and args.array is not None:
        raise usage("give --array or --from-file, not both")
    if args.from_file is None and not command:
        raise usage("missing the command: corral submit [OPTIONS] -- CMD [ARG...]")
    return command


def cmd_submit(args: argparse.Namespace) -> int:
    command = _command(args)
    base = _base_spec(args)
    extra_env = pairs(args.env, "--env", env=True)
    array = parse_array(args.array) if args.array is not None else None
    lines = read_commands(args.from_file) if args.from_file is not None else None
    single = array is None and lines is None
    with connect(args) as client:
        env = {**exported_env(args.export, key_in_use(client)), **extra_env}
        if env:
            base["env"] = env
        depends_on, dependency_type = _dependencies(client, args)
        if depends_on:
            base["depends_on"] = depends_on
            base["dependency_type"] = dependency_type
        if array is not None:
            specs = [{**base, "command": command, "array_index": i} for i in array[0]]
            origins = [f"--array index {i}" for i in array[0]]
            created = _submit_many(client, specs, array[1], origins)
        elif lines is not None:
            specs = [{**base, "command": argv} for _, argv in lines]
            origins = [f"{args.from_file} line {n}" for n, _ in lines]
            created = _submit_many(client, specs, None, origins)
        else:
            created = [_submit_one(client, command, base)]
        if not args.wait:
            if args.json:
                print_json(as_json(created[0] if single else created))
            else:
                write_lines(w.id for w in created)
            return EXIT_OK
        if not args.json:
            write_lines(w.id for w in created)
            sys.stdout.flush()
        finals = wait_for(client, [w.id for w in created], None, quiet=args.quiet)
    if args.json:
        print_json(as_json(finals[0] if single else finals))
    return outcome(finals)


def _submit_one(client: Client, command: list[str], spec: dict[str, Any]) -> Workload:
    resources = spec.get("resources", {})
    try:
        return client.submit(
            command,
            name=spec.get("name"),
            env=spec.get("env"),
            cwd=spec.get("cwd"),
            cpus=resources.get("cpus"),
            memory_mb=resources.get("memory_mb"),
            gpus=resources.get("gpus"),
            labels=spec.get("labels"),
            priority=spec.get("priority"),
            timeout_seconds=spec.get("timeout_seconds"),
            depends_on=spec.get("depends_on"),
            dependency_type=spec.get("dependency_type"),
            idempotency_key=os.urandom(16).hex(),
        )
    except InvalidInput as exc:
        raise CliError(flag_names(exc), EXIT_ERROR) from None


def _submit_many(
    client: Client, specs: list[dict[str, Any]], max_running: int | None, origins: list[str]
) -> list[Workload]:
    try:
        return client.submit_many(
            specs, max_running=max_running, idempotency_key=os.urandom(16).hex()
        )
    except InvalidInput as exc:
        message = flag_names(exc, origins)
        if exc.status == 413:
            message += (
                f" ({len(specs)} workloads, each with the exported environment: fewer at a"
                " time, or --export NONE / --export VAR,…)"
            )
        raise CliError(message, EXIT_ERROR) from None


_FIELD_FLAGS = (
    (r"resources\.cpus", "--cpus"),
    (r"resources\.memory_mb", "--memory"),
    (r"resources\.gpus", "--gpus"),
    (r"resources", "--cpus/--memory/--gpus"),
    (r"timeout_seconds", "--timeout"),
    (r"priority", "--priority"),
    (r"labels(?:\.[^:\s]+)?", "--label"),
    (r"env(?:\.[A-Za-z_][A-Za-z0-9_]*)?", "--env"),
    (r"cwd", "--cwd"),
    (r"command(?:\.\d+|\[\d+\])?", "the command"),
    (r"name", "--name"),
    (r"depends_on(?:\.\d+|\[\d+\])?", "--after"),
    (r"dependency_type", "--after-any"),
    (r"array_index", "--array"),
    (r"max_running", "--array %N"),
)
_FIELD_RE = (
    r"(?:^|(?<=; ))(?:items(?:\[(\d+)\]|\.(\d+))\.?)?("
    + "|".join(f"(?:{pattern})" for pattern, _ in _FIELD_FLAGS)
    + r")(?=:)"
)
"""A field path at the start of a part of a 422's detail (compiled on an error only)."""
_WORDS = {"timeout_seconds": "--timeout", "memory_mb": "--memory"}


def flag_names(exc: InvalidInput, origins: Sequence[str] = ()) -> str:
    """The server's 422 with its field paths as the CLI's flags: ``resources.cpus:
    …`` -> ``--cpus: …``; ``items[3].command: …`` -> ``jobs.txt line 7: the command:
    …``."""

    def replace(match: re.Match[str]) -> str:
        index = match[1] or match[2]
        field = match[3]
        flag = next(f for p, f in _FIELD_FLAGS if re.fullmatch(p, field))
        if flag == "--env" and "." in field:
            flag = f"--env {field.split('.', 1)[1]}"
        if index is not None:
            i = int(index)
            where = origins[i] if i < len(origins) else f"workload {i + 1}"
            return f"{where}: {flag}"
        return flag

    text = re.sub(_FIELD_RE, replace, str(exc))
    for word, flag in _WORDS.items():
        text = re.sub(rf"\b{word}\b", flag, text)
    return text


# --- ls ---------------------------------------------------------------------------------------


def _fetch(
    client: Client,
    status: Sequence[Status],
    limit: int | None,
    filters: dict[str, Any],
) -> tuple[list[Workload], int]:
    """At most ``limit`` (None: all) workloads with these statuses, newest first, and
    how many match in all."""
    if limit is None:
        items = list(client.list(status=status, page_size=PAGE_MAX, **filters))
        return items, len(items)
    if limit == 0:
        page = client.page(status=status, limit=1, count=True, **filters)
        return [], page.total if page.total is not None else len(page.items)
    if limit <= PAGE_MAX:
        page = client.page(status=status, limit=limit, count=True, **filters)
        return page.items, page.total if page.total is not None else len(page.items)
    items = list(client.list(status=status, limit=limit, page_size=PAGE_MAX, **filters))
    if len(items) < limit:
        return items, len(items)
    total = client.page(status=status, limit=1, count=True, **filters).total
    return items, total if total is not None else len(items)


def cmd_ls(args: argparse.Namespace) -> int:
    wanted = statuses(args.status)
    filters: dict[str, Any] = {"labels": pairs(args.label, "--label", labels=True) or None}
    if args.name is not None:
        filters["name"] = args.name
    if args.all_users:
        filters["all_users"] = True
    if args.all and args.limit is not None:
        raise usage("give --limit or --all, not both")
    limit = None if args.all else number(args.limit or "50", "--limit", integer=True, minimum=1)
    with connect(args) as client:
        if wanted:
            items, total = _fetch(client, wanted, limit, filters)
        else:  # the active ones first, then the most recent finished ones
            items, total = _fetch(client, ACTIVE, limit, filters)
            room = None if limit is None else max(limit - len(items), 0)
            finished, finished_total = _fetch(client, FINISHED, room, filters)
            items += finished
            total += finished_total
    if args.json:
        print_json(as_json(items))
    elif args.quiet:
        write_lines(w.id for w in items)
    elif items:
        lines = workload_table(
            items,
            owner=args.all_users,
            wide=args.output == "wide",
            width=table_width(),
            colour=colour_on(sys.stdout),
        )
        write_lines(lines)
    else:
        print("no workloads", file=sys.stderr)
    if len(items) < total and not args.quiet:
        sys.stdout.flush()
        print(f"showing {len(items)} of {total} (--limit N, --all)", file=sys.stderr)
    return EXIT_OK


# --- show, logs, status --------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    with connect(args) as client:
        workload_id = resolve(client, args.handle)
        try:
            workload = client.get(workload_id)
            events = client.events(workload_id)
        except NotFound:
            raise _no_workload(args.handle) from None
    if args.json:
        print_json({"workload": as_json(workload), "events": as_json(events)})
    else:
        write_lines(workload_detail(workload, events, colour_on(sys.stdout)))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    tail = number(args.tail, "--tail", integer=True)
    out = sys.stdout.buffer
    with connect(args) as client:
        workload_id = resolve(client, args.handle)
        try:
            for chunk in client.stream_logs(workload_id, tail=tail, follow=args.follow):
                out.write(chunk)
                if args.follow:
                    out.flush()
            out.flush()
        except NotFound:
            raise _no_workload(args.handle) from None
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    """One line per event (``--json``: one object per line), reconnecting with the
    last id printed (``Client.watch``), until interrupted: the named workloads' from
    their first, else those from now on (``--since``, ``--after``: from earlier).
    Each workload named must exist (else nothing would ever be printed); a first
    connection that fails is an error; a later loss prints one line to stderr, then
    reconnects."""
    after = number(args.after, "--after", integer=True)
    since = duration(args.since, "--since", zero=True)
    if after is not None and since is not None:
        raise usage("give --after or --since, not both")
    labels = pairs(args.label, "--label", labels=True)
    out = sys.stdout

    def reconnecting(error: CorralClientError | None) -> None:
        why = str(error) if error is not None else "the server ended the stream"
        print(f"corral: {' '.join(why.split())}; reconnecting…", file=sys.stderr, flush=True)

    with connect(args) as client:
        ids = []
        for handle in args.handles:
            workload_id = resolve(client, handle)
            try:
                client.get(workload_id)  # a full id is not looked up by resolve
            except NotFound:
                raise _no_workload(handle) from None
            ids.append(workload_id)
        if after is None and since is None:  # a workload's whole story; else what comes
            after, since = (0, None) if ids else (None, 0.0)
        events = client.watch(
            ids,
            labels=labels,
            statuses=statuses(args.status),
            after=None if after is None else int(after),
            since=since,
            on_reconnect=reconnecting,
        )
        for event in events:
            if args.json:
                out.write(json.dumps(as_json(event), ensure_ascii=False) + "\n")
            else:
                moved = f"{event.from_status or '-'} -> {event.to_status}"
                reason = f"  {clean(event.reason)}" if event.reason else ""
                name = clean(event.name) if event.name else "-"
                out.write(f"{event.at}  {event.id}  {event.workload_id}  {name}  {moved}{reason}\n")
            out.flush()
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args) as client:
        status = client.status()
    if args.json:
        print_json(as_json(status))
    else:
        write_lines(status_view(status, table_width(), colour_on(sys.stdout)))
    return EXIT_OK


# --- kill ---------------------------------------------------------------------------------------


def _selectors(args: argparse.Namespace) -> dict[str, Any]:
    selected: dict[str, Any] = {}
    wanted = statuses(args.status)
    if wanted:
        selected["status"] = wanted
    labels = pairs(args.label, "--label", labels=True)
    if labels:
        selected["labels"] = labels
    if args.name is not None:
        selected["name"] = args.name
    return selected


def cmd_kill(args: argparse.Namespace) -> int:
    selected = _selectors(args)
    if args.handles and (selected or args.all):
        raise usage("give workloads (ids, prefixes, names) or selectors, not both")
    if args.all and selected:
        raise usage("--all goes alone: it kills every active workload of yours")
    if not args.handles and not selected and not args.all:
        raise usage(
            "say which workloads: IDs, --label, --status, --name or --all (see: corral kill --help)"
        )
    with connect(args) as client:
        if len(args.handles) == 1 and not args.json:
            return _kill_one(client, args.handles[0])
        if args.handles:
            ids = resolve_all(client, args.handles)
            result = client.kill_many(ids=ids)
        else:
            if args.all and not args.yes and _interactive() and not _confirm_all(client):
                print("nothing killed", file=sys.stderr)
                return EXIT_OK
            result = client.kill_many(
                status=selected.get("status", ()),
                labels=selected.get("labels"),
                name=selected.get("name"),
                all=args.all,
            )
    if args.json:
        print_json(as_json(result))
    else:
        write_lines(_killed_line(w) for w in result.killed)
    sys.stdout.flush()
    for item in result.not_killed:
        print(f"corral: {item.id} is already {item.status}; not killed", file=sys.stderr)
    for missing in result.not_found:
        print(f"corral: {_no_workload(missing)}", file=sys.stderr)
    if not args.handles and not result.killed and not result.not_killed:
        print("no workload matches; nothing killed", file=sys.stderr)
    if args.handles and (result.not_killed or result.not_found):
        return EXIT_ERROR
    return EXIT_OK


def cmd_clean(args: argparse.Namespace) -> int:
    if args.older_than is None:
        raise usage("say how old: corral clean --older-than DURATION (e.g. 3d, 12h)")
    seconds = duration(args.older_than, "--older-than", zero=True, age=True)
    assert seconds is not None
    with connect(args) as client:
        deleted = client.clean(seconds)
    if args.json:
        print_json({"deleted": deleted})
        return EXIT_OK
    from corral.units import format_duration

    noun = "workload" if deleted == 1 else "workloads"
    print(f"deleted {deleted} finished {noun} older than {format_duration(seconds)}")
    return EXIT_OK


def _killed_line(workload: Workload) -> str:
    return f"killed {workload.id}" + (" (stopping)" if workload.stopping else "")


def _kill_one(client: Client, handle: str) -> int:
    workload_id = resolve(client, handle)
    try:
        killed = client.kill(workload_id)
    except NotFound:
        raise _no_workload(handle) from None
    except InvalidTransition as exc:
        current = exc.current_status or "finished"
        raise CliError(f"workload {workload_id} is already {current}; nothing to kill") from None
    print(_killed_line(killed))
    return EXIT_OK


def _interactive() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _confirm_all(client: Client) -> bool:
    count = client.page(status=ACTIVE, limit=1, count=True).total
    if count is None:
        what = "every active workload"
    else:
        what = f"all {count} active workloads" if count != 1 else "your 1 active workload"
    sys.stderr.write(f"kill {what} of yours? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


# --- wait ----------------------------------------------------------------------------------------


def cmd_wait(args: argparse.Namespace) -> int:
    selected = _selectors(args)
    if args.handles and selected:
        raise usage("give workloads (ids, prefixes, names) or selectors, not both")
    if not args.handles and not selected:
        raise usage("say which workloads: IDs, --label, --status or --name")
    timeout = duration(args.timeout, "--timeout", zero=True)
    with connect(args) as client:
        if args.handles:
            ids = resolve_all(client, args.handles)
        else:
            found = client.list(
                status=selected.get("status", ()),
                labels=selected.get("labels"),
                name=selected.get("name"),
                page_size=PAGE_MAX,
            )
            ids = [w.id for w in found][::-1]  # in the order they were submitted
            if not ids:
                raise CliError("no workload matches; nothing to wait for")
        finals = wait_for(client, ids, timeout, quiet=args.quiet)
    if args.json:
        print_json(as_json(finals[0] if len(args.handles) == 1 else finals))
    return outcome(finals)


def wait_for(
    client: Client,
    ids: Sequence[str],
    timeout: float | None,
    *,
    quiet: bool = False,
) -> list[Workload]:
    """Wait for each workload in turn (all within ``timeout``), with a live line on a
    terminal's stderr; then the final line of each on stderr (with many, those that did
    not complete and a count)."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    line = StatusLine(sys.stderr, enabled=not quiet and _stderr_tty())
    last: dict[str, Workload] = {}

    def seen(workload: Workload) -> None:
        last["w"] = workload
        line.update(workload)

    finals: list[Workload] = []
    try:
        for n, workload_id in enumerate(ids):
            if len(ids) > 1:
                line.prefix = f"[{n + 1}/{len(ids)}] "
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                finals.append(client.wait(workload_id, timeout=remaining, on_update=seen))
            except NotFound:
                raise _no_workload(workload_id) from None
            except WaitTimeout as exc:
                line.clear()
                if len(ids) == 1:
                    raise CliError(
                        f"workload {workload_id} is still {exc.workload.status} after waiting"
                        f" {timeout:g} s",
                        EXIT_WAIT_TIMEOUT,
                    ) from None
                left = len(ids) - n
                raise CliError(
                    f"{left} of {len(ids)} workloads not finished after waiting {timeout:g} s"
                    f" ({exc.workload.id} is still {exc.workload.status})",
                    EXIT_WAIT_TIMEOUT,
                ) from None
    except KeyboardInterrupt:
        line.clear()
        current = last.get("w")
        if current is not None and current.status not in TERMINAL:
            print(
                f"stopped waiting; {current.id} is still {current.status}"
                f" (corral kill {current.id} stops it)",
                file=sys.stderr,
            )
        raise
    line.clear()
    if not quiet:
        _final_lines(finals)
    return finals


def _final_lines(finals: Sequence[Workload]) -> None:
    colour = colour_on(sys.stderr)
    shown = finals if len(finals) <= 20 else [w for w in finals if w.status != Status.COMPLETED]
    for workload in shown:
        print(final_line(workload, colour), file=sys.stderr)
    if len(finals) > 1:
        counts: dict[str, int] = {}
        for w in finals:
            counts[str(w.status)] = counts.get(str(w.status), 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in counts.items())
        print(f"{len(finals)} workloads: {summary}", file=sys.stderr)


def _stderr_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def outcome(finals: Sequence[Workload]) -> int:
    """The exit status of the first workload (in order) that did not complete; 0."""
    for workload in finals:
        code = exit_status(workload)
        if code != EXIT_OK:
            return code
    return EXIT_OK


# --- API keys ------------------------------------------------------------------------------------


def cmd_token_help(args: argparse.Namespace) -> int:
    args.token_parser.print_help()
    return EXIT_OK


def cmd_token_create(args: argparse.Namespace) -> int:
    flag, name = ("--metrics", args.metrics) if args.metrics is not None else ("--user", args.user)
    if not USER_NAME_RE.fullmatch(name):
        raise usage(
            f"invalid {flag} {name!r}: lower-case letters, digits, '_', '.', '@' or '-',"
            " starting with a letter or '_', at most 64"
        )
    if args.metrics is not None and (args.admin or args.unix_user is not None):
        given = "--admin" if args.admin else "--unix-user"
        raise usage(f"--metrics makes a key that may only read /metrics: it takes no {given}")
    if args.unix_user is not None and not UNIX_USER_RE.fullmatch(args.unix_user):
        raise usage(f"invalid --unix-user {args.unix_user!r}: not a Unix user name")
    role = "metrics" if args.metrics is not None else None
    with connect(args) as client:
        new = client.create_token(
            name,
            admin=args.admin,
            role=role,
            unix_user=args.unix_user,
            description=args.description,
        )
    if args.json:
        print_json(as_json(new))
    else:
        print(new.key, flush=True)
    kind = {"admin": "admin key", "metrics": "metrics key"}.get(new.role, "key")
    use = (
        "the scrape job's bearer token (authorization: {credentials: KEY})"
        if new.role == "metrics"
        else f"{new.user} to set as CORRAL_TOKEN, or to keep in a 0600 file named by"
        " CORRAL_TOKEN_FILE"
    )
    print(
        f"created {kind} {new.id} for {new.user}; it is shown only this once: give it to {use}",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        tokens = client.tokens()
    if args.json:
        print_json(as_json(tokens))
    elif tokens:
        write_lines(token_table(tokens, colour_on(sys.stdout)))
    else:
        print("no tokens", file=sys.stderr)
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        try:
            token = client.revoke_token(args.token_id)
        except NotFound:
            raise CliError(
                f"no token {clean(args.token_id)} (corral token list lists them)"
            ) from None
    print(f"revoked {token.id} ({token.user})")
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    from corral.cli_complete import script

    sys.stdout.write(script(args.shell, build_parser()))
    return EXIT_OK


# --- errors and main --------------------------------------------------------------------------


def unreachable_message(url: str, reason: str) -> str:
    """``cannot reach …``; for a loopback URL, how to start a server there."""
    from urllib.parse import urlsplit

    message = f"cannot reach a corral server at {url} ({reason})"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return message
    if not is_loopback(host):
        return message
    hint = "corral serve" + (f" --port {port}" if port and port != DEFAULT_PORT else "")
    return f"{message}; start one with: {hint}"


def _forbidden(exc: Forbidden) -> str:
    """A 403 with what to do: this needs an admin key (unless a browser origin was
    refused, which the CLI never sends)."""
    if exc.slug == "origin-not-allowed":
        return str(exc)
    source = exc.token_source or "the request"
    if exc.detail.startswith("this is a metrics key"):  # the guard's: it says what to use
        return f"{exc.detail} (the key from {source})"
    return (
        f"{exc} (the key from {source} is not an admin key: ask an admin to do it,"
        " or for an admin key)"
    )


def _failure(exc: BaseException) -> tuple[str, int]:
    """The one line and exit status of an error."""
    if isinstance(exc, CliError):
        return str(exc), exc.code
    if isinstance(exc, WaitTimeout):
        return str(exc), EXIT_WAIT_TIMEOUT
    if isinstance(exc, ServerUnreachable):
        return unreachable_message(exc.url, exc.reason), EXIT_UNREACHABLE
    if isinstance(exc, Forbidden):
        return _forbidden(exc), EXIT_KEY_REFUSED
    if isinstance(exc, Unauthorized):
        return str(exc), EXIT_KEY_REFUSED
    if isinstance(exc, InvalidInput):
        return flag_names(exc), EXIT_ERROR
    if isinstance(exc, CorralClientError):
        text = str(exc)
        tls = text.startswith("cannot trust the TLS certificate")
        return text, EXIT_UNREACHABLE if tls else EXIT_ERROR
    return f"unexpected error, please report it: {exc!r} (CORRAL_DEBUG=1 shows more)", EXIT_ERROR


def run(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(command_word(arguments), every=False)
    try:
        if not arguments:
            parser.print_help()
            return EXIT_OK
        args, extra = parser.parse_known_args(arguments)
        if extra:
            _unknown(parser, args, extra)
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return EXIT_OK
        code = handler(args)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_ERROR
    except Exception as exc:
        if os.environ.get("CORRAL_DEBUG") and not isinstance(exc, CliError | CorralClientError):
            raise
        message, code = _failure(exc)
        print(f"corral: {' '.join(message.split())}", file=sys.stderr)
        return code


def _unknown(parser: Parser, args: argparse.Namespace, extra: list[str]) -> NoReturn:
    """Arguments no parser took, reported against the command's own ``--help``."""
    prog = "corral"
    command = getattr(args, "command", None)
    if command:
        prog += f" {command}"
        if command == "token" and getattr(args, "token_command", None):
            prog += f" {args.token_command}"
    word = extra[0]
    kind = "option" if word.startswith("-") else "argument"
    raise usage(f"unknown {kind} {word} (see: {prog} --help)")


def _quiet_stdout() -> None:
    """After a closed pipe (``corral ls | head``): no second error at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
