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


# --- the CLI --------------------------------------------------------------------------

SERVER_MODULES = ("corral.model", "corral.config", "corral.server", "corral.api", "corral.store")


def modules_after(code: str) -> set[str]:
    """Every module loaded by ``code`` in a fresh interpreter."""
    check = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=True,
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "code",
    [
        "import corral.cli",
        "import corral.cli_render, corral.cli_complete",
        "from corral.cli import build_parser; build_parser().format_help()",
        # a whole command, its request made (nothing listens there: exit status 3)
        "from corral.cli import run; assert run(['--server', 'http://127.0.0.1:9', 'ls']) == 3",
    ],
)
def test_the_cli_loads_nothing_heavy_and_nothing_of_the_server(code: str) -> None:
    modules = modules_after(code)
    assert not {m for m in modules if m.split(".")[0] in HEAVY}
    assert not {m for m in modules if m.startswith(SERVER_MODULES)}


# --- what a CLI call costs ------------------------------------------------------------

SLOW_STDLIB = ("http.client", "email", "ssl", "_ssl", "http", "urllib.request", "pathlib")
"""Standard modules a CLI call on an ``http://`` loopback URL does without:
``http.client`` parses headers with ``email`` (~14 ms to import; ``corral.http``
replaces it), ``ssl`` is for ``https`` URLs, ``http`` only names the status of a
bodiless error, ``urllib.request`` finds proxies for non-loopback servers, ``pathlib``
is the server's."""


@pytest.mark.parametrize(
    "code",
    [
        "import corral.cli",
        "from corral.cli import run; assert run(['--server', 'http://127.0.0.1:9', 'ls']) == 3",
        "from corral import Client; Client('http://127.0.0.1:9', token='k')",
    ],
)
def test_a_cli_call_on_http_loads_no_http_client_email_or_ssl(code: str) -> None:
    modules = modules_after(code)
    assert not {m for m in modules if m.split(".")[0] in SLOW_STDLIB or m in SLOW_STDLIB}


def test_an_https_client_loads_ssl_but_not_http_client() -> None:
    modules = modules_after("from corral import Client; Client('https://127.0.0.1:9', token='k')")
    assert "ssl" in modules
    assert not {m for m in modules if m == "http.client" or m.split(".")[0] == "email"}
