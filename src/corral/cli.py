"""The ``corral`` command line: a thin face over ``corral.Client`` (and ``serve``).

Every failure prints one line to stderr and exits non-zero; no tracebacks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from corral.config import DEFAULT_HOST, DEFAULT_PORT

app = typer.Typer(
    help="corral: submit commands, run them when resources allow, follow and kill them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class CliError(Exception):
    """An error to show the user as one line."""


@app.callback()
def _root() -> None:
    """corral: submit commands, run them when resources allow, follow and kill them."""


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = DEFAULT_PORT,
    db: Annotated[
        str | None, typer.Option(help="Database URL [default: sqlite:///DATA_DIR/corral.db].")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where the database and logs live [default: $XDG_DATA_HOME/corral]."),
    ] = None,
    executor: Annotated[
        str, typer.Option(help="local: run workloads here; none: API only.")
    ] = "none",
) -> None:
    """Run the API server (and the scheduler and executor)."""
    from pydantic import ValidationError

    from corral.config import Settings
    from corral.server import ServeError
    from corral.server import serve as run_server

    overrides: dict[str, object] = {"host": host, "port": port, "executor": executor}
    if db is not None:
        overrides["db"] = db
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError(f"invalid --{first['loc'][0]}: {first['msg']}") from None
    try:
        run_server(settings)
    except ServeError as exc:
        raise CliError(str(exc)) from None


def main() -> None:
    try:
        app()
    except CliError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
