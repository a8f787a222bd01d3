"""A small HTTP/1.1 client transport: the part of ``http.client`` that
``corral.client`` uses, without its cost.

``http.client`` parses headers with the ``email`` package, whose import alone took
~14 ms of the 47 ms that ``import corral.cli`` did, and imports ``ssl`` even for plain
HTTP. This module needs ``socket`` only; ``ssl`` is imported when a TLS connection is
opened. The names and behaviour follow ``http.client`` where ``corral.client`` relies
on them:

- ``HTTPConnection(host, port, timeout)``, ``HTTPSConnection(…, context=)``;
  ``set_tunnel(host, port, headers)`` for a ``CONNECT`` proxy (its 2xx answer opens the
  tunnel, anything else raises ``OSError("the proxy refused the tunnel: 403 …")``);
  ``connect()``, ``close()``, ``.sock`` (None until connected, and again once closed);
  ``request(method, target, body, headers)`` sends a request in one write, adding
  ``Host`` (from the target itself in absolute form, for a proxy), ``Accept-Encoding:
  identity`` and ``Content-Length``; a header name that is not a token, or a value with
  a line break or another control character, is a ``ValueError`` that never shows the
  value (it may be a key); ``getresponse()`` → ``HTTPResponse``.
- ``HTTPResponse``: ``status``, ``reason``, ``version``, ``getheader(name,
  default)`` (repeated headers joined by ``", "``), ``getheaders()``, ``read(amt)``,
  ``read1(n)`` (what has come, at most ``n`` bytes; b"" at the end), ``isclosed()``
  (True once the body was read whole, or the response closed), ``close()``.
- A body is framed by ``Transfer-Encoding: chunked`` (chunk extensions ignored,
  trailers read and dropped), else ``Content-Length``, else the end of the connection
  (RFC 9112 §6.3); 204 and 304 answers have none. ``Connection: close`` (or an
  HTTP/1.0 answer without ``keep-alive``) hands the socket to the response, which
  closes it once read, and leaves the connection unconnected (``sock`` None) for the
  next request; otherwise the connection is kept for the next request once the body
  has been read whole. A response closed before that closes its connection.
- Interim answers (1xx) are skipped (corral never sends one; a proxy may); a 101
  (switching protocols, never asked for) is refused.
- Limits as ``http.client``'s: a status, header or chunk-size line over 64 KiB, or
  more than 100 header lines, are refused.
- ``HTTPConnection.dropped()``: an idle kept-alive connection that cannot be reused
  (the server closed it, or sent something unasked for).

Errors: the socket's own (``OSError``: ``TimeoutError`` for the socket's timeout,
``ConnectionError`` when the peer resets), and::

    HTTPException              an answer that is not HTTP/1.x as expected
    ├── BadStatusLine          not an HTTP/1.x status line
    │   └── RemoteDisconnected (also a ConnectionResetError) the connection closed
    │                          before an answer began: a dropped kept-alive connection
    ├── ProtocolError          malformed headers, framing, too many headers
    │   └── LineTooLong        a line over 64 KiB
    ├── IncompleteRead         the connection closed within the body
    └── CannotSendRequest      a request before the previous answer was read whole

Not supported (corral needs none of it): pipelining, ``Expect: 100-continue``,
compressed bodies, TLS to the proxy itself, SOCKS.
"""

from __future__ import annotations

import select
import socket

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing costs milliseconds
if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping

MAX_LINE = 65536
"""The longest status, header or chunk-size line accepted, with its line break."""
MAX_HEADERS = 100
"""The most header lines (or trailer lines) accepted in one answer."""
RECV_BYTES = 65536
MAX_INTERIM = 100
"""The most interim (1xx) answers skipped before a final one."""

HTTP_PORT = 80
HTTPS_PORT = 443

# Checked with str methods, not regular expressions: compiling those would cost each
# CLI call half a millisecond.
_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_BODYLESS = frozenset({204, 304})
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


# --- errors ---------------------------------------------------------------------------


class HTTPException(Exception):
    """An answer that is not HTTP/1.x as this client reads it."""


class BadStatusLine(HTTPException):
    """The answer does not begin with an HTTP/1.x status line."""


class RemoteDisconnected(ConnectionResetError, BadStatusLine):
    """The server closed the connection before its answer began (as a server closing
    an idle kept-alive connection does)."""


class ProtocolError(HTTPException):
    """A malformed header, ``Content-Length``, chunk or framing; too many headers."""


class LineTooLong(ProtocolError):
    """A status, header or chunk-size line over ``MAX_LINE`` bytes."""


class IncompleteRead(HTTPException):
    """The connection closed before the whole body came."""

    def __init__(self, received: int, expected: int | None = None) -> None:
        self.received = received
        self.expected = expected
        if expected is None:
            what = f"the connection closed {received} bytes into its chunked body"
        else:
            what = f"{received} of its {expected} bytes came"
        super().__init__(f"the answer was cut short: {what}")


class CannotSendRequest(HTTPException):
    """A request on a connection whose previous answer was not read whole."""


# --- reading --------------------------------------------------------------------------


class _Reader:
    """Buffered reads from a socket (what ``http.client`` gets from ``makefile``,
    with the buffer visible: bytes left in it are something the server sent unasked)."""

    __slots__ = ("buf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(RECV_BYTES)
        self.buf += data
        return bool(data)

    def readline(self, what: str) -> bytes:
        """One line with its line break; at the end of the connection, what came of
        it (b"": nothing). Over ``MAX_LINE`` bytes: ``LineTooLong``."""
        start = 0
        while True:
            end = self.buf.find(b"\n", start)
            if end >= 0:
                end += 1
                break
            start = end = len(self.buf)
            if start > MAX_LINE:
                break
            if not self._fill():
                end = len(self.buf)
                break
        if end > MAX_LINE:
            raise LineTooLong(f"the answer's {what} is longer than {MAX_LINE} bytes")
        line = bytes(self.buf[:end])
        del self.buf[:end]
        return line

    def read1(self, n: int) -> bytes:
        """At most ``n`` bytes: what is buffered, else one ``recv`` (b"": the end)."""
        if not self.buf:
            return self.sock.recv(min(n, RECV_BYTES))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read(self, n: int) -> bytes:
        """``n`` bytes, or fewer at the end of the connection."""
        parts = []
        while n > 0:
            data = self.read1(n)
            if not data:
                break
            parts.append(data)
            n -= len(data)
        return b"".join(parts)

    def read_all(self) -> bytes:
        """Everything until the end of the connection."""
        parts = [bytes(self.buf)]
        self.buf.clear()
        while data := self.sock.recv(RECV_BYTES):
            parts.append(data)
        return b"".join(parts)


def _read_headers(reader: _Reader, what: str) -> list[tuple[str, str]]:
    """Header lines up to the empty line; obsolete folded lines are joined."""
    headers: list[tuple[str, str]] = []
    count = 0
    while True:
        line = reader.readline(f"{what} line")
        if line in (b"\r\n", b"\n"):
            return headers
        if not line.endswith(b"\n"):
            raise RemoteDisconnected(f"the server closed the connection within its {what}")
        count += 1
        if count > MAX_HEADERS:
            raise ProtocolError(f"the answer has more than {MAX_HEADERS} {what} lines")
        text = line.decode("iso-8859-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and headers:  # obs-fold: continues the previous line
            name, value = headers[-1]
            headers[-1] = (name, (value + " " + text.strip(" \t")).strip(" "))
            continue
        name, colon, value = text.partition(":")
        if not colon or not _is_token(name):
            raise ProtocolError(f"a malformed {what} line in the answer: {_shown(line)}")
        headers.append((name, value.strip(" \t")))


def _shown(data: bytes) -> str:
    text = repr(data[:80])
    return text + "…" if len(data) > 80 else text


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in value.split(",")} if value else set()


class HTTPResponse:
    """An answer; ``getresponse`` has read its status line and headers."""

    def __init__(self, reader: _Reader, method: str, conn: HTTPConnection | None) -> None:
        self._reader = reader
        self._method = method
        self._conn = conn
        """The connection to hand back once the body is read; None when this response
        owns the socket (``Connection: close``) and closes it at the end."""
        self.status = 0
        self.reason = ""
        self.version = 11
        self.headers: list[tuple[str, str]] = []
        self.length: int | None = None
        """Bytes of the body still to come, when framed by ``Content-Length``."""
        self.chunked = False
        self.will_close = False
        self._chunk_left = 0
        self._chunk_crlf = False
        self._received = 0
        """Bytes of the body read so far."""
        self._closed = False

    # --- the head ---

    def begin(self) -> None:
        for _ in range(MAX_INTERIM):
            self._read_status()
            self.headers = _read_headers(self._reader, "header")
            if not 100 <= self.status < 200:
                break
            if self.status == 101:
                raise ProtocolError("the server switched protocols, unasked (101)")
        else:
            raise ProtocolError(f"more than {MAX_INTERIM} interim (1xx) answers")
        self._framing()

    def _read_status(self) -> None:
        line = self._reader.readline("status line")
        if not line:
            raise RemoteDisconnected("the server closed the connection without answering")
        version, _, rest = line.decode("iso-8859-1").rstrip("\r\n").partition(" ")
        code, _, reason = rest.partition(" ")
        if version == "HTTP/1.0":
            self.version = 10
        elif version.startswith("HTTP/1.") and version[7:].isdigit():
            self.version = 11
        else:
            raise BadStatusLine(f"not an HTTP/1.x status line: {_shown(line)}")
        if not (len(code) == 3 and code.isdigit() and code[0] != "0"):
            raise BadStatusLine(f"not an HTTP/1.x status line: {_shown(line)}")
        self.status = int(code)
        self.reason = reason.strip()

    def _framing(self) -> None:
        """How the body ends (RFC 9112 §6.3) and whether the connection does."""
        connection = _tokens(self.getheader("Connection"))
        self.will_close = "close" in connection or (
            self.version == 10 and "keep-alive" not in connection
        )
        codings = self.getheader("Transfer-Encoding")
        if self.status in _BODYLESS or self._method == "HEAD":
            self.length = 0
        elif codings is not None:
            self.chunked = codings.split(",")[-1].strip().lower() == "chunked"
            if not self.chunked:
                self.will_close = True  # another coding last: the body ends with the connection
        elif (length := self.getheader("Content-Length")) is not None:
            values = {v.strip() for v in length.split(",")}
            value = values.pop()
            if values or not value.isdigit() or not value.isascii():
                raise ProtocolError(f"an invalid Content-Length in the answer: {length[:80]!r}")
            self.length = int(value)
        else:
            self.will_close = True

    def getheader(self, name: str, default: str | None = None) -> str | None:
        """The header's value (repeated ones joined by ", "), else ``default``."""
        name = name.lower()
        values = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(values) if values else default

    def getheaders(self) -> list[tuple[str, str]]:
        return list(self.headers)

    # --- the body ---

    def isclosed(self) -> bool:
        """True once the body was read whole (or the response closed)."""
        return self._closed

    def close(self) -> None:
        """Done with it; before the end of its body, that closes the connection."""
        if not self._closed:
            self._abort()

    def _finish(self) -> None:
        self._closed = True
        if self._conn is None:
            self._reader.sock.close()
        else:
            self._conn._response = None

    def _abort(self) -> None:
        self._closed = True
        if self._conn is None:
            self._reader.sock.close()
        else:
            self._conn.close()

    def read(self, amt: int | None = None) -> bytes:
        """The rest of the body, or at most ``amt`` bytes of it (fewer only at its
        end)."""
        if self._closed or amt == 0:
            return b""
        if amt is None and not self.chunked:
            try:
                if self.length is None:
                    data = self._reader.read_all()
                else:
                    data = self._reader.read(self.length)
                    self._received += len(data)
                    if len(data) < self.length:
                        raise IncompleteRead(
                            self._received, self._received - len(data) + self.length
                        )
                    self.length = 0
            except BaseException:
                self._abort()
                raise
            self._finish()
            return data
        parts = []
        left = amt
        while left is None or left > 0:
            data = self.read1(RECV_BYTES if left is None else left)
            if not data:
                break
            parts.append(data)
            if left is not None:
                left -= len(data)
        return b"".join(parts)

    def read1(self, n: int = RECV_BYTES) -> bytes:
        """What has come of the body, at most ``n`` bytes, waiting only when nothing
        has; b"" at its end."""
        if self._closed or n <= 0:
            return b""
        try:
            if self.chunked:
                if not self._chunk_left and not self._next_chunk():
                    self._finish()
                    return b""
                data = self._reader.read1(min(n, self._chunk_left))
                if not data:
                    raise IncompleteRead(self._received)
                self._chunk_left -= len(data)
                self._received += len(data)
                return data
            if self.length is None:
                data = self._reader.read1(n)
                if not data:
                    self._finish()
                return data
            if self.length == 0:
                self._finish()
                return b""
            data = self._reader.read1(min(n, self.length))
            if not data:
                raise IncompleteRead(self._received, self._received + self.length)
            self.length -= len(data)
            self._received += len(data)
        except BaseException:
            self._abort()
            raise
        if self.length == 0:
            self._finish()
        return data

    def _next_chunk(self) -> bool:
        """Read up to the next chunk's data; False after the last chunk (its trailers
        read and dropped)."""
        if self._chunk_crlf:
            line = self._reader.readline("chunk")
            if line not in (b"\r\n", b"\n"):
                if not line:
                    raise IncompleteRead(self._received)
                raise ProtocolError(f"a chunk not ended by a line break: {_shown(line)}")
        line = self._reader.readline("chunk size line")
        if not line.endswith(b"\n"):
            raise IncompleteRead(self._received)
        size = line.split(b";", 1)[0].strip(b" \t\r\n")
        if not size or len(size) > 16 or size.strip(_HEX_DIGITS):
            raise ProtocolError(f"a malformed chunk size in the answer: {_shown(line)}")
        self._chunk_left = int(size, 16)
        self._chunk_crlf = True
        if self._chunk_left:
            return True
        _read_headers(self._reader, "trailer")
        return False


# --- connections ----------------------------------------------------------------------


def _authority(host: str, port: int, default_port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default_port else f"{shown}:{port}"


class HTTPConnection:
    """One HTTP/1.1 connection, opened by ``connect`` (or the first ``request``),
    kept for the next request while the server keeps it. Not thread-safe."""

    default_port = HTTP_PORT

    def __init__(self, host: str, port: int | None = None, timeout: float | None = None) -> None:
        self.host = host
        self.port = port or self.default_port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._reader: _Reader | None = None
        self._response: HTTPResponse | None = None
        self._method: str | None = None
        """The request sent and not yet answered."""
        self._tunnel_host: str | None = None
        self._tunnel_port = 0
        self._tunnel_headers: dict[str, str] = {}

    def set_tunnel(
        self, host: str, port: int | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        """Reach ``host:port`` through a ``CONNECT`` tunnel of the proxy this
        connection connects to, sending it ``headers`` (``Proxy-Authorization``)."""
        if self.sock is not None:
            raise RuntimeError("set_tunnel after the connection was opened")
        self._tunnel_host = host
        self._tunnel_port = port or self.default_port
        self._tunnel_headers = dict(headers or {})

    def connect(self) -> None:
        """Open the connection (and the tunnel, and TLS); raises the socket's errors
        (``TimeoutError`` after ``timeout``), ``ssl``'s, or ``OSError`` for a tunnel the
        proxy refused."""
        # An ASCII host goes to getaddrinfo as bytes: as a str, it is encoded with the
        # "idna" codec, whose import (unicodedata, stringprep) costs a CLI call 1 ms.
        host = self.host.encode("ascii") if self.host.isascii() else self.host
        sock = socket.create_connection((host, self.port), self.timeout)  # type: ignore[arg-type]
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tunnel_host is not None:
                self._tunnel(sock, self._tunnel_host, self._tunnel_port)
            sock = self._wrap(sock)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._reader = _Reader(sock)

    def _wrap(self, sock: socket.socket) -> socket.socket:
        """The socket requests go on (TLS, for ``HTTPSConnection``)."""
        return sock

    def _tunnel(self, sock: socket.socket, host: str, port: int) -> None:
        authority = _authority(host, port, -1)
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        lines += [_header_line(k, v) for k, v in self._tunnel_headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        reader = _Reader(sock)
        answer = HTTPResponse(reader, "CONNECT", None)
        answer._read_status()
        _read_headers(reader, "header")
        if not 200 <= answer.status < 300:
            raise OSError(f"the proxy refused the tunnel: {answer.status} {answer.reason}")
        if reader.buf:
            raise ProtocolError("the proxy sent data before the tunnel was used")

    def close(self) -> None:
        """Close the socket (a response reading from it ends too); the next request
        connects again."""
        sock, self.sock = self.sock, None
        self._reader = self._response = self._method = None
        if sock is not None:
            sock.close()

    def settimeout(self, timeout: float | None) -> None:
        """The timeout of each wait on the open connection from now on (None: none);
        ``timeout`` stays that of connecting."""
        if self.sock is not None:
            self.sock.settimeout(timeout)

    def dropped(self) -> bool:
        """True when this idle, connected connection cannot be reused: the server
        closed it (its socket reads as ready: end of file) or sent something unasked
        for."""
        sock = self.sock
        if sock is None:
            return False
        if self._reader is not None and self._reader.buf:
            return True
        pending = getattr(sock, "pending", None)  # TLS: bytes decrypted, not yet read
        if pending is not None and pending():
            return True
        try:
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                return bool(poller.poll(0))
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send a request (in one write); ``url`` is the target: a path, or an
        absolute URL for a proxy."""
        if self._response is not None or self._method is not None:
            raise CannotSendRequest("the previous request's answer was not read whole")
        if not _is_token(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        if not url or not url.isascii() or not url.isprintable() or " " in url:
            raise ValueError(
                f"invalid request target {url[:200]!r}:"
                " not ASCII, or a space or control character in it"
            )
        headers = dict(headers or {})
        names = {k.lower() for k in headers}
        lines = [f"{method} {url} HTTP/1.1"]
        if "host" not in names:
            lines.append("Host: " + self._host_header(url))
        if "accept-encoding" not in names:
            lines.append("Accept-Encoding: identity")
        if "content-length" not in names and (body is not None or method in _WITH_BODY):
            lines.append(f"Content-Length: {len(body or b'')}")
        lines += [_header_line(k, v) for k, v in headers.items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        try:
            self.sock.sendall(data)
        except BaseException:
            self.close()
            raise
        self._method = method

    def _host_header(self, url: str) -> str:
        if not url.startswith("/") and "://" in url:  # absolute form: its authority
            rest = url.partition("://")[2]
            end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
            host = rest[:end].rpartition("@")[2]
        elif self._tunnel_host is not None:
            host = _authority(self._tunnel_host, self._tunnel_port, self.default_port)
        else:
            host = _authority(self.host, self.port, self.default_port)
        try:
            host.encode("ascii")
        except UnicodeEncodeError:
            host = host.encode("idna").decode("ascii")
        return host

    def getresponse(self) -> HTTPResponse:
        """The answer to the request sent; its body is read from the response."""
        method, reader = self._method, self._reader
        if method is None or reader is None:
            raise CannotSendRequest("no request was sent to answer")
        response = HTTPResponse(reader, method, self)
        try:
            response.begin()
        except BaseException:
            self.close()
            raise
        self._method = None
        if response.will_close:  # the socket is the response's now; the next request reconnects
            response._conn = None
            self.sock = self._reader = None
        else:
            self._response = response
        if response.length == 0:
            response._finish()
        return response


class HTTPSConnection(HTTPConnection):
    """``HTTPConnection`` over TLS, checked by ``context`` (default: the system's CAs);
    ``ssl`` is imported by the first such connection made."""

    default_port = HTTPS_PORT

    def __init__(
        self,
        host: str,
        port: int | None = None,
        timeout: float | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(host, port, timeout)
        self._context = context

    def _wrap(self, sock: socket.socket) -> socket.socket:
        if self._context is None:
            import ssl

            self._context = ssl.create_default_context()
        server_hostname = self._tunnel_host or self.host
        return self._context.wrap_socket(sock, server_hostname=server_hostname)


def _is_token(text: str) -> bool:
    return bool(text) and _TCHARS.issuperset(text)


def _header_line(name: str, value: str) -> str:
    """``Name: value``; a name that is not a token or a value with a line break or
    another control character is a ``ValueError`` that does not show the value."""
    if not _is_token(name):
        raise ValueError(f"invalid header name {name[:100]!r}")
    value = str(value)
    if not value.isprintable() and any((c < " " and c != "\t") or c == "\x7f" for c in value):
        raise ValueError(f"invalid value for the header {name}: a line break or control character")
    return f"{name}: {value}"
