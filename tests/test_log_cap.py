"""The log cap (``corral serve --max-log-bytes``) on real processes: the shim keeps the
head and the tail of a workload's output with one line counting what was dropped,
the file never grows past the cap, and every reader (a plain read, ``tail``, a
follower) sees a coherent log at any moment, across a kill and a server restart.

The workloads here write numbered lines (``"%09d\\n" % i``), so any piece of output
says where it came from: ``coherent`` checks a read byte by byte against them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.executors.base import Capacity, Outcome
from corral.executors.local import LocalExecutor, is_alive, kill_all
from corral.executors.shim import ShimStatus, ensure_shim, read_pid, read_status, shim_argv
from corral.logs import (
    READ_CHUNK_BYTES,
    RING_DATA,
    LogReader,
    finish_capped_log,
    log_chunks,
    log_path,
    open_reader,
    read_ring,
    ring_path,
)
from corral.units import BYTES_MAX, parse_bytes
from tests.conftest import RayCluster
from tests.executors import GRACE_SECONDS, Harness, make_workload
from tests.server import Api, LiveServer, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

LINE = 10  # bytes of each numbered line


def lines(start: int, end: int) -> bytes:
    """Output bytes ``start`` to ``end`` of a numbered-lines writer."""
    first, last = start // LINE, -(-end // LINE)
    data = b"".join(b"%09d\n" % i for i in range(first, last))
    return data[start - first * LINE : end - first * LINE]


def capped(data: bytes, cap: int) -> bytes:
    """What a log capped at ``cap`` holds of ``data``, written out independently of
    corral: the first cap/2 bytes, the marker line, the last cap - cap/2."""
    if len(data) <= cap:
        return data
    head, tail = cap // 2, cap - cap // 2
    newline = b"\n" if head and data[head - 1 : head] != b"\n" else b""
    marker = newline + b"[corral: " + str(len(data) - cap).encode() + b" bytes dropped]\n"
    return data[:head] + marker + data[len(data) - tail :]


def coherent(got: bytes) -> tuple[int, list[int]]:
    """Check that ``got`` is numbered-lines output with markers standing for exactly
    the bytes left out, each on a line of its own; returns the length of output it
    covers and the markers' counts. (A newline before a marker is the output's or
    the marker's: the one after which the output goes on where the count says.)"""
    found = list(re.finditer(rb"\[corral: (\d+) bytes dropped\]\n", got))
    at, pos, counts = 0, 0, []
    for i, match in enumerate(found):
        piece, count = got[pos : match.start()], int(match.group(1))
        assert piece == b"" or piece.endswith(b"\n"), "a marker not on a line of its own"
        following = got[match.end() : found[i + 1].start() if i + 1 < len(found) else len(got)]
        following = following[: max(len(following) - 1, 0)][: 3 * LINE]
        for own in [piece, piece[:-1]] if piece else [piece]:
            after = at + len(own) + count
            if own == lines(at, at + len(own)) and following == lines(
                after, after + len(following)
            ):
                break
        else:
            raise AssertionError(f"bytes {at}.. are not the output's, or {count} is wrong")
        at, pos = after, match.end()
        counts.append(count)
    piece = got[pos:]
    assert piece == lines(at, at + len(piece)), f"bytes {at}.. are not the output's"
    return at + len(piece), counts


WRITER = r"""
import os, sys, time
total, pause, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
step, i, k = 6553, 0, 0  # lines per write (65530 bytes); stdout and stderr in turn
while i < total:
    if i == pause:
        open(go + ".paused", "w").close()
        while not os.path.exists(go):
            time.sleep(0.01)
    n = min(step, total - i, pause - i if i < pause else step)
    data = memoryview(b"".join(b"%09d\n" % j for j in range(i, i + n)))
    while data:
        data = data[os.write(1 + k % 2, data):]
    i, k = i + n, k + 1
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_shim(tmp_path_factory.mktemp("shim-cache"))


def writer(tmp_path: Path, total_bytes: int, pause_bytes: int | None = None) -> list[str]:
    """The command of a numbered-lines writer of ``total_bytes`` that waits at
    ``pause_bytes`` (creating ``tmp_path/go.paused``) until ``tmp_path/go`` exists."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    pause = (total_bytes if pause_bytes is None else pause_bytes) // LINE
    return [sys.executable, str(script), str(total_bytes // LINE), str(pause), str(tmp_path / "go")]


class ShimRun:
    """One shim run the way the server runs it, with its log capped at ``cap``."""

    def __init__(self, shim: Path, tmp_path: Path, argv: list[str], cap: int, **env: str) -> None:
        (tmp_path / "run").mkdir(exist_ok=True)
        self.state = tmp_path / "run" / "w"
        self.log = tmp_path / "w.log"
        environ = {
            "PATH": os.environ["PATH"],
            "CORRAL_SHIM_LOG_CAP": str(cap),
            "CORRAL_SHIM_LOG": str(self.log),
            **env,
        }
        self.pid = os.posix_spawn(
            str(shim),
            shim_argv(shim, self.state, 1.0, None, argv),
            environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (
                    os.POSIX_SPAWN_OPEN,
                    1,
                    str(self.log),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                    0o600,
                ),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
        self.returncode: int | None = None

    def done(self) -> bool:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode is not None

    def wait(self, timeout: float = 60) -> ShimStatus:
        wait_until(self.done, timeout)
        assert self.returncode == 0
        status = read_status(self.state)
        assert status is not None
        return status

    def kill(self) -> None:
        """SIGKILL the shim and its workload's group."""
        group = read_pid(self.state)
        for kill, target in ((os.kill, self.pid), (os.killpg, group)):
            if target is not None:
                with contextlib.suppress(ProcessLookupError):
                    kill(target, signal.SIGKILL)


@pytest.fixture
def run_shim(shim: Path, tmp_path: Path) -> Iterator[Callable[..., ShimRun]]:
    runs: list[ShimRun] = []

    def start(argv: list[str], cap: int, **env: str) -> ShimRun:
        runs.append(ShimRun(shim, tmp_path, argv, cap, **env))
        return runs[-1]

    yield start
    for run in runs:
        if not run.done():
            run.kill()
            os.waitpid(run.pid, 0)


def read_all(path: Path, tail: int | None = None) -> bytes:
    return b"".join(log_chunks(open_reader(path, tail)))


def last_lines(data: bytes, n: int) -> bytes:
    found = re.findall(rb"[^\n]*\n|[^\n]+$", data)
    return b"".join(found[-n:]) if n else b""


# --- the shim -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "cap"),
    [(0, 100), (99, 100), (100, 100), (101, 100), (5000, 100), (5000, 101), (5000, 1),
     (300_000, 4096), (70_000, 65_536 + 7)],
)  # fmt: skip
def test_the_log_is_head_marker_tail_byte_exact(
    run_shim: Callable[..., ShimRun], tmp_path: Path, size: int, cap: int
) -> None:
    """Binary output without a newline anywhere, from stdout and stderr in turn (their
    order kept): the log is the first cap/2 and last cap - cap/2 bytes with the count
    of the rest between, or the output untouched when it fits; no ring is left."""
    data = bytes((i * 7 + 3) % 256 for i in range(size)).replace(b"\n", b"\x00")
    (tmp_path / "data").write_bytes(data)
    script = (
        "import os, sys\ndata = open(sys.argv[1], 'rb').read()\n"
        "for k, at in enumerate(range(0, len(data), 777)):\n"
        "    os.write(1 + k % 2, data[at:at + 777])\n"
    )
    run = run_shim([sys.executable, "-c", script, str(tmp_path / "data")], cap)
    assert run.wait() == ShimStatus("exit", 0)
    assert run.log.read_bytes() == capped(data, cap)
    assert read_all(run.log) == capped(data, cap)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("w.log")) == ["w.log"]


def test_50_mb_under_a_1_mb_cap_through_every_reader(
    run_shim: Callable[..., ShimRun], tmp_path: Path
) -> None:
    """50 MB written under a 1 MiB cap: sampled while it runs, the log never holds
    more than the head (then head, marker and tail at the end) and the ring no more
    than the tail; paused half-way, every read is the capped log of what was written
    so far (whole, or by ``tail``); a slow follower gets head, markers counting what
    it missed and the end; the final log is byte-exact."""
    cap, total, pause = 1 << 20, 50_000_000, 25_000_000
    run = run_shim(writer(tmp_path, total, pause), cap)
    wait_until(lambda: (tmp_path / "go.paused").exists(), 60)
    so_far = capped(lines(0, pause), cap)
    assert run.log.stat().st_size == cap // 2
    assert ring_path(run.log).stat().st_size == RING_DATA + cap - cap // 2
    assert read_all(run.log) == so_far
    for n in (0, 1, 3, 50_000, 10**6):
        assert read_all(run.log, tail=n) == last_lines(so_far, n), n

    samples: list[tuple[int, int, bool]] = []
    workload = read_pid(run.state)
    assert workload is not None
    followed: list[bytes] = []

    def sample() -> None:
        while not run.done():
            sizes = []
            for path in (run.log, ring_path(run.log)):
                try:
                    sizes.append(path.stat().st_size)
                except FileNotFoundError:
                    sizes.append(0)
            samples.append((sizes[0], sizes[1], is_alive(workload)))  # alive after the stat

    def follow() -> None:  # a follower slower than the writer: 64 KiB, then a nap
        reader = LogReader(run.log)
        try:
            while True:
                over = run.returncode is not None or read_status(run.state) is not None
                chunk = reader.read(65536)
                followed.append(chunk)
                if not chunk and over:
                    return
                time.sleep(0.002)
        finally:
            reader.close()

    threads = [threading.Thread(target=sample), threading.Thread(target=follow)]
    for thread in threads:
        thread.start()
    (tmp_path / "go").touch()
    try:
        assert run.wait(120) == ShimStatus("exit", 0)
    finally:
        for thread in threads:
            thread.join(60)
    final = capped(lines(0, total), cap)
    assert run.log.read_bytes() == final
    assert len(final) == cap + len(b"\n[corral: 48951424 bytes dropped]\n")  # mid-line
    assert not ring_path(run.log).exists()
    assert len(samples) > 100, "too few samples to say anything"
    assert max(log for log, _, _ in samples) <= len(final)
    assert max(ring for _, ring, _ in samples) <= RING_DATA + cap - cap // 2
    assert all(log <= cap // 2 for log, _, running in samples if running)  # the head only
    assert sum(running for _, _, running in samples) > 100
    got = b"".join(followed)
    covered, counts = coherent(got)
    assert covered == total and counts and got.startswith(lines(0, cap // 2))
    assert got.endswith(lines(total - 1000, total))


def test_a_killed_shim_leaves_a_ring_that_readers_join_and_the_executor_finishes(
    run_shim: Callable[..., ShimRun], tmp_path: Path
) -> None:
    """The shim and its workload SIGKILLed while capped: the log is head and ring,
    read joined; ``finish_capped_log`` (what the executor does on a lost outcome)
    appends marker and tail, byte-exact, and removes the ring."""
    cap = 10_000
    run = run_shim(writer(tmp_path, 10**6, 123_450), cap)
    wait_until(lambda: (tmp_path / "go.paused").exists(), 30)
    run.kill()
    wait_until(run.done)
    expected = capped(lines(0, 123_450), cap)
    assert read_all(run.log) == expected
    assert read_all(run.log, tail=2) == last_lines(expected, 2)
    state = read_ring(os.open(ring_path(run.log), os.O_RDONLY))
    assert state is not None and not state.sealed
    finish_capped_log(run.log)
    assert run.log.read_bytes() == expected and not ring_path(run.log).exists()
    finish_capped_log(run.log)  # nothing left to do
    assert run.log.read_bytes() == expected


def test_a_capped_log_removed_mid_read_is_read_whole(
    run_shim: Callable[..., ShimRun], tmp_path: Path
) -> None:
    """A killed shim's head and ring, removed (its workload deleted: retention) while
    a read streams them: the reader holds both open and gives the whole log."""
    cap = 2 * READ_CHUNK_BYTES + 1000  # a head of more than one chunk
    run = run_shim(writer(tmp_path, 10**7, 2 * 10**6), cap)
    wait_until(lambda: (tmp_path / "go.paused").exists(), 30)
    run.kill()
    wait_until(run.done)
    chunks = log_chunks(open_reader(run.log))
    first = next(chunks)
    ring_path(run.log).unlink()
    run.log.unlink()
    assert first + b"".join(chunks) == capped(lines(0, 2 * 10**6), cap)


def test_a_ring_that_cannot_be_made_counts_the_rest_as_dropped(
    run_shim: Callable[..., ShimRun], tmp_path: Path
) -> None:
    (tmp_path / "w.log.ring.tmp").mkdir()  # in the way of the ring
    run = run_shim(writer(tmp_path, 5000), 105)
    assert run.wait() == ShimStatus("exit", 0)
    assert run.log.read_bytes() == lines(0, 52) + (
        b"\n[corral: 4948 bytes dropped]\n"
        b"corral-shim: could not keep the log's tail: Is a directory\n"
    )


@pytest.mark.parametrize(
    "env",
    [{"CORRAL_SHIM_LOG_CAP": "lots"}, {"CORRAL_SHIM_LOG_CAP": "-1"}, {"CORRAL_SHIM_LOG": ""}],
)
def test_bad_cap_variables_run_nothing(
    run_shim: Callable[..., ShimRun], tmp_path: Path, env: dict[str, str]
) -> None:
    run = run_shim(["touch", str(tmp_path / "ran")], 100, **env)
    assert run.wait() == ShimStatus("spawn", 22)  # "" : a cap without a path
    assert not (tmp_path / "ran").exists()
    assert b"bad or incomplete CORRAL_SHIM_LOG_CAP" in run.log.read_bytes()


def test_the_largest_cap_the_parser_takes_is_the_shims(
    run_shim: Callable[..., ShimRun],
) -> None:
    """``--max-log-bytes`` takes up to what the shim takes (it took 2^62, 4194304T,
    and then every workload failed to spawn: Invalid argument)."""
    assert parse_bytes(str(BYTES_MAX)) == BYTES_MAX == (1 << 62) - 1
    for beyond in (str(BYTES_MAX + 1), "4194304T"):
        with pytest.raises(ValueError, match="too large: at most 4611686018427387903 bytes"):
            parse_bytes(beyond)
    run = run_shim(["echo", "hi"], BYTES_MAX)
    assert run.wait() == ShimStatus("exit", 0)
    assert run.log.read_bytes() == b"hi\n"
    run = run_shim(["echo", "hi"], BYTES_MAX + 1)
    assert run.wait() == ShimStatus("spawn", 22)


def test_the_local_executor_caps_and_reports_log_bytes(tmp_path: Path) -> None:
    """``LocalExecutor(max_log_bytes=)``: the shim's variables reach it (and not the
    workload), and each outcome carries the log's final size (for the metrics)."""

    async def main() -> tuple[Outcome, Outcome]:
        executor = LocalExecutor(
            tmp_path / "data", capacity=Capacity(cpus=2, memory_mb=64, gpus=0),
            kill_grace_seconds=1, max_log_bytes=1000,
        )  # fmt: skip
        outcomes: dict[str, asyncio.Future[Outcome]] = {}
        loop = asyncio.get_running_loop()

        def done(outcome: Outcome) -> None:
            outcomes[outcome.workload_id].set_result(outcome)

        executor.start(done)
        try:
            big = make_workload(writer(tmp_path, 50_000))
            env = make_workload(["sh", "-c", "env | grep -c CORRAL_SHIM || true"])
            for w in (big, env):
                outcomes[w.id] = loop.create_future()
                await executor.launch(w, ())
            return await asyncio.wait_for(outcomes[big.id], 30), await asyncio.wait_for(
                outcomes[env.id], 30
            )
        finally:
            executor.close()

    try:
        big, env = asyncio.run(main())
    finally:
        kill_all(tmp_path / "data" / "run")
    expected = capped(lines(0, 50_000), 1000)
    assert log_path(tmp_path / "data", big.workload_id).read_bytes() == expected
    assert big.exit_code == 0 and big.log_bytes == len(expected)
    assert log_path(tmp_path / "data", env.workload_id).read_bytes() == b"0\n"
    assert env.log_bytes == 2


# --- on Ray ----------------------------------------------------------------------------------


class CappedRay(Harness):
    """The Ray executor with capped logs: agents of a namespace of their own (an agent
    keeps what it was made with), whose node directories are below ``node_dir``."""

    cap = 10_000

    def _make(self) -> Any:
        from corral.executors.ray import RayExecutor

        assert self.cluster is not None
        return RayExecutor(
            self.data_dir, address=self.cluster.address,
            namespace=self.cluster.namespace + "-capped", kill_grace_seconds=GRACE_SECONDS,
            node_dir=self.node_dir, max_log_bytes=self.cap,
        )  # fmt: skip

    @property
    def node_dir(self) -> Path:
        return self.data_dir.parent / "capped-nodes"

    def _run_dirs(self) -> list[Path]:
        return sorted(self.node_dir.glob("*/run"))


def test_a_ray_nodes_log_is_capped_and_the_servers_copy_follows(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """On a Ray node the shim caps the log; the server's copy holds the head while it
    runs (the tail is in the node's ring) and the capped log, byte-exact, at its end."""
    rx = CappedRay("ray", tmp_path / "data", ray_cluster)
    try:

        async def main() -> Outcome:
            w = await rx.start(make_workload(writer(tmp_path, 300_000, 150_000)))
            await asyncio.to_thread(wait_until, lambda: (tmp_path / "go.paused").exists(), 30)
            copy = rx.executor.logs.path(w.id)
            head = lines(0, rx.cap // 2)
            await asyncio.to_thread(wait_until, lambda: copy.read_bytes() == head, 10)
            await asyncio.sleep(0.5)  # more polls: nothing past the head yet
            assert copy.read_bytes() == head
            (tmp_path / "go").touch()
            return await rx.outcome(w, timeout=60)

        outcome = rx.run(main())
    finally:
        rx.close()
    expected = capped(lines(0, 300_000), CappedRay.cap)
    assert outcome.exit_code == 0 and outcome.log_bytes == len(expected)
    assert rx.executor.logs.path(outcome.workload_id).read_bytes() == expected


# --- through corral serve --------------------------------------------------------------------


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    servers: list[LiveServer] = []

    def start(*args: str) -> Api:
        server = LiveServer(tmp_path / "data", "--executor", "local", *args)
        servers.append(server.start())
        return Api(server)

    yield start
    for server in servers:
        server.kill()
    kill_all(tmp_path / "data" / "run")


def follow(api: Api, wid: str, into: list[bytes]) -> threading.Thread:
    def run() -> None:
        client = httpx.Client(base_url=api.server.url, headers=api.server.headers, timeout=120)
        url = f"/v1/workloads/{wid}/logs"
        with client, client.stream("GET", url, params={"follow": "true"}) as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                into.append(chunk)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def raw_logs(api: Api, wid: str, **params: Any) -> bytes:
    r = api.http.get(f"/v1/workloads/{wid}/logs", params=params)
    assert r.status_code == 200, r.text
    return r.content


def test_serve_caps_logs_for_get_tail_follow_and_the_cli(
    serve: Callable[..., Api], tmp_path: Path
) -> None:
    """``--max-log-bytes 1M``, a workload writing 6 MB: paused half-way, GET (whole
    and ``tail``) is the capped log so far; followers started then and at the start
    see head, marker(s) and the end; at the end GET and ``corral logs`` are the
    capped log, byte-exact, and the server says the cap at its start."""
    api = serve("--max-log-bytes", "1M")
    cap, total, pause = 1 << 20, 6_000_000, 3_000_000
    followed_early: list[bytes] = []
    w = api.submit(writer(tmp_path, total, pause))
    early = follow(api, w["id"], followed_early)
    wait_until(lambda: (tmp_path / "go.paused").exists(), 60)
    so_far = capped(lines(0, pause), cap)
    assert raw_logs(api, w["id"]) == so_far
    assert raw_logs(api, w["id"], tail=2) == last_lines(so_far, 2)
    followed: list[bytes] = []
    late = follow(api, w["id"], followed)
    wait_until(lambda: b"".join(followed).endswith(lines(pause - 20, pause)), 30)
    (tmp_path / "go").touch()
    assert api.wait(w["id"], timeout=120)["status"] == "completed"
    for thread in (early, late):
        thread.join(60)
    for got in (b"".join(followed), b"".join(followed_early)):
        covered, counts = coherent(got)
        assert covered == total and counts
        assert got.startswith(lines(0, cap // 2)) and got.endswith(lines(total - 100, total))
    final = capped(lines(0, total), cap)
    assert raw_logs(api, w["id"]) == final
    assert raw_logs(api, w["id"], tail=1) == lines(total - 10, total)
    cli = subprocess.run(
        [sys.executable, "-m", "corral.cli", "logs", w["id"]],
        env=api.server.cli_env, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert cli.stdout == final


def test_a_capped_workload_killed_then_read(serve: Callable[..., Api], tmp_path: Path) -> None:
    """Killed while writing without end under a 64K cap: the log is head, one marker,
    and the last 32K bytes it wrote, contiguous; no ring is left."""
    api = serve("--max-log-bytes", "64K")
    w = api.submit(writer(tmp_path, 10**12))
    log = log_path(tmp_path / "data", w["id"])

    def far() -> bool:
        fd = os.open(ring_path(log), os.O_RDONLY)
        try:
            state = read_ring(fd)
        finally:
            os.close(fd)
        return state is not None and state.lo > 1_000_000

    wait_until(lambda: ring_path(log).exists() and far(), 60)
    assert api.http.delete(f"/v1/workloads/{w['id']}").status_code == 200
    wait_until(lambda: not ring_path(log).exists(), 30)
    got = raw_logs(api, w["id"])
    covered, counts = coherent(got)
    assert len(counts) == 1 and covered == 32768 + counts[0] + 32768
    assert got == capped(lines(0, covered), 65536)


def test_the_cap_holds_across_a_server_restart(serve: Callable[..., Api], tmp_path: Path) -> None:
    """A capped workload outlives its server; the next one, started without the cap,
    reads it capped while it runs, and its log ends capped as it began."""
    first = serve("--max-log-bytes", "100000")
    w = first.submit(writer(tmp_path, 2_000_000, 1_000_000))
    wait_until(lambda: (tmp_path / "go.paused").exists(), 60)
    first.server.stop()
    second = serve()
    assert second.get(w["id"])["status"] == "running"
    assert raw_logs(second, w["id"]) == capped(lines(0, 1_000_000), 100_000)
    (tmp_path / "go").touch()
    assert second.wait(w["id"], timeout=60)["status"] == "completed"
    assert raw_logs(second, w["id"]) == capped(lines(0, 2_000_000), 100_000)


def test_max_log_bytes_values(tmp_path: Path) -> None:
    assert [parse_bytes(t) for t in ("10M", "1G", "4096", "0", "1.5K", "2kb", "3MiB")] == [
        10 << 20, 1 << 30, 4096, 0, 1536, 2048, 3 << 20,
    ]  # fmt: skip
    for bad in ("10X", "-1", "1.5", "1e3", "", "99999999T"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli", "serve", "--data-dir", str(tmp_path / "d"),
         "--max-log-bytes", "10X"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "invalid --max-log-bytes: '10X'" in done.stderr
    assert not (tmp_path / "d").exists()
