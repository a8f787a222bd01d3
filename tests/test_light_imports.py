"""The light half (``corral.client``, ``corral.cli``) imports none of the server's
packages: asserted in a fresh interpreter, on what is imported, not on timings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "pydantic",
    "pydantic_settings",
    "fastapi",
    "starlette",
    "sqlalchemy",
    "uvicorn",
    "httpx",
    "typer",
    "rich",
    "alembic",
)
SERVER_MODULES = ("corral.model", "corral.config", "corral.server", "corral.api", "corral.store")


def imported_after(code: str) -> set[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import corral.client",
        "import corral.cli",
        "from corral.cli import build_parser; build_parser().format_help()",
        "import corral.cli_complete",
    ],
)
def test_the_light_half_imports_no_server_package(code: str) -> None:
    modules = imported_after(code)
    heavy = {m for m in modules if m.split(".")[0] in HEAVY}
    assert not heavy, f"{code!r} imported {sorted(heavy)}"
    server = {m for m in modules if m.startswith(SERVER_MODULES)}
    assert not server, f"{code!r} imported {sorted(server)}"


def test_a_cli_command_imports_no_server_package() -> None:
    """A whole command (an unreachable server: the request is made) stays light."""
    code = (
        "import sys\n"
        "from corral.cli import run\n"
        "assert run(['--server', 'http://127.0.0.1:9', 'ls']) == 3\n"
    )
    modules = imported_after(code)
    assert not {m for m in modules if m.split(".")[0] in HEAVY}
    assert not {m for m in modules if m.startswith(SERVER_MODULES)}
