"""The light half of corral (docs/cli.md §1) imports the standard library only: a
fresh interpreter that imports it must not have loaded any of the server's
dependencies (nor httpx or the CLI's old libraries)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = (
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "fastapi",
    "starlette",
    "sqlalchemy",
    "uvicorn",
    "httpx",
    "httpcore",
    "typer",
    "rich",
    "alembic",
    "anyio",
)

LIGHT_MODULES = ["corral.client", "corral.wire", "corral.defaults", "corral.keys"]


def loaded_after(code: str) -> list[str]:
    """The heavy packages loaded by ``code`` in a fresh interpreter."""
    check = (
        f"{code}\n"
        "import sys\n"
        f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=True,
    )
    return out.stdout.split()


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_the_light_modules_load_nothing_heavy(module: str) -> None:
    assert loaded_after(f"import {module}") == []


def test_the_client_and_its_answers_load_nothing_heavy() -> None:
    """What a user of the Python client touches: the package's lazy names, a client,
    and reading an answer."""
    code = (
        "import corral\n"
        "from corral import Client, Workload, Status, Page, KillResult, ServerStatus\n"
        "from corral.client import KEY_RE\n"
        "from corral.defaults import DEFAULT_URL, default_data_dir, is_loopback\n"
        "from corral.wire import TRANSITIONS, check_label, valid_transition\n"
        "Client('http://127.0.0.1:1', token='k')\n"
        "Client('http://10.0.0.1:1', token='k')  # not loopback: looks for a proxy\n"
        "is_loopback('127.0.0.1'); default_data_dir(); check_label('a', 'b')\n"
    )
    assert loaded_after(code) == []
