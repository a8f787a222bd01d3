"""The Ray head corral starts itself (``corral.executors.ray_head``), with real ``ray
start`` processes: one head serves the module (starting one costs seconds); the tests
that need a head of their own (a failed start) use another data dir. Every head is
stopped at the end, and no process of theirs may be left."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.executors.ray_head import (
    LONGEST_SOCKET_SUFFIX,
    SOCKET_PATH_MAX,
    Head,
    RayHeadError,
    ensure_head,
    head_pids,
    main,
    stop_head,
    temp_dir_for,
    token_env,
)
from tests.conftest import needs

SRC = str(Path(__file__).resolve().parents[1] / "src")
DRIVER_TIMEOUT = 120
SEEN: set[int] = set()
"""Every process of a head these tests saw: none may be running at the end."""

DRIVER = """
import sys, ray
try:
    ray.init(address=sys.argv[1], namespace="corral-test", log_to_driver=False)
except Exception as exc:
    print("REFUSED", type(exc).__name__, exc)
    sys.exit(3)

@ray.remote
def answer():
    return 42

@ray.remote(num_cpus=0)
class Agent:
    def ping(self):
        return "pong"

agent = Agent.options(name="agent", lifetime="detached", get_if_exists=True).remote()
print("CONNECTED", ray.get(answer.remote()), ray.get(agent.ping.remote()))
"""


def short_data_dir() -> Path:
    """A data dir short enough for Ray's temp dir to live in it (not pytest's tmp_path)."""
    return Path(tempfile.mkdtemp(prefix="corral-ray-", dir="/tmp"))


def current(data_dir: Path) -> Head:
    head = ensure_head(data_dir, cpus=1, memory_mb=1024, gpus=0)
    SEEN.update(head_pids(data_dir))
    return head


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    needs(importlib.util.find_spec("ray") is not None, "Ray is not installed (corral[ray])")
    path = short_data_dir()
    try:
        yield path
    finally:
        stop_head(path)
        shutil.rmtree(path, ignore_errors=True)
        left = sorted(pid for pid in SEEN if alive(pid))
        assert left == [], f"Ray processes left behind: {left}"
        found = subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True)
        assert found.stdout == "", f"processes naming {path} left: {found.stdout}"


@pytest.fixture(scope="module")
def first(data_dir: Path) -> Head:
    return current(data_dir)


def run_driver(head_address: str, env: dict[str, str], home: Path) -> str:
    """A driver in a fresh interpreter, with ``env`` and nothing of ours (no token in
    the environment or in ``home``); its output."""
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        # Give up after 2 tries rather than Ray's 20 (one a second) when refused.
        "RAY_NUM_REDIS_GET_RETRIES": "2",
    }
    script = home / "driver.py"
    script.write_text(DRIVER)
    done = subprocess.run(
        [sys.executable, str(script), head_address],
        env={**base, **env},
        cwd=home,
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT,
    )
    return done.stdout + done.stderr


def listening(pids: set[int]) -> list[tuple[int, str, str]]:
    """(pid, protocol, local address) of every TCP socket listening and every UDP
    socket bound unconnected among ``pids``' sockets (read from /proc/net)."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/net/{proto}") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        for row in rows:
            local, remote, state, inode = row[1], row[2], row[3], row[9]
            if inode not in owner:
                continue
            if proto.startswith("tcp") and state != "0A":  # LISTEN
                continue
            if proto.startswith("udp") and int(remote.split(":")[1], 16) != 0:
                continue
            found.append((owner[inode], proto, decode(local)))
    return found


def decode(hex_address: str) -> str:
    """``0100007F:1F90`` (/proc/net's little-endian words) as ``127.0.0.1:8080``."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    return f"{ip}:{int(port, 16)}" if ip.version == 4 else f"[{ip}]:{int(port, 16)}"


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rpartition(":")[0].strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


# --- the tests ---------------------------------------------------------------------------


def test_ensure_head_starts_a_head_on_loopback(data_dir: Path, first: Head) -> None:
    assert first.started
    host, _, port = first.address.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert alive(first.pid)
    ray_dir = data_dir / "ray"
    assert (ray_dir / "address").read_text().strip() == first.address
    assert (ray_dir / "token").read_text().strip() == first.token
    assert len(first.token) == 64
    assert first.env == {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": first.token,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    assert token_env("t") == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t"}


def test_the_token_file_and_the_ray_dir_are_private(data_dir: Path, first: Head) -> None:
    ray_dir = data_dir / "ray"
    assert ray_dir.stat().st_mode & 0o777 == 0o700
    for name in ("token", "address", "pid", "session", "start.log"):
        assert (ray_dir / name).stat().st_mode & 0o777 == 0o600, name


def test_a_second_call_reuses_the_running_head(data_dir: Path, first: Head) -> None:
    before = head_pids(data_dir)
    again = current(data_dir)
    assert not again.started
    assert (again.address, again.pid, again.token) == (first.address, first.pid, first.token)
    assert head_pids(data_dir) <= before  # no new process


def test_its_sockets_and_unix_paths_fit(data_dir: Path, first: Head) -> None:
    """The temp dir is in the data dir, and every unix socket Ray made under it fits
    in ``LONGEST_SOCKET_SUFFIX``."""
    session = Path((data_dir / "ray" / "session").read_text().strip())
    assert session.parent == data_dir / "ray" / "tmp"
    sockets = [p for p in session.rglob("*") if p.is_socket()]
    assert sockets
    temp = len(os.fsencode(session.parent))
    for path in sockets:
        assert len(os.fsencode(path)) - temp <= LONGEST_SOCKET_SUFFIX, path


def test_the_temp_dir_is_a_private_short_one_when_the_data_dir_is_too_long() -> None:
    room = SOCKET_PATH_MAX - LONGEST_SOCKET_SUFFIX - len("/ray/tmp")
    fits = Path("/" + "d" * (room - 1))
    assert temp_dir_for(fits / "ray") == fits / "ray" / "tmp"
    long = temp_dir_for(Path(f"{fits}x") / "ray")  # a private one of its own, not /tmp/ray
    assert long.parent.parent == Path(tempfile.gettempdir())
    assert long.parent.name.startswith("corral-ray-")
    assert long == temp_dir_for(Path(f"{fits}x") / "ray")  # the same at every start


def test_a_driver_with_the_token_connects(data_dir: Path, first: Head, tmp_path: Path) -> None:
    out = run_driver(first.address, first.env, tmp_path)
    assert "CONNECTED 42 pong" in out, out


@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_driver_without_the_token_is_refused(
    data_dir: Path, first: Head, tmp_path: Path, token: str | None
) -> None:
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    if token is not None:
        env |= token_env(token.ljust(64, "0"))
    out = run_driver(first.address, env, tmp_path)
    assert "CONNECTED" not in out, out
    assert "REFUSED ConnectionError" in out, out
    assert "InvalidAuthToken" in out, out  # the GCS said why


def test_every_listening_socket_is_on_loopback(data_dir: Path, first: Head, tmp_path: Path) -> None:
    """After a driver ran a task and left a detached actor (so workers listen too)."""
    assert "CONNECTED" in run_driver(first.address, first.env, tmp_path)
    pids = head_pids(data_dir)
    SEEN.update(pids)
    sockets = listening(pids)
    listeners = {pid for pid, proto, _ in sockets if proto.startswith("tcp")}
    assert first.pid in listeners  # the GCS, and more: the raylet, the workers
    assert len(listeners) >= 3, sockets
    exposed = [s for s in sockets if not is_loopback(s[2])]
    assert exposed == [], exposed


def test_import_ray_happens_nowhere_in_the_module(data_dir: Path, first: Head) -> None:
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from corral.executors.ray_head import ensure_head\n"
        f"head = ensure_head(Path({str(data_dir)!r}), cpus=None, memory_mb=None, gpus=None)\n"
        "print(head.address, head.started, 'ray' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == [first.address, "False", "False"]


def test_a_stale_address_file_leads_to_a_new_head(data_dir: Path, first: Head) -> None:
    """The GCS crashed (SIGKILL): its address file stays, names a dead head; the next
    call starts a new head and stops what was left of the old one."""
    old = current(data_dir)
    old_pids = head_pids(data_dir)
    os.kill(old.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(old.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (data_dir / "ray" / "address").exists()
    new = current(data_dir)
    assert new.started
    assert new.pid != old.pid and alive(new.pid)
    assert new.token == old.token  # generated once
    assert [pid for pid in old_pids if alive(pid)] == []
    assert not old_pids & head_pids(data_dir)


def test_stop_head_stops_every_process_and_forgets_the_address(data_dir: Path) -> None:
    head = current(data_dir)
    pids = head_pids(data_dir)
    assert head.pid in pids
    assert stop_head(data_dir)
    assert [pid for pid in pids if alive(pid)] == []
    assert not (data_dir / "ray" / "address").exists()
    assert head_pids(data_dir) == set()
    assert not stop_head(data_dir)
    assert (data_dir / "ray" / "token").exists()  # the next head takes the same
    assert main(["stop", str(data_dir)]) == 0  # python -m corral.executors.ray_head stop
    assert main(["stop"]) == 2


def test_a_failed_start_is_one_error_with_ray_s_last_words() -> None:
    needs(importlib.util.find_spec("ray") is not None, "Ray is not installed (corral[ray])")
    path = short_data_dir()
    try:
        (path / "ray").mkdir(mode=0o700)
        (path / "ray" / "tmp").write_text("a file where Ray wants its temp dir\n")
        with pytest.raises(RayHeadError) as caught:
            ensure_head(path, cpus=None, memory_mb=None, gpus=None)
        message = str(caught.value)
        assert message.startswith("cannot start a Ray head (exit status 1)")
        assert "FileExistsError" in message and str(path / "ray" / "tmp") in message
        assert "Traceback" not in message and 'File "' not in message
        assert head_pids(path) == set()
        assert not (path / "ray" / "address").exists()
    finally:
        stop_head(path)
        shutil.rmtree(path, ignore_errors=True)


def test_whole_cpus_only(tmp_path: Path) -> None:
    needs(importlib.util.find_spec("ray") is not None, "Ray is not installed (corral[ray])")
    with pytest.raises(RayHeadError, match=r"whole CPUs: --cpus 1\.5"):
        ensure_head(tmp_path, cpus=1.5, memory_mb=None, gpus=None)
    assert not (tmp_path / "ray").exists()


def test_without_ray_one_line_names_the_extra(tmp_path: Path) -> None:
    """A fresh interpreter without site-packages (``-S``), so without Ray, but with
    corral's sources: ``require_ray`` and ``ensure_head`` raise the one line."""
    code = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {SRC!r})\n"
        "from pathlib import Path\n"
        "from corral.executors.ray_head import RayNotInstalledError, ensure_head, require_ray\n"
        "print(importlib.util.find_spec('ray') is None)\n"
        "for call in (require_ray, lambda: ensure_head(Path(sys.argv[1]), cpus=None,"
        " memory_mb=None, gpus=None)):\n"
        "    try:\n"
        "        call()\n"
        "    except RayNotInstalledError as exc:\n"
        "        print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code, str(tmp_path / "data")],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        check=True,
    )
    line = "the Ray executor needs Ray: pip install 'corral[ray]'"
    assert done.stdout.splitlines() == ["True", line, line], done.stdout + done.stderr
    assert not (tmp_path / "data").exists()


def test_without_ray_a_ray_directory_on_the_path_is_not_ray(tmp_path: Path) -> None:
    """Ray leaves ``/tmp/ray`` behind, and ``python -m corral.cli serve`` run from
    ``/tmp`` has the cwd on ``sys.path``: that directory is a namespace package, which
    ``find_spec`` finds. Without Ray, ``require_ray`` must still say what to install
    (it said nothing, and ``serve`` then died on ``import ray.exceptions``, "unexpected
    error, please report it")."""
    (tmp_path / "ray" / "session_latest").mkdir(parents=True)  # what Ray leaves in /tmp
    code = (
        "import sys\n"
        f"sys.path[:0] = [{SRC!r}, {str(tmp_path)!r}]\n"
        "from corral.executors.ray_head import RayNotInstalledError, require_ray\n"
        "try:\n"
        "    require_ray()\n"
        "except RayNotInstalledError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('require_ray passed')\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    line = "the Ray executor needs Ray: pip install 'corral[ray]'"
    assert done.stdout.splitlines() == [line], done.stdout + done.stderr
