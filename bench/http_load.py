"""A small keep-alive HTTP/1.1 load generator (asyncio protocols over raw sockets).

Run as its own process, so it never shares the server's GIL::

    python -m bench.http_load '{"port": 8765, "requests": [...], "conns": 32, ...}'
    python -m bench.http_load @spec.json      # (read, then removed)

``requests`` are ready-made request bytes (latin-1 strings in the JSON), used round
robin. Each connection keeps one request in flight. Two modes: ``duration`` (count
responses completed in a window after ``warmup``) or ``total`` (send exactly that
many requests, as fast as possible). Prints one JSON object: responses, non-2xx,
connection errors, rate, latency percentiles and the monotonic start and end times.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, cast

from bench.common import PYTHON, REPO, TOKENS


def encode_request(method: str, path: str, body: bytes = b"", port: int = 0) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if port in TOKENS:
        head += f"Authorization: Bearer {TOKENS[port]}\r\n"
    if body or method in ("POST", "PUT"):
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode("latin-1") + body


@dataclass
class Stats:
    measure_from: float
    measure_until: float
    ok: int = 0
    non_2xx: int = 0
    conn_errors: int = 0
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)


class Conn(asyncio.Protocol):
    def __init__(self, gen: Generator, offset: int) -> None:
        self.gen = gen
        self.index = offset
        self.buf = b""
        self.need = -1
        self.status = 0
        self.sent_at = 0.0
        self.inflight = False
        self.transport: asyncio.Transport | None = None
        self.closed = gen.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        if not self.gen.may_send():
            self.transport.close()
            return
        reqs = self.gen.requests
        self.index += 1
        self.sent_at = time.monotonic()
        self.inflight = True
        self.transport.write(reqs[self.index % len(reqs)])

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need < 0:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end].lower()
                self.status = int(head[9:12])
                at = head.find(b"\r\ncontent-length:")
                length = int(head[at + 17 : head.index(b"\r\n", at + 2)]) if at >= 0 else 0
                self.need = end + 4 + length
            if len(self.buf) < self.need:
                return
            self.buf = self.buf[self.need :]
            self.need = -1
            self.inflight = False
            self.gen.record(self.status, self.sent_at)
            self.send()
            if self.buf == b"":
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inflight:
            self.gen.stats.conn_errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


class Generator:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.loop = asyncio.get_running_loop()
        self.port = int(spec["port"])
        self.requests = [r.encode("latin-1") for r in spec["requests"]]
        self.conns = int(spec.get("conns", 32))
        self.total = spec.get("total")
        now = time.monotonic()
        warmup = float(spec.get("warmup", 0.0))
        duration = float(spec.get("duration", 1e9))
        self.stats = Stats(now + warmup, now + warmup + duration)
        self.stop_at = self.stats.measure_until

    def may_send(self) -> bool:
        if self.total is not None:
            if self.stats.sent >= self.total:
                return False
            self.stats.sent += 1
            return True
        return time.monotonic() < self.stop_at

    def record(self, status: int, sent_at: float) -> None:
        now = time.monotonic()
        st = self.stats
        if self.total is None and not st.measure_from <= now < st.measure_until:
            return
        st.statuses[status] = st.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            st.ok += 1
        else:
            st.non_2xx += 1
        st.latencies.append(now - sent_at)

    async def run(self) -> dict[str, Any]:
        start = time.monotonic()
        conns: list[Conn] = []
        for i in range(self.conns):
            conn = Conn(self, i * 7919)
            try:
                await self.loop.create_connection(lambda c=conn: c, "127.0.0.1", self.port)  # type: ignore[misc]
                conns.append(conn)
            except OSError:
                self.stats.conn_errors += 1
        limit = self.stop_at - time.monotonic() + 60 if self.total is None else 600
        try:
            await asyncio.wait_for(asyncio.gather(*(c.closed for c in conns)), limit)
        except TimeoutError:
            self.stats.conn_errors += sum(1 for c in conns if not c.closed.done())
        end = time.monotonic()
        return self.report(start, end)

    def report(self, start: float, end: float) -> dict[str, Any]:
        st = self.stats
        window = (end - start) if self.total is not None else st.measure_until - st.measure_from
        lat = sorted(st.latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000, 3) if lat else None

        return {
            "ok": st.ok,
            "non_2xx": st.non_2xx,
            "conn_errors": st.conn_errors,
            "statuses": st.statuses,
            "seconds": window,
            "rps": (st.ok + st.non_2xx) / window if window > 0 else 0.0,
            "latency_ms": {"p50": pct(50), "p99": pct(99), "max": pct(100)},
            "start": start,
            "end": end,
        }


async def _main(spec: dict[str, Any]) -> dict[str, Any]:
    return await Generator(spec).run()


def start_load(spec: dict[str, Any]) -> subprocess.Popen[str]:
    """Start the generator in its own process; ``finish_load`` collects its report."""
    # In a file the generator reads and removes: thousands of requests, each with its
    # key, outgrow one argument (128 kB).
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    return subprocess.Popen(
        [PYTHON, "-m", "bench.http_load", f"@{f.name}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def finish_load(proc: subprocess.Popen[str], timeout: float = 600.0) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {err[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


def run_load(spec: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """Run the generator in its own process and return its report."""
    return finish_load(start_load(spec), timeout)


def main() -> None:
    arg = sys.argv[1]
    if arg.startswith("@"):
        with open(arg[1:]) as f:
            spec = json.load(f)
        os.unlink(arg[1:])
    else:
        spec = json.loads(arg)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(_main(spec))))


if __name__ == "__main__":
    main()
