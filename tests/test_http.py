"""``corral.http``, the client's HTTP/1.1 transport, against a real socket server that
answers with scripted bytes: framing (chunked with extensions and trailers,
Content-Length, to the end of the connection), keep-alive and ``Connection: close``,
a server closing an idle connection, bodies cut short, the header limits, interim 1xx
answers (corral never sends one; a proxy in between may), what goes on the wire, and
the errors ``corral.Client`` turns into messages."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import pytest

from corral import Client, CorralClientError
from corral.http import (
    MAX_HEADERS,
    MAX_LINE,
    BadStatusLine,
    CannotSendRequest,
    HTTPConnection,
    HTTPException,
    IncompleteRead,
    LineTooLong,
    ProtocolError,
    RemoteDisconnected,
)
from tests.scripted import KEY

Handler = Callable[[socket.socket, int], None]
"""Serves one connection (the server's socket, its index among the connections)."""


def read_request(sock: socket.socket) -> bytes:
    """One request, head and body (by its Content-Length); b"" when the client closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


class RawServer:
    """A loopback server that runs ``handler`` on each connection it accepts and
    records each request it reads through ``request``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            index, self.connections = self.connections, self.connections + 1
            threading.Thread(target=self._run, args=(conn, index), daemon=True).start()

    def _run(self, conn: socket.socket, index: int) -> None:
        with conn, contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.handler(conn, index)

    def request(self, sock: socket.socket) -> bytes:
        data = read_request(sock)
        if data:
            self.requests.append(data)
        return data

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()


def answering(*answers: bytes, then_close: bool = False) -> Callable[[RawServer], Handler]:
    """A handler that answers successive requests on one connection with ``answers``
    (the last one repeating), then closes if ``then_close``."""

    def make(server: RawServer) -> Handler:
        def handle(sock: socket.socket, index: int) -> None:
            for i in range(1000):
                if not server.request(sock):
                    return
                sock.sendall(answers[min(i, len(answers) - 1)])
                if then_close and i + 1 == len(answers):
                    return

        return handle

    return make


def serve(make: Callable[[RawServer], Handler]) -> RawServer:
    server = RawServer(lambda sock, index: None)
    server.handler = make(server)
    return server


def connect(server: RawServer, timeout: float = 5.0) -> HTTPConnection:
    return HTTPConnection("127.0.0.1", server.port, timeout=timeout)


def get(conn: HTTPConnection, path: str = "/") -> tuple[int, bytes]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# --- framing --------------------------------------------------------------------------


def test_a_chunked_body_with_extensions_and_trailers_keeps_the_connection() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b'6 ; quoted="a;b"\r\n world\r\n'
        b"0\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n"
    )
    with serve(answering(chunked, OK)) as srv:
        conn = connect(srv)
        conn.request("GET", "/logs")
        response = conn.getresponse()
        assert response.chunked and not response.isclosed()
        assert response.read() == b"hello world"
        assert response.isclosed() and response.read() == b""
        assert conn.sock is not None
        assert get(conn) == (200, b"ok")  # the same connection, after the trailers
        conn.close()
    assert srv.connections == 1 and len(srv.requests) == 2


def test_read1_gives_what_has_come_of_a_chunked_body() -> None:
    def make(server: RawServer) -> Handler:
        def handle(sock: socket.socket, index: int) -> None:
            server.request(sock)
            sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"a\r\n0123", b"456789\r\n", b"3\r\nabc\r\n", b"0\r\n\r\n"):
                time.sleep(0.05)
                sock.sendall(piece)
            server.request(sock)
            sock.sendall(OK)

        return handle

    with serve(make) as srv:
        conn = connect(srv)
        conn.request("GET", "/logs")
        response = conn.getresponse()
        pieces = []
        while piece := response.read1(4):
            assert len(piece) <= 4
            pieces.append(piece)
        assert b"".join(pieces) == b"0123456789abc"
        assert pieces[0] == b"0123"  # what had come, not waiting for the whole chunk
        assert response.isclosed()
        assert get(conn) == (200, b"ok")
    assert srv.connections == 1


def test_read_with_an_amount_stops_there_and_the_rest_follows() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"
    with serve(answering(answer, OK)) as srv:
        conn = connect(srv)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.read(4) == b"0123" and not response.isclosed()
        assert response.read(100) == b"456789" and response.isclosed()
        assert get(conn) == (200, b"ok")
    assert srv.connections == 1


def test_connection_close_http_1_0_and_a_coding_end_with_the_answer() -> None:
    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
    old = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold"
    with serve(answering(close, then_close=True)) as srv:
        conn = connect(srv)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.will_close and conn.sock is None  # the response has the socket
        assert response.read() == b"until the end" and response.isclosed()
        assert get(conn) == (200, b"until the end")  # connected again
    assert srv.connections == 2
    coded = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nraw bytes"
    with serve(answering(coded, then_close=True)) as srv:
        conn = connect(srv)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.will_close and response.read() == b"raw bytes"  # not 2: the coding wins
    with serve(answering(old, then_close=True)) as srv:
        conn = connect(srv)
        assert get(conn) == (200, b"old")
        assert conn.sock is None
        assert get(conn) == (200, b"old")
    assert srv.connections == 2


def test_bodyless_answers_and_repeated_or_folded_headers() -> None:
    answer = b"HTTP/1.1 204 No Content\r\nX-A: 1\r\nx-a: 2\r\nX-Folded: one\r\n \t two\r\n\r\n"
    with serve(answering(answer, OK)) as srv:
        conn = connect(srv)
        conn.request("DELETE", "/x")
        response = conn.getresponse()
        assert response.status == 204 and response.reason == "No Content"
        assert response.isclosed() and response.read() == b""
        assert response.getheader("X-A") == "1, 2"
        assert response.getheader("x-folded") == "one two"
        assert response.getheader("missing", "-") == "-"
        assert ("X-A", "1") in response.getheaders()
        assert get(conn) == (200, b"ok")
    assert srv.connections == 1


def test_interim_answers_are_skipped() -> None:
    """corral never sends a 1xx answer; a proxy in between may (103 Early Hints)."""
    interim = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nmade"
    )
    with serve(answering(interim)) as srv:
        response_status, body = get(connect(srv))
    assert (response_status, body) == (201, b"made")
    switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"
    with serve(answering(switching)) as srv, pytest.raises(ProtocolError, match="101"):
        get(connect(srv))


# --- what goes on the wire ------------------------------------------------------------


def test_requests_on_the_wire() -> None:
    with serve(answering(OK)) as srv:
        conn = connect(srv)
        conn.request("POST", "/v1/workloads", b'{"a": 1}', {"Authorization": "Bearer k"})
        conn.getresponse().read()
        conn.request("POST", "/v1/empty")  # a POST says it has no body
        conn.getresponse().read()
        conn.request("GET", "http://corral.test:8765/v1/tokens?x=1", None, {"X-A": "b"})
        conn.getresponse().read()
        conn.request("GET", "/", headers={"Host": "mine"})
        conn.getresponse().read()
    post, empty, absolute, own_host = srv.requests
    assert post == (
        b"POST /v1/workloads HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{srv.port}\r\n".encode()
        + b"Accept-Encoding: identity\r\nContent-Length: 8\r\n"
        + b'Authorization: Bearer k\r\n\r\n{"a": 1}'
    )
    assert b"\r\nContent-Length: 0\r\n" in empty
    assert absolute.startswith(b"GET http://corral.test:8765/v1/tokens?x=1 HTTP/1.1\r\n")
    assert b"\r\nHost: corral.test:8765\r\n" in absolute
    assert b"Content-Length" not in absolute
    assert own_host.count(b"Host:") == 1 and b"\r\nHost: mine\r\n" in own_host


def test_header_values_with_line_breaks_are_refused_and_nothing_is_sent() -> None:
    with serve(answering(OK)) as srv:
        conn = connect(srv)
        for value in ("k\r\nX-Injected: 1", "k\nx", "k\rx", "k\x00x"):
            with pytest.raises(
                ValueError, match="invalid value for the header Idempotency-Key"
            ) as info:
                conn.request("POST", "/", b"{}", {"Idempotency-Key": value})
            assert value not in str(info.value)  # a value may be a secret: never shown
        with pytest.raises(ValueError, match="invalid header name"):
            conn.request("GET", "/", None, {"Bad Name": "x"})
        with pytest.raises(ValueError, match="invalid request target"):
            conn.request("GET", "/a b\r\nX: y")
        conn.request("GET", "/", None, {"X-Tab": "a\tb"})  # a tab is a legal value
        assert conn.getresponse().read() == b"ok"
    assert len(srv.requests) == 1


def test_a_request_before_the_answer_was_read_is_refused() -> None:
    with serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")) as srv:
        conn = connect(srv)
        conn.request("GET", "/")
        with pytest.raises(CannotSendRequest):
            conn.request("GET", "/")
        response = conn.getresponse()
        with pytest.raises(CannotSendRequest):
            conn.request("GET", "/")
        response.close()  # before the end of its body: the connection closes
        assert conn.sock is None
        assert get(conn) == (200, b"hello")
    assert srv.connections == 2


# --- broken answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "received", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234", 5, 10),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n9\r\nwor", 8, None),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", 5, None),
    ],
)
def test_a_body_cut_short_is_an_incomplete_read(
    answer: bytes, received: int, expected: int | None
) -> None:
    with serve(answering(answer, then_close=True)) as srv:
        conn = connect(srv)
        conn.request("GET", "/")
        response = conn.getresponse()
        with pytest.raises(IncompleteRead) as info:
            response.read()
    assert (info.value.received, info.value.expected) == (received, expected)
    assert str(info.value).startswith("the answer was cut short: ")
    assert response.isclosed() and conn.sock is None


def test_a_body_cut_short_is_a_lost_connection_for_the_client() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{}"
    with (
        serve(answering(cut, then_close=True)) as srv,
        Client(srv.url, token=KEY) as client,
        pytest.raises(CorralClientError) as info,
    ):
        client.get("w1")
    assert str(info.value) == (
        f"lost the connection to the corral server at {srv.url}:"
        " the answer was cut short: 2 of its 10 bytes came"
    )


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (b"HTTP/1.1 200 " + b"x" * MAX_LINE + b"\r\n\r\n", LineTooLong, "status line is longer"),
        (
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * MAX_LINE + b"\r\n\r\n",
            LineTooLong,
            "header line is longer than 65536 bytes",
        ),
        (
            b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n",
            ProtocolError,
            "more than 100 header lines",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"1" * (MAX_LINE + 1)
            + b"\r\n",
            LineTooLong,
            "chunk size line is longer",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            ProtocolError,
            "chunk size",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd", ProtocolError, "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", ProtocolError, "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", ProtocolError, "malformed header line"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", BadStatusLine, "not an HTTP/1.x status line"),
        (b"HTTP/2 200\r\n\r\n", BadStatusLine, "not an HTTP/1.x status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", BadStatusLine, "not an HTTP/1.x status line"),
    ],
)
def test_malformed_answers_are_refused(
    answer: bytes, error: type[HTTPException], message: str
) -> None:
    with serve(answering(answer, then_close=True)) as srv:
        conn = connect(srv)
        conn.request("GET", "/")
        with pytest.raises(error, match=message):
            conn.getresponse().read()
        assert conn.sock is None


def test_a_hundred_headers_are_accepted() -> None:
    answer = b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * (MAX_HEADERS - 1)
    answer += b"Content-Length: 2\r\n\r\nok"
    with serve(answering(answer)) as srv:
        assert get(connect(srv)) == (200, b"ok")


def test_an_oversized_header_is_a_malformed_answer_for_the_client() -> None:
    big = (
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * (MAX_LINE + 10) + b"\r\nContent-Length: 2\r\n\r\n{}"
    )
    with (
        serve(answering(big)) as srv,
        Client(srv.url, token=KEY) as client,
        pytest.raises(CorralClientError) as info,
    ):
        client.get("w1")
    assert str(info.value) == (
        f"a malformed answer from {srv.url} (the answer's header line is longer than"
        " 65536 bytes); is it a corral server?"
    )


# --- idle connections, timeouts -------------------------------------------------------


def test_a_server_closing_an_idle_connection_is_seen_before_reuse() -> None:
    with serve(answering(OK, then_close=True)) as srv:
        conn = connect(srv)
        assert get(conn) == (200, b"ok")
        assert conn.sock is not None  # kept alive, as far as the answer said
        deadline = time.monotonic() + 5
        while not conn.dropped() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert conn.dropped()
        # Sent anyway, it finds the connection closed (an end of file, or a reset):
        # a ConnectionError, which the client takes for a dropped connection.
        with pytest.raises(ConnectionError):
            conn.request("GET", "/")
            conn.getresponse()
    assert conn.sock is None


def test_a_server_hanging_up_without_answering_is_remote_disconnected() -> None:
    def make(server: RawServer) -> Handler:
        def handle(sock: socket.socket, index: int) -> None:
            server.request(sock)  # read, then closed without an answer

        return handle

    with serve(make) as srv:
        conn = connect(srv)
        conn.request("GET", "/")
        with pytest.raises(RemoteDisconnected, match="closed the connection without answering"):
            conn.getresponse()
        assert conn.sock is None


def test_an_answer_sent_unasked_for_marks_the_connection_dropped() -> None:
    def make(server: RawServer) -> Handler:
        def handle(sock: socket.socket, index: int) -> None:
            server.request(sock)
            sock.sendall(OK + b"HTTP/1.1 200 OK\r\n")  # and the start of another
            time.sleep(1)

        return handle

    with serve(make) as srv:
        conn = connect(srv)
        assert get(conn) == (200, b"ok")
        assert conn.dropped()
        assert not connect(srv).dropped()  # not connected: nothing to drop


def test_a_silent_server_times_out() -> None:
    def make(server: RawServer) -> Handler:
        def handle(sock: socket.socket, index: int) -> None:
            server.request(sock)
            time.sleep(2)

        return handle

    with serve(make) as srv:
        conn = connect(srv, timeout=0.2)
        conn.request("GET", "/")
        with pytest.raises(TimeoutError):
            conn.getresponse()
        assert conn.sock is None
