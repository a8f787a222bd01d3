"""``corral.Client``'s transport over ``corral.http``, against real loopback servers
(``tests.scripted``) and a real tunnelling proxy: kept-alive connections and a dropped
one, timeouts (none while following a log), streaming, threads, TLS, and proxies."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import Client, CorralClientError, ServerUnreachable
from corral.client import LOG_CHUNK_BYTES
from tests.scripted import KEY, Answer, ScriptedServer, Seen, token_body, workload_body

TOKENS = Answer(200, {"items": [token_body()]})


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the environment running the tests, unless a test sets one."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            monkeypatch.delenv(name)


# --- keep-alive -----------------------------------------------------------------------


def test_requests_share_one_kept_alive_connection() -> None:
    with ScriptedServer(TOKENS) as srv, Client(srv.url, token=KEY) as client:
        for _ in range(3):
            assert len(client.tokens()) == 1
    assert len({s.peer for s in srv.seen}) == 1


def test_an_idle_connection_the_server_closed_is_replaced_even_for_a_post() -> None:
    """The server closes a kept-alive connection after a while (uvicorn: 5 s); the
    client sees it closed before using it, so even a POST goes through."""
    closing = Answer(200, {"items": [token_body()]}, close_after=True)
    with (
        ScriptedServer(closing, Answer(201, workload_body())) as srv,
        Client(srv.url, token=KEY) as client,
    ):
        client.tokens()
        time.sleep(0.2)  # idle, as between two commands: the server's close arrives
        assert client.submit(["true"]).id == "w1"
    assert [s.method for s in srv.seen] == ["GET", "POST"]
    assert srv.seen[0].peer != srv.seen[1].peer


def test_a_connection_dropped_under_a_request_is_retried_once_when_safe() -> None:
    hang_up = Answer(hang_up=True)
    with ScriptedServer(TOKENS, hang_up, TOKENS) as srv, Client(srv.url, token=KEY) as client:
        client.tokens()
        assert len(client.tokens()) == 1  # sent again on a new connection
    peers = [s.peer for s in srv.seen]
    assert len(peers) == 3 and peers[0] == peers[1] != peers[2]

    created = Answer(201, workload_body())
    with ScriptedServer(TOKENS, hang_up, created) as srv, Client(srv.url, token=KEY) as client:
        client.tokens()
        with pytest.raises(CorralClientError, match="lost the connection to the corral server"):
            client.submit(["true"])  # a POST may have been carried out: not sent twice
        assert len(srv.seen) == 2
        assert client.submit(["true"], idempotency_key="k").id == "w1"  # replays are safe

    with ScriptedServer(TOKENS, hang_up, created) as srv, Client(srv.url, token=KEY) as client:
        client.tokens()
        assert client.submit(["true"], idempotency_key="k").id == "w1"
    assert [s.method for s in srv.seen] == ["GET", "POST", "POST"]


def test_a_header_http_client_refuses_leaves_nothing_behind_for_the_next_request() -> None:
    """http.client refuses a header with a line break after it has buffered the
    request line and the headers before it; the next request must not send them."""
    with ScriptedServer(TOKENS) as srv, Client(srv.url, token=KEY, timeout=5) as client:
        with pytest.raises(ValueError, match="invalid value for the header Idempotency-Key"):
            client.submit(["true"], idempotency_key="a\r\nb")
        assert len(client.tokens()) == 1
    assert [(s.method, s.path) for s in srv.seen] == [("GET", "/v1/tokens")]


def test_a_new_connection_dropped_is_an_error_not_a_retry() -> None:
    with (
        ScriptedServer(Answer(hang_up=True), TOKENS) as srv,
        Client(srv.url, token=KEY) as client,
        pytest.raises(CorralClientError, match="lost the connection"),
    ):
        client.tokens()
    assert len(srv.seen) == 1


# --- timeouts and streaming -----------------------------------------------------------


def test_a_slow_answer_times_out_but_a_followed_log_does_not() -> None:
    status = {"status": "running"}

    def answer(seen: Seen) -> Answer:
        if not seen.path.startswith("/v1/workloads/w1/logs"):
            return Answer(200, workload_body(**status))
        return Answer(200, b"late\n", {"Content-Type": "text/plain"}, delay=1.0)

    with ScriptedServer(answer) as srv, Client(srv.url, token=KEY, timeout=0.3) as client:
        with pytest.raises(CorralClientError, match=r"did not answer within 0\.3 s"):
            client.logs("w1")
        # a follow that ends while the workload runs on was ended by the server
        with pytest.raises(CorralClientError, match=r"ended the log of w1 while it is still"):
            b"".join(client.follow_logs("w1"))
        status["status"] = "completed"
        assert b"".join(client.follow_logs("w1")) == b"late\n"
    assert [s.path for s in srv.seen[-2:]] == [
        "/v1/workloads/w1/logs?follow=true",
        "/v1/workloads/w1",  # then asked: ended
    ]


def test_logs_stream_in_chunks_while_other_requests_go_on() -> None:
    log = os.urandom(3 * LOG_CHUNK_BYTES + 5)

    def answer(seen: Seen) -> Answer:
        if seen.path.endswith("/logs?tail=1000000"):
            return Answer(200, log, {"Content-Type": "application/octet-stream"})
        return Answer(200, workload_body())

    with ScriptedServer(answer) as srv, Client(srv.url, token=KEY) as client:
        chunks = []
        for chunk in client.stream_logs("w1", tail=1_000_000):
            assert 0 < len(chunk) <= LOG_CHUNK_BYTES
            assert client.get("w1").id == "w1"  # on another connection meanwhile
            chunks.append(chunk)
        assert b"".join(chunks) == log and len(chunks) >= 4
        client.get("w1")
    assert len({s.peer for s in srv.seen}) == 2  # both kept, then reused


def test_threads_share_a_client() -> None:
    with ScriptedServer(Answer(200, workload_body())) as srv, Client(srv.url, token=KEY) as c:
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(10):
                    assert c.get("w1").owner == "alice"
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(srv.seen) == 60
    assert len({s.peer for s in srv.seen}) <= 6  # kept alive, not one per request


def test_an_answer_that_is_not_corral_s_is_named() -> None:
    with (
        ScriptedServer(Answer(200, "<html>", {"Content-Type": "text/html"})) as srv,
        Client(srv.url, token=KEY) as client,
        pytest.raises(CorralClientError, match=r"unexpected answer from .* \(not JSON\)"),
    ):
        client.get("w1")
    bad = Answer(200, {"items": [workload_body(status="sleeping")], "next_cursor": None})
    with (
        ScriptedServer(bad) as srv,
        Client(srv.url, token=KEY) as client,
        pytest.raises(CorralClientError) as info,
    ):
        list(client.list())
    assert str(info.value).startswith(
        f"unexpected answer from {srv.url} (page.items[0].status: expected a status"
    )
    assert str(info.value).endswith("; is it a corral server?")


def test_a_base_path_prefixes_every_request() -> None:
    with ScriptedServer(TOKENS) as srv, Client(srv.url + "/corral/", token=KEY) as client:
        client.tokens()
    assert srv.seen[0].path == "/corral/v1/tokens"


# --- TLS and proxies ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for corral.test and 127.0.0.1."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=corral.test"),
            *("-addext", "subjectAltName=DNS:corral.test,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def tls_server(cert: tuple[Path, Path], *answers: Answer) -> ScriptedServer:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    return ScriptedServer(*answers, tls=context)


def test_tls_trusts_ssl_cert_file(cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with tls_server(cert, TOKENS) as srv:
        with Client(srv.url, token=KEY) as client, pytest.raises(CorralClientError) as info:
            client.tokens()
        assert f"cannot trust the TLS certificate of the corral server at {srv.url}" in str(
            info.value
        )
        assert "set SSL_CERT_FILE" in str(info.value)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
        with Client(srv.url, token=KEY) as client:
            assert len(client.tokens()) == 1
            assert len(client.tokens()) == 1
    assert len({s.peer for s in srv.seen}) == 1
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[1].parent / "missing.pem"))
    with pytest.raises(CorralClientError, match=r"cannot use SSL_CERT_FILE .*missing\.pem"):
        Client(srv.url)


def test_plain_http_goes_through_the_proxy_in_absolute_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ScriptedServer(TOKENS) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("//", "//al%40ice:p%3Ass@"))
        with Client("http://corral.test:8765", token=KEY) as client:
            assert len(client.tokens()) == 1
    seen = proxy.seen[0]
    assert seen.path == "http://corral.test:8765/v1/tokens"
    assert seen.headers["host"] == "corral.test:8765"
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["proxy-authorization"] == "Basic " + base64.b64encode(
        b"al@ice:p:ss"
    ).decode("ascii")


def test_no_proxy_and_loopback_bypass_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    assert Client("https://corral.test", token=KEY)._proxy is not None
    assert Client("http://corral.test", token=KEY)._proxy is not None  # ALL_PROXY
    for loopback in ("http://127.0.0.1:1", "https://localhost:1", "http://[::1]:1"):
        assert Client(loopback, token=KEY)._proxy is None
    monkeypatch.setenv("NO_PROXY", "example.org,.test")
    assert Client("https://corral.test", token=KEY)._proxy is None
    assert Client("https://corral.example.com", token=KEY)._proxy is not None


def test_a_proxy_the_client_cannot_speak_to_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALL_PROXY", "socks5://user:secret@127.0.0.1:1080")
    with pytest.raises(CorralClientError) as info:
        Client("http://corral.test", token=KEY)
    message = str(info.value)
    assert "socks5://127.0.0.1:1080 from $ALL_PROXY" in message
    assert "http:// proxies only" in message and "NO_PROXY" in message
    assert "secret" not in message


class TunnelProxy:
    """An HTTP proxy that answers ``CONNECT`` by relaying to ``target_port`` on loopback
    (whatever host was asked for), or refuses with ``refuse``; records what it got."""

    def __init__(self, target_port: int, refuse: str | None = None) -> None:
        self.target_port = target_port
        self.refuse = refuse
        self.requests: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(conn,), daemon=True).start()

    def _tunnel(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(4096)
            if not data:
                conn.close()
                return
            head += data
        self.requests.append(head.decode("latin-1"))
        if self.refuse:
            conn.sendall(f"HTTP/1.1 {self.refuse}\r\nContent-Length: 0\r\n\r\n".encode())
            conn.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> TunnelProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()


@pytest.fixture
def trusted(cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    yield


@pytest.mark.usefixtures("trusted")
def test_https_goes_through_a_connect_tunnel(
    cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with tls_server(cert, TOKENS) as srv, TunnelProxy(srv.port) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("//", "//bob:pw@"))
        url = f"https://corral.test:{srv.port}"  # the certificate's name, checked
        with Client(url, token=KEY) as client:
            assert len(client.tokens()) == 1
            assert len(client.tokens()) == 1  # the tunnel is kept alive too
    assert len(proxy.requests) == 1
    connect = proxy.requests[0]
    assert connect.startswith(f"CONNECT corral.test:{srv.port} HTTP/")
    assert "Proxy-Authorization: Basic " + base64.b64encode(b"bob:pw").decode() in connect
    assert KEY not in connect  # the key goes inside the tunnel only
    assert srv.seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert srv.seen[0].headers["host"] == f"corral.test:{srv.port}"


@pytest.mark.usefixtures("trusted")
def test_a_proxy_refusing_the_tunnel_leaves_the_server_unreachable(
    cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with tls_server(cert, TOKENS) as srv, TunnelProxy(srv.port, refuse="403 Forbidden") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        url = f"https://corral.test:{srv.port}"
        with Client(url, token=KEY) as client, pytest.raises(ServerUnreachable) as info:
            client.tokens()
    message = str(info.value)
    assert f"cannot reach a corral server at {url}" in message
    assert "403 Forbidden" in message and f"through the proxy {proxy.url}" in message
    assert srv.seen == []
