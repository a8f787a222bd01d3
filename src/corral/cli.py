"""The ``corral`` command line: a thin face over ``corral.Client`` (and ``serve``).

Every failure prints one line to stderr and exits non-zero; no tracebacks. Exit
codes: ``wait`` and ``submit --wait`` mirror the workload (see ``exit_status``);
otherwise 0 on success, 1 when corral could not do it, 2 for a malformed option,
124 when ``wait --timeout`` runs out, 130 on Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from corral.cli_render import (
    EXIT_ERROR,
    StatusLine,
    exit_status,
    final_line,
    print_json,
    print_out,
    stderr_console,
    token_table,
    workload_detail,
    workload_table,
)
from corral.client import (
    KEY_RE,
    Client,
    CorralClientError,
    Forbidden,
    InvalidTransition,
    NotFound,
    WaitTimeout,
)
from corral.defaults import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_URL
from corral.wire import (
    ENV_NAME_RE,
    UNIX_USER_RE,
    USER_NAME_RE,
    Status,
    Workload,
    check_label,
)

__all__ = ["app", "exit_status", "main"]

app = typer.Typer(
    help="corral: submit commands, run them when resources allow, follow and kill them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

EXIT_USAGE = 2
EXIT_WAIT_TIMEOUT = 124


class CliError(Exception):
    """An error to show the user as one line."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


_SERVER_HELP = "The corral server."
RootServerOption = Annotated[
    str | None,
    typer.Option(
        "--server", envvar="CORRAL_URL", metavar="URL", help=_SERVER_HELP, show_default=DEFAULT_URL
    ),
]
ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        metavar="URL",
        help=_SERVER_HELP + " \\[env var: CORRAL_URL]",
        show_default=DEFAULT_URL,
    ),
]
"""After the command it wins over the one before it, which wins over $CORRAL_URL."""
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="KEY",
        help="The API key. Prefer $CORRAL_TOKEN or $CORRAL_TOKEN_FILE: a flag is visible"
        " to every user of this machine in ps.",
        show_default="$CORRAL_TOKEN, $CORRAL_TOKEN_FILE, $CORRAL_DATA_DIR/token,"
        " $XDG_DATA_HOME/corral/token",
    ),
]
TOKEN_FLAG_SOURCE = "--token"


@app.callback()
def _root(ctx: typer.Context, server: RootServerOption = None, token: TokenOption = None) -> None:
    """corral: submit commands, run them when resources allow, follow and kill them."""
    if token is not None and not KEY_RE.fullmatch(token.strip()):
        raise CliError(
            "invalid --token: a key is one word of printable ASCII (corral_…)", EXIT_USAGE
        )
    ctx.obj = {"server": server, "token": token}


@contextmanager
def _client(ctx: typer.Context, server: str | None) -> Iterator[Client]:
    """A client for ``--server`` given after the command, else before it, else
    ``$CORRAL_URL``, else the default; with ``--token``, else the key it finds."""
    root = ctx.find_root().obj or {}
    token = root.get("token")
    with Client(server or root.get("server"), token=token) as client:
        if token is not None:
            client.token_source = TOKEN_FLAG_SOURCE
        yield client


def _pairs(
    values: list[str] | None, option: str, *, labels: bool = False, env: bool = False
) -> dict[str, str]:
    """``["K=V", …]`` -> ``{"K": "V"}``; a malformed one is a one-line error."""
    pairs: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"invalid {option} {item!r}: expected KEY=VALUE", EXIT_USAGE)
        if labels:
            try:
                check_label(key, value)
            except ValueError as exc:
                raise CliError(f"invalid {option} {item!r}: {exc}", EXIT_USAGE) from None
        if env and not ENV_NAME_RE.fullmatch(key):
            raise CliError(
                f"invalid {option} {item!r}: {key!r} is not a variable name"
                " (letters, digits and _, not starting with a digit)",
                EXIT_USAGE,
            )
        pairs[key] = value
    return pairs


def _wait(client: Client, workload_id: str, timeout: float | None) -> Workload:
    """Wait with a live status line on stderr, then print the final line there."""
    console = stderr_console()
    line = StatusLine(console)
    try:
        with line.shown():
            workload = client.wait(workload_id, timeout=timeout, on_update=line.update)
    except KeyboardInterrupt:
        if line.workload is not None:
            console.print(
                f"stopped waiting; {workload_id} is still {line.workload.status}"
                f" (corral kill {workload_id} stops it)"
            )
        raise
    console.print(final_line(workload))
    return workload


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on.", show_default=DEFAULT_HOST)
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on.", show_default=str(DEFAULT_PORT))
    ] = None,
    db: Annotated[
        str | None, typer.Option(help="Database URL.", show_default="sqlite:///DATA_DIR/corral.db")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the database and logs live.", show_default="$XDG_DATA_HOME/corral"
        ),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(help="local: run workloads here; none: API only.", show_default="local"),
    ] = None,
    cpus: Annotated[
        float | None, typer.Option(help="CPUs to schedule.", show_default="this machine's")
    ] = None,
    memory_mb: Annotated[
        int | None, typer.Option(help="Memory to schedule, in MB.", show_default="this machine's")
    ] = None,
    gpus: Annotated[
        int | None, typer.Option(help="GPUs to schedule.", show_default="counted by nvidia-smi")
    ] = None,
    kill_grace: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Time between SIGTERM and SIGKILL when stopping a workload.",
            show_default="10",
        ),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="Check no API key: every request acts as an admin (loopback only; unsafe"
            " on a shared machine).",
        ),
    ] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            help="A host name clients may use besides the loopback ones (repeatable);"
            " needed with a non-loopback --host.",
        ),
    ] = None,
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option(
            metavar="ORIGIN",
            help="A browser origin (https://host[:port]) that may change state (repeatable).",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Serve HTTPS with this certificate.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(metavar="FILE", help="The private key of --tls-cert.")
    ] = None,
    rate_limit: Annotated[
        float | None,
        typer.Option(
            metavar="N",
            help="Requests per second per API key (bursts of twice that); 0: no limit.",
            show_default="200",
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            metavar="text|json",
            help="The server log on stderr: one line per record, text or JSON"
            " \\[env var: CORRAL_LOG_FORMAT].",
            show_default="text",
        ),
    ] = None,
) -> None:
    """Run the API server (and the scheduler and executor)."""
    from pydantic import ValidationError

    from corral.config import Settings
    from corral.server import ServeError
    from corral.server import serve as run_server

    overrides: dict[str, object] = {}
    optional = {
        "host": host,
        "port": port,
        "executor": executor,
        "db": db,
        "data_dir": data_dir,
        "cpus": cpus,
        "memory_mb": memory_mb,
        "gpus": gpus,
        "kill_grace_seconds": kill_grace,
        "no_auth": no_auth or None,
        "allowed_hosts": allowed_host,
        "allowed_origins": allowed_origin,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "rate_limit": rate_limit,
        "log_format": log_format,
    }
    overrides.update((k, v) for k, v in optional.items() if v is not None)
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        option = str(first["loc"][0]).replace("_seconds", "").replace("_", "-")
        raise CliError(f"invalid --{option}: {first['msg']}", EXIT_USAGE) from None
    try:
        run_server(settings)
    except ServeError as exc:
        raise CliError(str(exc)) from None


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    ctx: typer.Context,
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="CMD",
            help="The command; everything after it (or after --) is its arguments.",
            show_default=False,
        ),
    ],
    name: Annotated[str | None, typer.Option(help="A name to show in listings.")] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", metavar="K=V", help="An environment variable (repeatable)."),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", metavar="K=V", help="A label (repeatable)."),
    ] = None,
    cpus: Annotated[float | None, typer.Option(help="CPUs it needs.", show_default="1")] = None,
    memory_mb: Annotated[int | None, typer.Option(help="Memory it needs, in MB.")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs it needs.")] = None,
    priority: Annotated[
        int | None, typer.Option(help="Higher runs first.", show_default="0")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(metavar="SECONDS", help="Stop it (as failed) after this long running."),
    ] = None,
    cwd: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Working directory (made absolute here).",
            show_default="the current directory, as with sbatch",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the end; exit with its exit code.")
    ] = False,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Submit a command; print its id. Options go before the command."""
    envs = _pairs(env, "--env", env=True)
    labels = _pairs(label, "--label", labels=True)
    workdir = os.path.abspath(os.path.expanduser(cwd if cwd is not None else os.curdir))
    with _client(ctx, server) as client:
        workload = client.submit(
            command,
            name=name,
            env=envs or None,
            cwd=workdir,
            cpus=cpus,
            memory_mb=memory_mb,
            gpus=gpus,
            labels=labels or None,
            priority=priority,
            timeout_seconds=timeout,
        )
        if not wait:
            if as_json:
                print_json(asdict(workload))
            else:
                print(workload.id)
            return
        if not as_json:
            print(workload.id, flush=True)
        final = _wait(client, workload.id, None)
    if as_json:
        print_json(asdict(final))
    raise typer.Exit(exit_status(final))


@app.command("ls")
def list_workloads(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None,
        typer.Option(metavar="STATUS", help="Only this status (repeatable: any of them)."),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", metavar="K=V", help="Only with this label (repeatable)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    all_users: Annotated[
        bool,
        typer.Option("--all-users", help="Everyone's, with an OWNER column (admin keys)."),
    ] = False,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """List your workloads, newest first."""
    statuses = []
    for s in status or []:
        try:
            statuses.append(Status(s.lower()))
        except ValueError:
            choices = ", ".join(Status)
            raise CliError(f"invalid --status {s!r}: use one of {choices}", EXIT_USAGE) from None
    labels = _pairs(label, "--label", labels=True)
    with _client(ctx, server) as client:
        workloads = list(
            client.list(
                status=statuses,
                labels=labels,
                limit=limit,
                page_size=min(limit, 1000),
                all_users=all_users,
            )
        )
    if as_json:
        print_json([asdict(w) for w in workloads])
    elif workloads:
        print_out(workload_table(workloads, owner=all_users))
    else:
        stderr_console().print("no workloads")


@app.command()
def show(
    ctx: typer.Context,
    workload_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Show one workload and its events."""
    with _client(ctx, server) as client:
        try:
            workload = client.get(workload_id)
            events = client.events(workload_id)
        except NotFound:
            raise _no_workload(workload_id) from None
    if as_json:
        print_json(
            {
                "workload": asdict(workload),
                "events": [asdict(e) for e in events],
            }
        )
    else:
        print_out(workload_detail(workload, events))


@app.command()
def kill(
    ctx: typer.Context,
    workload_id: Annotated[str, typer.Argument(metavar="ID")],
    server: ServerOption = None,
) -> None:
    """Kill a workload (SIGTERM, then SIGKILL after the grace period)."""
    with _client(ctx, server) as client:
        try:
            client.kill(workload_id)
        except NotFound:
            raise _no_workload(workload_id) from None
        except InvalidTransition as exc:
            current = exc.current_status or "finished"
            raise CliError(
                f"workload {workload_id} is already {current}; nothing to kill"
            ) from None
    print(f"killed {workload_id}")


@app.command()
def logs(
    ctx: typer.Context,
    workload_id: Annotated[str, typer.Argument(metavar="ID")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the workload ends.")
    ] = False,
    tail: Annotated[
        int | None, typer.Option(min=0, metavar="N", help="Start with the last N lines.")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Print a workload's output (stdout and stderr as written)."""
    out = sys.stdout.buffer
    with _client(ctx, server) as client:
        try:
            for chunk in client.stream_logs(workload_id, tail=tail, follow=follow):
                out.write(chunk)
                if follow:
                    out.flush()
            out.flush()
        except NotFound:
            raise _no_workload(workload_id) from None


@app.command("wait")
def wait_for(
    ctx: typer.Context,
    workload_id: Annotated[str, typer.Argument(metavar="ID")],
    timeout: Annotated[
        float | None,
        typer.Option(metavar="SECONDS", help="Give up after this long (exit 124)."),
    ] = None,
    server: ServerOption = None,
) -> None:
    """Wait until a workload ends; exit with its exit code."""
    with _client(ctx, server) as client:
        try:
            final = _wait(client, workload_id, timeout)
        except NotFound:
            raise _no_workload(workload_id) from None
    raise typer.Exit(exit_status(final))


# --- API keys ---------------------------------------------------------------------------

token_app = typer.Typer(
    help="Manage API keys (admin keys only).", no_args_is_help=True, add_completion=False
)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    user: Annotated[
        str,
        typer.Option(
            "--user", metavar="NAME", help="Whose key: a user name, created with its first key."
        ),
    ],
    admin: Annotated[
        bool, typer.Option("--admin", help="An admin key: sees and manages everything.")
    ] = False,
    unix_user: Annotated[
        str | None,
        typer.Option(
            "--unix-user",
            metavar="U",
            help="Run this user's workloads as this Unix account (the server must run as"
            " root); fixed once given.",
        ),
    ] = None,
    description: Annotated[
        str | None, typer.Option(metavar="TEXT", help="A note: who or what it is for.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the token as JSON (with its key).")
    ] = False,
    server: ServerOption = None,
) -> None:
    """Create an API key and print it (alone on stdout: KEY=$(corral token create …))."""
    if not USER_NAME_RE.fullmatch(user):
        raise CliError(
            f"invalid --user {user!r}: lower-case letters, digits, '_', '.', '@' or '-',"
            " starting with a letter or '_', at most 64",
            EXIT_USAGE,
        )
    if unix_user is not None and not UNIX_USER_RE.fullmatch(unix_user):
        raise CliError(f"invalid --unix-user {unix_user!r}: not a Unix user name", EXIT_USAGE)
    with _client(ctx, server) as client:
        new = client.create_token(user, admin=admin, unix_user=unix_user, description=description)
    if as_json:
        print_json(asdict(new))
    else:
        print(new.key, flush=True)
    kind = "admin key" if new.admin else "key"
    stderr_console().print(
        f"created {kind} {new.id} for {new.user}; it is shown only this once: give it to"
        f" {new.user} to set as CORRAL_TOKEN, or to keep in a 0600 file named by"
        " CORRAL_TOKEN_FILE"
    )


@token_app.command("list")
def token_list(
    ctx: typer.Context,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """List API keys, newest first (never the keys themselves)."""
    with _client(ctx, server) as client:
        tokens = client.tokens()
    if as_json:
        print_json([asdict(t) for t in tokens])
    elif tokens:
        print_out(token_table(tokens))
    else:
        stderr_console().print("no tokens")


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(metavar="ID")],
    server: ServerOption = None,
) -> None:
    """Revoke an API key: its requests are refused from now on."""
    with _client(ctx, server) as client:
        try:
            token = client.revoke_token(token_id)
        except NotFound:
            raise CliError(
                f"no token {token_id} on this server (corral token list lists them)"
            ) from None
    print(f"revoked {token.id} ({token.user})")


def _no_workload(workload_id: str) -> CliError:
    return CliError(f"no workload {workload_id} on this server (corral ls lists them)")


def _forbidden(exc: Forbidden) -> str:
    """A 403 with what to do: this needs an admin key (unless a browser origin was
    refused, which the CLI never sends)."""
    if exc.slug == "origin-not-allowed":
        return str(exc)
    source = exc.token_source or "the request"
    return (
        f"{exc} (the key from {source} is not an admin key: ask an admin to do it,"
        " or for an admin key)"
    )


def _fail(message: str, code: int) -> None:
    print(f"corral: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)


def _unexpected(exc: Exception) -> None:
    """Typer's usage errors (a missing argument, an unknown option) become one line.

    Typer vendors Click privately (``typer._click``) and exports no ``UsageError``, so
    they are recognized by shape: ``format_message()`` and ``exit_code``. Anything else
    is a bug in corral: one line too, with the traceback when ``CORRAL_DEBUG`` is set.
    """
    format_message = getattr(exc, "format_message", None)
    code = getattr(exc, "exit_code", None)
    if callable(format_message) and isinstance(code, int):
        if not format_message():  # plain `corral`: the help is printed, as asked
            sys.exit(0)
        ctx = getattr(exc, "ctx", None)
        command = getattr(ctx, "command_path", None) or "corral"
        _fail(f"{format_message()} (see: {command} --help)", code)
    if os.environ.get("CORRAL_DEBUG"):
        raise exc
    _fail(f"unexpected error, please report it: {exc!r} (CORRAL_DEBUG=1 shows more)", 1)


def main() -> None:
    try:
        result = app(prog_name="corral", standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except CliError as exc:
        _fail(str(exc), exc.code)
    except WaitTimeout as exc:
        _fail(str(exc), EXIT_WAIT_TIMEOUT)
    except Forbidden as exc:
        _fail(_forbidden(exc), EXIT_ERROR)
    except CorralClientError as exc:
        _fail(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        _unexpected(exc)
    else:
        if isinstance(result, int) and result:
            sys.exit(result)


if __name__ == "__main__":
    main()
