"""corral installed as a tool: a wheel built from the tracked tree carries the shim, and
installed in a venv of its own it serves and runs a workload on a machine without a C
compiler; a source install compiles the shim at start, saying so, or says how to get one.

The wheel is built with this venv's pip and build backend (``--no-build-isolation``:
no network), from a copy of the files git tracks, so a file that is not committed, or
that the package data forgets, shows up here.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.api.web import FILES, PAGE
from corral.executors.shim import PREBUILT_SHIM, SHIM_SOURCE
from tests.conftest import needs
from tests.server import LiveServer, free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

ROOT = Path(__file__).resolve().parents[1]
SHIM_IN_WHEEL = "corral/executors/bin/corral-shim"
COMPILE_LINE = "no prebuilt corral-shim in this install; compiling"
COMPILERS = ("cc", "gcc", "clang", "tcc", "c99", "c89", "x86_64-linux-gnu-gcc", "musl-gcc")


def _setuptools_version() -> tuple[int, ...]:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def _tracked_files() -> list[str] | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return [name for name in done.stdout.decode().split("\0") if name]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel`` builds from a copy of the tracked files (as they are in
    the work tree)."""
    files = _tracked_files()
    needs(files is not None, f"{ROOT} is not a git checkout (or git is missing)")
    needs(
        _setuptools_version() >= (77,),
        "this venv's setuptools is older than 77 (the dev extra asks for it: run make)",
    )
    assert files is not None
    tree = tmp_path_factory.mktemp("tree")
    for name in files:
        source = ROOT / name
        if source.is_file():  # tracked but deleted in the work tree: left out
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    out = tmp_path_factory.mktemp("wheelhouse")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            out,
            tree,
        ],
        check=True,
        cwd=tree,
    )
    [built] = out.glob("*.whl")
    return built


def test_the_wheel_is_a_platform_wheel_carrying_the_shim(wheel: Path) -> None:
    name, _version, python, abi, platform = wheel.name.removesuffix(".whl").split("-")
    assert (name, python, abi) == ("corral", "py3", "none")
    assert platform == sysconfig.get_platform().replace("-", "_").replace(".", "_")
    with zipfile.ZipFile(wheel) as zf:
        shim = zf.getinfo(SHIM_IN_WHEEL)
        assert (shim.external_attr >> 16) & stat.S_IXUSR
        assert zf.read(SHIM_IN_WHEEL).startswith(b"\x7fELF")
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/WHEEL"))
        assert "Root-Is-Purelib: false" in zf.read(metadata).decode()
        assert "corral/executors/shim.c" in zf.namelist()
        # The dashboard's files, each one api/web.py serves.
        for name in [PAGE, *FILES]:
            assert f"corral/web/{name}" in zf.namelist(), name


@pytest.fixture
def installed(wheel: Path, tmp_path: Path) -> Path:
    """A new venv with the wheel installed, and this venv's packages (the server's
    dependencies) visible to it through a ``.pth`` file: corral itself comes from the
    wheel only (a path in a ``.pth`` file is added after the venv's own site-packages,
    and ``.pth`` files in it, such as an editable install's, are not read)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python]
    subprocess.run([*pip, "install", "--quiet", "--no-deps", "--no-index", wheel], check=True)
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.defpath},
    ).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    Path(site, "corral-test-dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    return venv


@pytest.fixture
def no_compiler_path(tmp_path: Path) -> str:
    """A PATH with the new venv's bin and ``sh``, ``echo`` and ``true``, and no compiler."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("sh", "echo", "true"):
        found = shutil.which(tool)
        assert found is not None, tool
        (tools / tool).symlink_to(found)
    path = f"{tmp_path / 'venv' / 'bin'}:{tools}"
    for compiler in COMPILERS:
        assert shutil.which(compiler, path=path) is None, compiler
    return path


@pytest.fixture
def served(
    installed: Path, no_compiler_path: str, tmp_path: Path
) -> Iterator[tuple[dict[str, str], Path, Path]]:
    """``corral serve`` of the installed wheel: (the environment for its CLI, its data
    dir, its log), without a compiler on its PATH nor ``CC``."""
    data = tmp_path / "data"
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"PATH": no_compiler_path, "HOME": str(home), "LANG": "C.UTF-8", "CORRAL_URL": url}
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [installed / "bin" / "corral", "serve", "--port", str(port), "--data-dir", str(data)],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        _wait_healthy(url, proc, log)
        yield {**env, "CORRAL_TOKEN": (data / "token").read_text().strip()}, data, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"corral serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"corral serve did not become healthy:\n{log.read_text()}")


def test_an_installed_wheel_serves_and_runs_a_workload_without_a_compiler(
    wheel: Path, installed: Path, served: tuple[dict[str, str], Path, Path]
) -> None:
    env, data, log = served
    corral = str(installed / "bin" / "corral")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [corral, *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    where = subprocess.run(
        [
            installed / "bin" / "python",
            "-c",
            "import corral.executors.shim as s; print(s.__file__);"
            " print(s.PREBUILT_SHIM.is_file())",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    assert Path(where[0]).is_relative_to(installed), where
    assert where[1] == "True"

    submitted = run("submit", "--json", "--", "sh", "-c", 'echo "from a wheel: $0"', "ok")
    assert submitted.returncode == 0, submitted.stderr
    body = json.loads(submitted.stdout)
    workload_id = (body[0] if isinstance(body, list) else body)["id"]
    waited = run("wait", workload_id)
    assert waited.returncode == 0, (waited.stdout, waited.stderr, log.read_text())
    logs = run("logs", workload_id)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "from a wheel: ok\n"
    # The dashboard, from the files in the wheel.
    with urllib.request.urlopen(env["CORRAL_URL"] + "/ui/app.js", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/javascript")
        assert b"followEvents" in response.read()

    # The shim it ran is the wheel's, copied into the private DATA_DIR/bin: none compiled.
    server_log = log.read_text()
    assert COMPILE_LINE not in server_log
    with zipfile.ZipFile(wheel) as zf:
        packaged = zf.read(SHIM_IN_WHEEL)
    [shim] = (data / "bin").iterdir()
    assert shim.name.startswith("corral-shim-")
    assert shim.read_bytes() == packaged
    assert (data / "bin").stat().st_mode & 0o777 == 0o700


def _source_install_only() -> None:
    if PREBUILT_SHIM.exists():
        pytest.skip(f"these tests run corral from its source tree; {PREBUILT_SHIM} exists")


def test_a_source_install_compiles_the_shim_at_start_and_says_so(tmp_path: Path) -> None:
    _source_install_only()
    server = LiveServer(tmp_path / "data").start()
    try:
        lines = [line for line in server.log.read_text().splitlines() if COMPILE_LINE in line]
    finally:
        server.stop()
    assert len(lines) == 1, server.log.read_text()
    assert f"{COMPILE_LINE} {SHIM_SOURCE} with cc" in lines[0]
    [shim] = (tmp_path / "data" / "bin").iterdir()
    assert shim.name.startswith("corral-shim-")


def test_a_source_install_without_a_compiler_says_how_to_get_a_shim(tmp_path: Path) -> None:
    _source_install_only()
    data = tmp_path / "data"
    serve = [sys.executable, "-m", "corral.cli", "serve", "--port", str(free_port())]
    done = subprocess.run(
        [*serve, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        env={**os.environ, "CC": "/nonexistent/cc"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    [line] = [line for line in done.stderr.splitlines() if "corral-shim" in line]
    assert "no prebuilt corral-shim in this install" in line
    assert "install a C compiler (e.g. gcc, or set CC)" in line
    assert "install corral from a wheel" in line
    assert list((data / "bin").iterdir()) == []
