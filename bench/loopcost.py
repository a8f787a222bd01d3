"""What one workload costs the server's event loop, against the floors of the same
request path measured in the same run: ``python -m bench.loopcost [--n N] [--rounds R]``.

Issue 13 asks the loop's CPU per workload, in W1 (``bench/peers.py``: ``true``
submitted one at a time by a plain urllib client, a new connection per request), to
be cut to 0.5 ms. This measures it (the loop thread's ``utime + stime`` from
``/proc/PID/task/PID/stat``, over N submits and until all have ended, divided by N)
for four servers, each on a fresh data dir, the same client, in rounds that
alternate them:

- ``raw``: a bare uvloop protocol that answers every request with a fixed ``201``
  and a short JSON body (``serve_raw`` below): the floor of any Python server here
  (accept, read, write, close; no HTTP framework).
- ``bare``: ``bench/bare_app.py`` (uvicorn, FastAPI, the body validated as
  corral's): the floor of corral's HTTP stack.
- ``create``: ``corral serve --executor none``: the create alone (keys, guard,
  access log, the store's transaction, the scheduler's queue), nothing run.
- ``w1``: ``corral serve --executor local``, 2 CPUs: W1 itself (create, start,
  exit, its end recorded), plus the client's ``GET /v1/status`` every 20 ms while it
  waits for the last ones.

The same client's requests are also timed (submits/s). Each figure is the median of
the rounds, with the spread. Nothing is asserted: ``docs/benchmarks.md`` ("The fourth
round of issue 13") reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import PYTHON, REPO, Server, fresh_dir, remove_fresh_dirs, wait_until
from bench.peers import PlainClient

BODY = b'{"id":"w","status":"pending"}'
ANSWER = (
    b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
    b"connection: close\r\n\r\n%s" % (len(BODY), BODY)
)


class _Raw(asyncio.Protocol):
    """Answers each request (read to the end of its headers and its body, as
    ``content-length`` says) with ``ANSWER``, then closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport  # (uvloop's is no asyncio.Transport)
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data
        head, sep, body = self.data.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(body) >= length:
            self.transport.write(ANSWER)
            self.transport.close()


def serve_raw(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Raw, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def loop_cpu(pid: int) -> float:
    """The CPU seconds of ``pid``'s main thread (the event loop's)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, n: int) -> dict[str, float]:
    """One server of ``kind``: its loop's CPU per request (ms) and the submits/s."""
    server: Server
    if kind == "raw":
        server = RawServer()
    elif kind == "bare":
        server = Server(fresh_dir("bare"), argv=[PYTHON, "-m", "bench.bare_app", "{port}"])
    else:
        executor = "local" if kind == "w1" else "none"
        server = Server(fresh_dir(f"loop-{kind}"), executor, env={"CORRAL_CPUS": "2"})
    server.start()
    try:
        token = server.data_dir / "token"
        client = PlainClient(server.url, token.read_text().strip() if token.exists() else None)
        spec = {"command": ["true"]}
        for _ in range(20):  # warm: the first requests import and compile
            client.call("POST", "/v1/workloads", spec)
        if kind == "w1":
            wait_until(lambda: client.ended() >= 20, timeout=60, interval=0.01)
        cpu = loop_cpu(server.pid)
        start = time.perf_counter()
        for _ in range(n):
            client.call("POST", "/v1/workloads", spec)
        submitted = time.perf_counter()
        if kind == "w1":
            wait_until(lambda: client.ended() >= n + 20, timeout=600, interval=0.02)
        used = loop_cpu(server.pid) - cpu
        return {"loop_ms": used / n * 1000, "submits_s": n / (submitted - start)}
    finally:
        server.stop()


class RawServer(Server):
    """``serve_raw`` in a process of its own (no ``/healthz``: ready once it accepts)."""

    def __init__(self) -> None:
        super().__init__(
            fresh_dir("raw"), argv=[PYTHON, "-m", "bench.loopcost", "--serve-raw", "{port}"]
        )

    def start(self, timeout: float = 30.0) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, cwd=REPO, start_new_session=True
            )
        wait_until(lambda: _accepts(self.port), timeout=timeout, interval=0.02)
        return self


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


KINDS = ("raw", "bare", "create", "w1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="submits per server (1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median; default 3)")
    parser.add_argument("--serve-raw", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.serve_raw:
        serve_raw(args.serve_raw)
        return
    rounds: list[dict[str, dict[str, float]]] = []
    try:
        for _ in range(args.rounds):
            rounds.append({kind: measure(kind, args.n) for kind in KINDS})
            remove_fresh_dirs()
    finally:
        remove_fresh_dirs()
    print(f"the loop's CPU per request, N={args.n}, {args.rounds} rounds (median; range)")
    print(f"{'server':8} {'loop ms':>22} {'submits/s':>22}")
    median: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        median[kind] = {}
        cells = []
        for key in ("loop_ms", "submits_s"):
            values = [r[kind][key] for r in rounds]
            median[kind][key] = statistics.median(values)
            cells.append(f"{median[kind][key]:8.3f} ({min(values):.3f}-{max(values):.3f})")
        print(f"{kind:8} {cells[0]:>22} {cells[1]:>22}")
    raw = median["raw"]["loop_ms"]
    for kind in KINDS[1:]:
        print(f"{kind} over raw: {median[kind]['loop_ms'] / raw:.2f} x")
    if args.out:
        args.out.write_text(json.dumps({"median": median, "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
