"""A real HTTP server on loopback that answers from a script and records what it got:
for testing the client's side (headers, retries, error mapping) without a corral."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROBLEM_PREFIX = "urn:corral:problem:"
KEY = "corral_" + "k" * 43
"""A key of the right shape, known to no server."""


@dataclass
class Answer:
    status: int = 200
    body: Any = None
    """JSON-encoded unless bytes or str; None sends no body."""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before answering."""
    hang_up: bool = False
    """Close the connection without answering (a kept-alive connection the server
    dropped just as the request came)."""
    close_after: bool = False
    """Answer, then close the connection without saying so (no ``Connection: close``):
    the client finds its kept-alive connection dropped when it next uses it."""


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int] = ("", 0)
    """The client's address: one per connection."""

    def json(self) -> Any:
        return json.loads(self.body)


def problem(status: int, slug: str, detail: str, **headers: str) -> Answer:
    body = {"type": PROBLEM_PREFIX + slug, "title": slug, "status": status, "detail": detail}
    return Answer(status, body, {"Content-Type": "application/problem+json", **headers})


class ScriptedServer:
    """Answers each request with the next scripted ``Answer`` (the last one repeats),
    or with ``answer(seen)`` when given a function. With ``tls``, it speaks HTTPS."""

    def __init__(
        self, *answers: Answer | Callable[[Seen], Answer], tls: ssl.SSLContext | None = None
    ) -> None:
        self.answers = list(answers) or [Answer()]
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                    (self.client_address[0], self.client_address[1]),
                )
                answer = outer._next(seen)
                time.sleep(answer.delay)
                if answer.hang_up:
                    self.close_connection = True
                    return
                data = answer.body
                if data is None:
                    payload = b""
                elif isinstance(data, bytes):
                    payload = data
                elif isinstance(data, str):
                    payload = data.encode()
                else:
                    payload = json.dumps(data).encode()
                self.send_response(answer.status)
                headers = {"Content-Type": "application/json", **answer.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                if answer.close_after:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_WR)  # now, right after the answer
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.port = self.httpd.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def _next(self, seen: Seen) -> Answer:
        with self._lock:
            self.seen.append(seen)
            step = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return step(seen) if callable(step) else step

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- bodies as a corral server answers them ---------------------------------------------


def token_body(**extra: object) -> dict[str, object]:
    """A key as a server answers it (``role`` from ``admin`` unless given)."""
    body: dict[str, object] = {
        "id": "t1",
        "user": "alice",
        "admin": False,
        "unix_user": None,
        "description": None,
        "created_at": "2024-01-01T00:00:00Z",
        "revoked_at": None,
        **extra,
    }
    body.setdefault("role", "admin" if body["admin"] else "user")
    return body


def workload_body(**extra: object) -> dict[str, object]:
    now = "2024-01-01T00:00:00Z"
    return {
        "id": "w1",
        "owner": "alice",
        "name": None,
        "command": ["true"],
        "env": {},
        "cwd": None,
        "resources": {"cpus": 1.0, "memory_mb": 0, "gpus": 0},
        "labels": {},
        "priority": 0,
        "timeout_seconds": None,
        "status": "pending",
        "exit_code": None,
        "signal": None,
        "reason": None,
        "created_at": now,
        "updated_at": now,
        "started_at": None,
        "finished_at": None,
        **extra,
    }
