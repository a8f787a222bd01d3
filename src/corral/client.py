"""``corral.Client``: a synchronous Python client for the corral HTTP API (``/v1``).

::

    from corral import Client

    with Client() as corral:                      # $CORRAL_URL, else http://127.0.0.1:8765
        workload = corral.submit(["python", "train.py"], gpus=1, labels={"team": "ml"})
        done = corral.wait(workload.id)
        print(done.status, done.exit_code, corral.logs(done.id, tail=20))

Standard library only (``corral.http``, a small HTTP/1.1 transport over ``socket``;
``ssl`` for an ``https`` URL only; ``json``): importing it loads none of the server's
dependencies, nor ``http.client`` and the ``email`` package it parses headers with, so
a command line built on it starts quickly.

The API key (sent as ``Authorization: Bearer KEY``) is the first of: the ``token=``
argument, ``$CORRAL_TOKEN``, the file named by ``$CORRAL_TOKEN_FILE``,
``$CORRAL_DATA_DIR/token``, the default data dir's ``token`` (where ``corral serve``
writes its admin key on first start). ``Client.token_source`` says which it was.

Results are ``corral.wire`` dataclasses (``Workload``, ``Event``, ``Page``, …). Every
failure is raised as one of these errors, each with a message fit to show a user as is::

    CorralClientError               root: anything the client could not do (also: an
    │                               answer that is not what a corral server sends)
    ├── ServerUnreachable           no connection (refused, unknown host, connect timeout,
    │                               TLS handshake, a proxy refusing the tunnel)
    ├── WaitTimeout                 wait(timeout=…) ran out; .workload is the last seen
    └── APIError                    the server answered with an error (.status, .problem, .detail)
        ├── Unauthorized            401: no key, or an unknown or revoked one (.token_source)
        ├── Forbidden               403: the key may not do this (an admin's job) (.token_source)
        ├── NotFound                404: no such workload or token
        ├── InvalidTransition       409: the state machine forbids it (.current_status,
        │                                .requested_status, .allowed)
        ├── InvalidInput            422 (invalid body, filter, reused idempotency key), 413,
        │                           409 unix-user-conflict
        ├── RateLimited             429 still, after retrying for ``retry_for`` seconds
        └── ServerError             5xx: 500 internal, 503 busy (after retrying),
                                    507 storage-full (the server's disk is full)

429 and 503 ``busy`` answers are retried transparently (see ``Client``), so ``RateLimited``
and a 503 ``busy`` ``ServerError`` mean the server stayed that way for ``retry_for``
seconds; a 503 ``log-unavailable`` is raised at once.

Transport: a small pool of keep-alive connections (one per thread that is using one
at the moment; idle ones are kept and reused). An idle connection the server has
closed is noticed before it is reused (it reads as ready: end of file); if one still
drops under a request that is safe to send again (GET, PUT, DELETE, or a POST with an
``Idempotency-Key``), the request is sent once more on a new connection.

Proxies: a loopback server is always reached directly. Any other goes through the
proxy ``urllib.request.getproxies()`` names for its scheme (``$HTTP_PROXY``,
``$HTTPS_PROXY``, else ``$ALL_PROXY``) unless ``urllib.request.proxy_bypass`` (``$NO_PROXY``)
exempts it: plain HTTP in absolute form, HTTPS through a ``CONNECT`` tunnel, with
``Proxy-Authorization: Basic`` from the proxy URL's user and password. Only
``http://`` proxies are supported (not SOCKS, not TLS to the proxy); any other is
refused with a message naming the variable to change.

TLS: the system's CA store, or ``$SSL_CERT_FILE`` (and ``$SSL_CERT_DIR``) when set.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import sys
import time
from _thread import allocate_lock  # ``threading.Lock`` itself, without importing threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import quote, unquote, urlencode, urlsplit

from corral import __version__
from corral.defaults import DEFAULT_PORT, DEFAULT_URL, default_data_dir_name, is_loopback
from corral.http import (
    BadStatusLine,
    HTTPConnection,
    HTTPException,
    HTTPResponse,
    HTTPSConnection,
    IncompleteRead,
)
from corral.keys import KEY_FILE_NAME
from corral.keys import KEY_RE as KEY_RE
from corral.wire import (
    TERMINAL,
    Capacity,
    Event,
    KillResult,
    NewToken,
    NotKilled,
    Page,
    QueueEntry,
    Resources,
    ServerStatus,
    Status,
    Token,
    TransitionEvent,
    WireError,
    Workload,
)

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing costs milliseconds
if TYPE_CHECKING:
    import ssl
    from typing import Any, TypeVar

    T = TypeVar("T")

PROBLEM_TYPE_PREFIX = "urn:corral:problem:"
WAIT_MIN_DELAY = 0.05
WAIT_MAX_DELAY = 1.0
LIST_PAGE_MAX = 1000
RETRY_FOR = 30.0
"""How long, in all (from the first try, the server's time to answer included), the
client keeps retrying a 429 or 503 before raising."""
RETRY_MIN_DELAY = 0.25
RETRY_MAX_DELAY = 5.0
WATCH_IDLE_TIMEOUT = 45.0
"""``watch``: seconds without a byte from the server (which sends a keep-alive every
15 s) after which the connection is taken for lost and opened again."""
TOKEN_ENV = "CORRAL_TOKEN"
TOKEN_FILE_ENV = "CORRAL_TOKEN_FILE"
DATA_DIR_ENV = "CORRAL_DATA_DIR"
KEY_FILE_MAX_BYTES = 4096
LOG_CHUNK_BYTES = 64 * 1024
"""At most this much of a log per chunk of ``stream_logs`` (less when less has come)."""
ERROR_BODY_MAX_BYTES = 1 << 20
"""An error answer's body is read up to this; a longer one is cut (and its connection
closed)."""
IDLE_CONNECTIONS_MAX = 8

__all__ = [
    "APIError",
    "Capacity",
    "Client",
    "CorralClientError",
    "Event",
    "Forbidden",
    "InvalidInput",
    "InvalidTransition",
    "KillResult",
    "NewToken",
    "NotFound",
    "NotKilled",
    "Page",
    "QueueEntry",
    "RateLimited",
    "Resources",
    "ServerError",
    "ServerStatus",
    "ServerUnreachable",
    "Status",
    "Token",
    "Unauthorized",
    "WaitTimeout",
    "Workload",
]


# --- errors -------------------------------------------------------------------------


class CorralClientError(Exception):
    """Root of the client's errors; ``str(exc)`` is a message for the user."""


def _serve_hint(url: str) -> str:
    try:
        port = urlsplit(url).port
    except ValueError:
        port = None
    return "corral serve" + (f" --port {port}" if port and port != DEFAULT_PORT else "")


class ServerUnreachable(CorralClientError):
    """No connection to the server (refused, unknown host, timed out connecting)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(
            f"cannot reach a corral server at {url} ({reason}); start one with: {_serve_hint(url)}"
        )


class WaitTimeout(CorralClientError):
    """``Client.wait`` gave up before the workload reached a terminal status."""

    def __init__(self, workload: Workload, timeout: float) -> None:
        self.workload = workload
        self.timeout = timeout
        super().__init__(
            f"workload {workload.id} is still {workload.status} after waiting {timeout:g} s"
        )


class APIError(CorralClientError):
    """The server answered with an error status; ``problem`` is its RFC 9457 body."""

    def __init__(
        self,
        status: int,
        problem: dict[str, Any],
        detail: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.problem = problem
        self.detail = detail
        self.retry_after = retry_after
        """The server's ``Retry-After``, in seconds, when it sent one."""
        super().__init__(self._message())

    def _message(self) -> str:
        return self.detail

    @property
    def slug(self) -> str | None:
        """The problem type without its ``urn:corral:problem:`` prefix."""
        return _slug(self.problem)


class Unauthorized(APIError):
    """401: the server needs a key and got none, or one it does not know (or revoked).

    The message says which key was sent and from where (``token_source``), or that
    none was found and where ``corral serve`` writes its admin key."""

    token_source: str | None = None
    looked_in: tuple[str, ...] = ()
    url: str | None = None

    def explain(self, url: str, token_source: str | None, looked_in: Sequence[str]) -> Unauthorized:
        """This error with the client's side of the story in its message."""
        self.url, self.token_source, self.looked_in = url, token_source, tuple(looked_in)
        self.args = (self._message(),)
        return self

    def _message(self) -> str:
        server = f"the corral server at {self.url}" if self.url else "the corral server"
        if self.token_source:
            return (
                f"{server} refused the API key from {self.token_source}: {self.detail};"
                " ask an admin for a new one (corral token create --user NAME) and set"
                " CORRAL_TOKEN to it"
            )
        if self.looked_in:
            return (
                f"{server} needs an API key and none was found (looked in"
                f" {', '.join(self.looked_in)}); corral serve writes its admin key to"
                " DATA_DIR/token on first start: set CORRAL_DATA_DIR to the server's data"
                " dir, or CORRAL_TOKEN to a key"
            )
        return f"{self.detail} (set CORRAL_TOKEN to an API key)"


class Forbidden(APIError):
    """403: the key is valid but may not do this (an admin key is needed, or, for
    ``origin-not-allowed``, a browser origin is refused); the server's detail."""

    token_source: str | None = None


class NotFound(APIError):
    """404: no such workload or token (or route)."""


class InvalidTransition(APIError):
    """409: the state machine forbids the change (e.g. killing a finished workload)."""

    def __init__(
        self,
        status: int,
        problem: dict[str, Any],
        detail: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, problem, detail, retry_after=retry_after)
        self.current_status = _status_or_none(problem.get("current_status"))
        self.requested_status = _status_or_none(problem.get("requested_status"))
        allowed = problem.get("allowed")
        self.allowed: list[Status] = [
            s for s in map(_status_or_none, allowed if isinstance(allowed, list) else []) if s
        ]


class InvalidInput(APIError):
    """422 (invalid body or filter, reused idempotency key), 413 (body too large), or
    409 ``unix-user-conflict`` (a token naming another Unix user than the user has)."""


class RateLimited(APIError):
    """429: this key sent more requests than the server's rate limit allows, and kept
    being refused while the client retried."""

    def _message(self) -> str:
        hint = "rate limited: slow down, or ask the operator for a higher --rate-limit"
        return f"{self.detail} ({hint})"


class ServerError(APIError):
    """5xx: the server could not do it. 503 ``busy``: its database stayed locked (the
    client retried first) and nothing was changed; 507 ``storage-full``: its disk is
    full and nothing was changed; 500: a bug, whose traceback is in the server's log;
    others come from a proxy in between."""

    def _message(self) -> str:
        if self.status == 507 or self.slug == "storage-full":
            hint = "the server's disk is full; nothing was changed: free space on it, then retry"
        elif self.slug == "busy":
            hint = "still so after the client retried; nothing was changed: retry later"
        elif self.slug == "log-unavailable":
            return self.detail  # says which server keeps the log and what is wrong
        elif self.status == 503:
            hint = "the server is unavailable: retry later"
        elif self.slug == "internal":
            return self.detail  # corral's own 500 already says where to look
        else:
            hint = "a server-side failure; the server's log has the details"
        return f"{self.detail} ({hint})"


_BY_SLUG: dict[str, type[APIError]] = {
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "origin-not-allowed": Forbidden,
    "not-found": NotFound,
    "invalid-transition": InvalidTransition,
    "invalid-input": InvalidInput,
    "idempotency-key-reused": InvalidInput,
    "unix-user-conflict": InvalidInput,
    "body-too-large": InvalidInput,
    "rate-limited": RateLimited,
    "busy": ServerError,
    "storage-full": ServerError,
    "internal": ServerError,
}
_BY_STATUS: dict[int, type[APIError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: InvalidTransition,
    413: InvalidInput,
    422: InvalidInput,
    429: RateLimited,
}


def _slug(problem: dict[str, Any]) -> str | None:
    kind = problem.get("type")
    if isinstance(kind, str) and kind.startswith(PROBLEM_TYPE_PREFIX):
        return kind[len(PROBLEM_TYPE_PREFIX) :]
    return None


def _status_or_none(value: object) -> Status | None:
    try:
        return Status(value) if isinstance(value, str) else None
    except ValueError:
        return None


def error_from_response(
    status: int, body: bytes, *, reason: str = "", retry_after_header: str | None = None
) -> APIError:
    """The typed error for an error answer, from its problem details when it has them
    (a body that is not JSON still gives a readable message). ``reason``: the status
    line's phrase (default: the standard one); ``retry_after_header``: its
    ``Retry-After``."""
    problem: dict[str, Any] = {}
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        problem = parsed
    detail = problem.get("detail") or problem.get("title")
    if not isinstance(detail, str) or not detail:
        text = " ".join(body.decode("utf-8", errors="replace").split())[:200]
        phrase = reason or _standard_phrase(status)
        detail = f"HTTP {status} {phrase}".rstrip() + (f": {text}" if text else "")
    cls = _BY_SLUG.get(_slug(problem) or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else APIError
    return cls(status, problem, detail, retry_after=retry_after(retry_after_header))


def _standard_phrase(status: int) -> str:
    from http import HTTPStatus  # here: only an error answer without a body needs it

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (delay-seconds or an HTTP date), or None."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# --- URLs, proxies, transport errors --------------------------------------------------


def _normalize_url(url: str) -> str:
    raw = url.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        raise CorralClientError(f"invalid server URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CorralClientError(f"invalid server URL {url!r}: expected http://HOST:PORT")
    return raw.rstrip("/")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_SSL_NOISE = re.compile(r"^\[[A-Z_: ]+\] | \(_ssl\.c:\d+\)$")


def _reason(exc: BaseException) -> str:
    """``[Errno 111] Connection refused`` -> ``connection refused``."""
    ssl = sys.modules.get("ssl")  # not loaded: not a TLS error
    if ssl is not None and isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        text = f"certificate verify failed: {exc.verify_message}"
    elif ssl is not None and isinstance(exc, ssl.SSLError):
        text = _SSL_NOISE.sub("", str(exc))
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


class _Proxy:
    """An ``http://`` proxy from the environment, for one server."""

    def __init__(self, url: str, variable: str, server: str) -> None:
        parts = urlsplit(url if "://" in url else "http://" + url)
        try:
            port = parts.port or 80
        except ValueError:
            port = 0
        host = parts.hostname
        self.shown = f"{parts.scheme}://{_hostport(host, port) if host else '?'}"
        """The proxy, without its user and password, for messages."""
        if parts.scheme != "http" or not host or not port:
            raise CorralClientError(
                f"cannot use the proxy {self.shown} from ${variable} to reach {server}:"
                " the corral client speaks to http:// proxies only; set NO_PROXY to the"
                " server's host to reach it directly"
            )
        self.host, self.port = host, port
        self.headers: dict[str, str] = {}
        if parts.username is not None:
            import base64

            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            credentials = base64.b64encode(pair.encode("utf-8")).decode("ascii")
            self.headers["Proxy-Authorization"] = f"Basic {credentials}"


def _proxy_for(scheme: str, host: str, port: int, server: str) -> _Proxy | None:
    """The environment's proxy for a (non-loopback) server, or None: none, or bypassed."""
    import urllib.request  # here: never loaded for a loopback server

    proxies = urllib.request.getproxies()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or urllib.request.proxy_bypass(_hostport(host, port)):
        return None
    name = scheme if proxies.get(scheme) else "all"
    variable = f"{name.upper()}_PROXY"
    return _Proxy(url, variable, server)


class _Headers(dict[str, str]):
    """Request headers whose ``repr`` never shows the key."""

    def __repr__(self) -> str:
        secret = ("authorization", "proxy-authorization")
        return repr({k: "[secret]" if k.lower() in secret else v for k, v in self.items()})


# --- the client ---------------------------------------------------------------------


class _KeySearch:
    """Where the client looks for its API key, in order; see ``Client``."""

    def __init__(self, token: str | None, *, local: bool = True) -> None:
        """``local``: the server is on loopback. A data dir's key file is a local
        server's admin key, never sent elsewhere (pointing the CLI at another server
        must not hand it this machine's key); a key given explicitly goes anywhere."""
        self.key: str | None = None
        self.source: str | None = None
        self.looked_in: list[str] = []
        """The places tried without finding a key, for the message of a 401."""
        if token is not None:
            self._found(token, "the token argument", explicit=True)
            return
        # A variable set, even empty, is meant: an empty one must not fall through to
        # the data dir's admin key (someone testing as a user would act as the admin).
        self.looked_in.append(f"${TOKEN_ENV}")
        if TOKEN_ENV in os.environ:
            self._found(os.environ[TOKEN_ENV], f"${TOKEN_ENV}", explicit=True)
            return
        named = os.environ.get(TOKEN_FILE_ENV)
        if named is not None and not named.strip():
            raise CorralClientError(
                f"${TOKEN_FILE_ENV} is empty (unset {TOKEN_FILE_ENV} to use another key)"
            )
        if named is not None:
            self._from_file(os.path.expanduser(named), explicit=True)
            return
        self.looked_in.append(f"${TOKEN_FILE_ENV}")
        if not local:
            self.looked_in.append("no data dir's key file: those go to loopback servers only")
            return
        data_dir = os.environ.get(DATA_DIR_ENV, "")
        if data_dir and self._from_file(
            os.path.join(os.path.expanduser(data_dir), KEY_FILE_NAME), explicit=False
        ):
            return
        self._from_file(os.path.join(default_data_dir_name(), KEY_FILE_NAME), explicit=False)

    def _found(self, text: str, source: str, *, explicit: bool) -> bool:
        key = text.strip()
        if not key:
            if explicit:
                unset = f" (unset {source[1:]} to use another)" if source.startswith("$") else ""
                raise CorralClientError(f"the API key from {source} is empty{unset}")
            return False
        if not KEY_RE.fullmatch(key):
            raise CorralClientError(
                f"the API key from {source} is malformed: a key is one word of printable"
                " ASCII (corral_…), without spaces or control characters"
            )
        self.key, self.source = key, source
        return True

    def _from_file(self, path: str, *, explicit: bool) -> bool:
        named = f" named by ${TOKEN_FILE_ENV}" if explicit else ""
        try:
            with open(path, "rb") as f:
                data = f.read(KEY_FILE_MAX_BYTES + 1)
        except (FileNotFoundError, NotADirectoryError):
            if explicit:
                raise CorralClientError(f"the key file {path}{named} does not exist") from None
            self.looked_in.append(path)
            return False
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            if explicit:
                raise CorralClientError(
                    f"cannot read the key file {path}{named}: {reason}"
                ) from None
            self.looked_in.append(f"{path} (unreadable: {reason})")
            return False
        if len(data) > KEY_FILE_MAX_BYTES:
            raise CorralClientError(f"the key file {path}{named} is too large to be a key")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise CorralClientError(
                f"the key file {path}{named} does not hold a key (not ASCII)"
            ) from None
        if self._found(text, path, explicit=explicit):
            return True
        self.looked_in.append(f"{path} (empty)")
        return False


_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_NO_BODY: Any = object()
_Response = HTTPResponse
_Connection = HTTPConnection


class Client:
    """A synchronous client for one corral server; use it as a context manager or
    call ``close()``. Safe to share between threads.

    ``url`` defaults to ``$CORRAL_URL``, else ``http://127.0.0.1:8765``. ``token`` is
    the API key; without it the client takes ``$CORRAL_TOKEN``, else the file named by
    ``$CORRAL_TOKEN_FILE``, else ``$CORRAL_DATA_DIR/token``, else the default data
    dir's ``token`` (``$XDG_DATA_HOME/corral/token``, where a local ``corral serve``
    writes its admin key). ``token_source`` says where the key came from (None when
    none was found: requests then go without one, which only a ``--no-auth`` server
    accepts). The key itself is never shown, in a ``repr`` or a message. ``timeout``
    bounds connecting and each wait for the server (not a followed log).

    Retries: a 429 (rate limited) or a 503 (busy) answer is retried after the
    server's ``Retry-After`` (else a short backoff), for ``retry_for`` seconds in all
    (counted from the first try, the server's time to answer included: a server
    whose database is unreachable takes seconds to say so), then raised
    (``RateLimited``, ``ServerError``); ``on_retry`` hears of each wait. That is safe
    even for a POST, which is not idempotent, because both answers mean the request was not carried
    out: a 429 comes from the request guard before any route runs, and corral answers
    503 ``busy`` only when its database transaction could not start or was rolled
    back whole. A 503 from something else (a proxy, without a corral problem)
    promises nothing, so a POST is retried after it only when it carries an
    ``Idempotency-Key`` (the server then replays instead of doing it twice);
    GET, PUT and DELETE are idempotent and always retried. Corral's other 503s
    (``log-unavailable``: the log cannot be read, or the server that keeps it cannot
    be reached or is misconfigured) are raised at once: waiting does not mend them.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retry_for: float = RETRY_FOR,
        on_retry: Callable[[APIError, float], None] | None = None,
    ) -> None:
        self.url = _normalize_url(url or os.environ.get("CORRAL_URL") or DEFAULT_URL)
        self.timeout = timeout
        self.retry_for = retry_for
        self.on_retry = on_retry
        """Called with the error and the seconds to wait before each retry (the CLI
        says once that it is waiting)."""
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._base_path = parts.path.rstrip("/")
        local = is_loopback(self._host)
        search = _KeySearch(token, local=local)
        self.token_source: str | None = search.source
        """Where the key came from (``$CORRAL_TOKEN``, a file's path, …), or None."""
        self._looked_in = tuple(search.looked_in)
        self._headers = _Headers({"User-Agent": f"corral-client/{__version__}"})
        if search.key is not None:
            self._headers["Authorization"] = f"Bearer {search.key}"
        # A loopback server is reached directly: never through $HTTP_PROXY (which
        # would see the key, and cannot reach this machine's loopback anyway).
        self._proxy = None if local else _proxy_for(parts.scheme, self._host, self._port, self.url)
        self._origin = f"{parts.scheme}://{_hostport(self._host, self._port)}"
        if self._proxy is not None and not self._https:
            self._headers.update(self._proxy.headers)  # absolute form: to the proxy
        self._ssl = self._ssl_context() if self._https else None
        self._idle: builtins.list[_Connection] = []
        self._lock = allocate_lock()
        self._closed = False

    @staticmethod
    def _ssl_context() -> ssl.SSLContext:
        """The system's CAs, or ``$SSL_CERT_FILE`` (and ``$SSL_CERT_DIR``) instead.
        (``ssl`` is imported here: an ``http`` URL never loads it.)"""
        import ssl

        ca_file = os.environ.get("SSL_CERT_FILE") or None
        ca_dir = os.environ.get("SSL_CERT_DIR") or None
        if ca_file is None and ca_dir is None:
            context = ssl.create_default_context()
        else:
            try:
                context = ssl.create_default_context(cafile=ca_file, capath=ca_dir)
            except (OSError, ssl.SSLError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                where = f"SSL_CERT_FILE {ca_file}" if ca_file else f"SSL_CERT_DIR {ca_dir}"
                raise CorralClientError(f"cannot use {where}: {reason}") from None
        context.set_alpn_protocols(["http/1.1"])
        return context

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the idle connections; one in use closes when its request is done."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- workloads ------------------------------------------------------------------

    def submit(
        self,
        command: Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        cpus: float | None = None,
        memory_mb: int | None = None,
        gpus: int | None = None,
        labels: Mapping[str, str] | None = None,
        priority: int | None = None,
        timeout_seconds: float | None = None,
        depends_on: Iterable[str] | None = None,
        dependency_type: str | None = None,
        array_index: int | None = None,
        idempotency_key: str | None = None,
    ) -> Workload:
        """Submit a workload; unset fields take the server's defaults. ``depends_on``:
        ids of workloads it waits for; ``dependency_type``: ``afterok`` (the server's
        default: each dependency must complete) or ``afterany`` (each must end)."""
        if isinstance(command, str | bytes):
            raise TypeError("command must be a sequence of arguments, e.g. ['echo', 'hi']")
        body: dict[str, Any] = {"command": builtins.list(command)}
        optional = {
            "name": name,
            "env": dict(env) if env is not None else None,
            "cwd": cwd,
            "labels": dict(labels) if labels is not None else None,
            "priority": priority,
            "timeout_seconds": timeout_seconds,
            "depends_on": builtins.list(depends_on) if depends_on is not None else None,
            "dependency_type": dependency_type,
            "array_index": array_index,
        }
        body.update((k, v) for k, v in optional.items() if v is not None)
        resources = {"cpus": cpus, "memory_mb": memory_mb, "gpus": gpus}
        if any(v is not None for v in resources.values()):
            body["resources"] = {k: v for k, v in resources.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        data = self._call("POST", "/v1/workloads", body=body, headers=headers)
        return self._read(Workload.from_json, data)

    def submit_many(
        self,
        specs: Iterable[Mapping[str, Any]],
        *,
        max_running: int | None = None,
        idempotency_key: str | None = None,
    ) -> builtins.list[Workload]:
        """Submit several workloads at once, all or none (``POST /v1/workloads/batch``);
        each spec is a ``POST /v1/workloads`` body (``{"command": [...], ...}``), whose
        ``depends_on`` may also name another item by its index. ``max_running``: at
        most this many of them run at once. The stored workloads, in the order given."""
        items = [dict(spec) for spec in specs]
        body: dict[str, Any] = {"items": items}
        if max_running is not None:
            body["max_running"] = max_running
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        data = self._call("POST", "/v1/workloads/batch", body=body, headers=headers)
        return self._items(data, Workload.from_json, "workloads")

    def get(self, workload_id: str) -> Workload:
        """The workload, or ``NotFound``."""
        return self._read(Workload.from_json, self._call("GET", self._path(workload_id)))

    def events(self, workload_id: str) -> builtins.list[Event]:
        """The workload's history, oldest first (the first is ``created``)."""
        data = self._call("GET", self._path(workload_id, "events"))
        return self._items(data, Event.from_json, "events")

    def kill(self, workload_id: str) -> Workload:
        """Kill the workload (now ``killed``); ``InvalidTransition`` when it already
        ended, ``NotFound`` when there is no such workload."""
        return self._read(Workload.from_json, self._call("DELETE", self._path(workload_id)))

    def kill_many(
        self,
        *,
        ids: Iterable[str] = (),
        status: Iterable[str | Status] = (),
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
        all: bool = False,
        all_users: bool = False,
    ) -> KillResult:
        """Kill the workloads named by ``ids`` and/or matching a selector (any of
        ``status``, every one of ``labels``, ``name``; without ``status``: the active
        ones), or ``all`` the caller's active ones (``all_users``: everyone's, admin
        keys only). Each is killed independently: the result lists the ``killed``, the
        ``not_killed`` (they had ended; with the server's detail) and the ``not_found``
        ids. Naming nothing at all is ``InvalidInput``. Unlike other writes, a bulk
        kill the database stops part-way (503 ``busy``) keeps the kills made so far;
        the automatic retry finishes the job, and reports those as ``not_killed``
        (already killed)."""
        body: dict[str, Any] = {}
        if ids := builtins.list(ids):
            body["ids"] = ids
        if statuses := [str(s) for s in status]:
            body["status"] = statuses
        if labels:
            body["labels"] = dict(labels)
        if name is not None:
            body["name"] = name
        if all:
            body["all"] = True
        if all_users:
            body["all_users"] = True
        data = self._call("POST", "/v1/workloads/kill", body=body)
        return self._read(KillResult.from_json, data)

    def clean(self, older_than_seconds: float) -> int:
        """Delete the finished workloads (completed, failed, killed) that ended more
        than ``older_than_seconds`` ago, with their events and logs: the caller's own,
        or with an admin key everyone's. A workload a pending or running one depends on
        is kept until that one has ended. Returns how many were deleted (sending it
        again deletes only those that have aged past it since). ``InvalidInput`` for
        a negative or huge age.

        The server answers once it has deleted them all, in batches of 500 with a
        pause between: a million take minutes, so this waits without a read
        timeout."""
        body = {"older_than_seconds": older_than_seconds}
        data = self._call("POST", "/v1/workloads/clean", body=body, patient=True)
        deleted = data.get("deleted") if isinstance(data, dict) else None
        if not isinstance(deleted, int) or isinstance(deleted, bool) or deleted < 0:
            raise self._unexpected("a count of workloads deleted was expected")
        return deleted

    def list(
        self,
        *,
        status: Iterable[str | Status] = (),
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
        id_prefix: str | None = None,
        page_size: int = 100,
        limit: int | None = None,
        all_users: bool = False,
    ) -> Iterator[Workload]:
        """Workloads newest first, fetched ``page_size`` at a time; any of ``status``,
        every one of ``labels``, named ``name``, with an id starting with ``id_prefix``
        (at least 4 characters); at most ``limit`` of them. Only the key's user's own,
        unless ``all_users`` (admin keys only; ``Forbidden`` otherwise)."""
        statuses = builtins.list(status)  # read once, sent with every page
        remaining = limit
        cursor = None
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            page = self.page(
                status=statuses,
                labels=labels,
                name=name,
                id_prefix=id_prefix,
                limit=size,
                cursor=cursor,
                all_users=all_users,
            )
            yield from page.items
            if remaining is not None:
                remaining -= len(page.items)
            cursor = page.next_cursor
            if not cursor or not page.items:
                return

    def page(
        self,
        *,
        status: Iterable[str | Status] = (),
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
        id_prefix: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        count: bool = False,
        all_users: bool = False,
    ) -> Page:
        """One page of ``list``: at most ``limit`` workloads after ``cursor`` (None:
        the first page), and the cursor of the next page (None after the last). With
        ``count``, ``total`` is the number of workloads the filter matches in all."""
        query = self._filters(status, labels, name, id_prefix, all_users)
        query += [("limit", str(limit)), ("cursor", cursor or "")]
        if count:
            query.append(("count", "true"))
        return self._read(Page.from_json, self._call("GET", "/v1/workloads", params=query))

    @staticmethod
    def _filters(
        status: Iterable[str | Status],
        labels: Mapping[str, str] | None,
        name: str | None,
        id_prefix: str | None,
        all_users: bool,
    ) -> builtins.list[tuple[str, str]]:
        params: builtins.list[tuple[str, str]] = [("status", str(s)) for s in status]
        params += [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        if name is not None:
            params.append(("name", name))
        if id_prefix is not None:
            params.append(("id_prefix", id_prefix))
        if all_users:
            params.append(("all_users", "true"))
        return params

    def status(self) -> ServerStatus:
        """The executor's capacity, what is used and free, the caller's workloads
        counted by status (an admin's: everyone's) and the head of the queue."""
        return self._read(ServerStatus.from_json, self._call("GET", "/v1/status"))

    # --- API keys (admin keys only) ---------------------------------------------------

    def create_token(
        self,
        user: str,
        *,
        admin: bool = False,
        role: str | None = None,
        unix_user: str | None = None,
        description: str | None = None,
    ) -> NewToken:
        """A new API key for ``user`` (created with its first key); ``.key`` is the key,
        which the server shows this once. ``admin``: an admin key; ``role``: ``user``,
        ``admin`` or ``metrics`` (a key that may only read ``/metrics``), instead.
        ``unix_user``: run the user's workloads as that Unix account (the server must
        run as root)."""
        body: dict[str, Any] = {"user": user, "admin": admin}
        if role is not None:
            body["role"] = role
        if unix_user is not None:
            body["unix_user"] = unix_user
        if description is not None:
            body["description"] = description
        return self._read(NewToken.from_json, self._call("POST", "/v1/tokens", body=body))

    def tokens(self) -> builtins.list[Token]:
        """Every API key (never the keys themselves), newest first."""
        return self._items(self._call("GET", "/v1/tokens"), Token.from_json, "tokens")

    def revoke_token(self, token_id: str) -> Token:
        """Revoke a key (its requests then get 401); revoking it again changes nothing.
        ``NotFound`` when there is no such key."""
        if token_id in ("", ".", ".."):
            raise NotFound(404, {}, f"no token {token_id!r}")
        path = "/v1/tokens/" + quote(token_id, safe="")
        return self._read(Token.from_json, self._call("DELETE", path))

    # --- logs -----------------------------------------------------------------------

    def logs(self, workload_id: str, *, tail: int | None = None, follow: bool = False) -> str:
        """The workload's output (stdout and stderr as written), or its last ``tail``
        lines; with ``follow``, returns once the workload has ended, with all of it.
        Bytes that are not UTF-8 are replaced."""
        return self.log_bytes(workload_id, tail=tail, follow=follow).decode(
            "utf-8", errors="replace"
        )

    def log_bytes(
        self, workload_id: str, *, tail: int | None = None, follow: bool = False
    ) -> bytes:
        """``logs`` as the raw bytes the workload wrote."""
        return b"".join(self.stream_logs(workload_id, tail=tail, follow=follow))

    def stream_logs(
        self, workload_id: str, *, tail: int | None = None, follow: bool = False
    ) -> Iterator[bytes]:
        """The output in chunks as they arrive, however large the log; with ``follow``,
        new output as it is written, until the workload ends (no read timeout then).
        A follow the server ends while the workload still runs (its key revoked: the
        ``Unauthorized`` of the check that follows; a server stopping) is raised, not
        taken for the end of the log."""
        params = [("follow", "true")] if follow else []
        if tail is not None:
            params.append(("tail", str(tail)))
        path = self._path(workload_id, "logs")
        conn, response = self._request("GET", path, params=params, follow=follow)
        try:
            while chunk := response.read1(LOG_CHUNK_BYTES):
                yield chunk
        except (OSError, HTTPException) as exc:
            conn.close()
            raise self._transport_error(exc) from exc
        finally:
            self._done(conn, response)
        if follow:
            self._check_ended(workload_id)

    def _check_ended(self, workload_id: str) -> None:
        """After a follow ended: the workload must have (or be gone: deleted)."""
        try:
            status = self.get(workload_id).status
        except NotFound:
            return
        if status not in TERMINAL:
            raise CorralClientError(
                f"the server ended the log of {workload_id} while it is still {status}:"
                " follow it again"
            )

    def follow_logs(self, workload_id: str, *, tail: int | None = None) -> Iterator[bytes]:
        """``stream_logs(..., follow=True)``: new output as it is written, until the
        workload ends."""
        return self.stream_logs(workload_id, tail=tail, follow=True)

    # --- the live event feed ------------------------------------------------------

    def watch(
        self,
        workload_ids: Sequence[str] = (),
        *,
        labels: Mapping[str, str] | None = None,
        statuses: Sequence[Status | str] = (),
        after: int | None = None,
        since: float | None = None,
        reconnect: bool = True,
        on_reconnect: Callable[[CorralClientError | None], None] | None = None,
        idle_timeout: float = WATCH_IDLE_TIMEOUT,
    ) -> Iterator[TransitionEvent]:
        """Every event of the workloads the key may see, as it happens, oldest first
        (from ``after``, an event id; else from the first of the last ``since``
        seconds, 0: from now on; else from the oldest the server keeps), for ever:
        ``GET /v1/events?follow=true``. Filters: ``workload_ids`` (any of them),
        ``labels`` (every one), ``statuses`` (moved to any of them).

        The first connection failing is raised (``ServerUnreachable``, …): a wrong
        URL is not retried for ever. Once a stream was open, a lost connection, a
        server restart, or ``idle_timeout`` seconds without a byte (the server sends
        a keep-alive every 15 s: a silent connection is a lost one) is reconnected
        with the last id yielded (``Last-Event-ID``), so nothing is lost or given
        twice, retrying with a backoff up to 5 s; ``on_reconnect`` is called once per
        loss, with the error (None: the server ended the stream, as a stopping one
        does). ``reconnect=False`` raises instead (or returns, when the server ended
        it). An error answer (a bad filter, 401, …) is always raised."""
        params = [
            ("follow", "true"),
            *[("workload", w) for w in workload_ids],
            *[("label", f"{k}={v}") for k, v in (labels or {}).items()],
            *[("status", str(getattr(s, "value", s))) for s in statuses],
        ]
        last = self._event_id_since(since) if after is None and since is not None else after
        delay = RETRY_MIN_DELAY
        opened = False  # a stream was open once: losses are reconnected from then on
        lost = False  # the stream was lost since it was last open
        while True:
            headers = {} if last is None else {"Last-Event-ID": str(last)}
            error: CorralClientError | None = None
            try:
                for event in self._event_stream(params, headers, idle_timeout):
                    if event is None:  # open
                        opened, lost, delay = True, False, RETRY_MIN_DELAY
                        continue
                    last = event.id
                    yield event
            except (ServerError, ServerUnreachable) as exc:  # a restart, a database outage
                if not reconnect or not opened:
                    raise
                error = exc
            except APIError:
                raise
            except CorralClientError as exc:
                if not reconnect or not opened:
                    raise
                error = exc
            if not reconnect:
                return
            if not lost:
                lost = True
                if on_reconnect is not None:
                    on_reconnect(error)
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)

    def _event_id_since(self, seconds: float) -> int:
        """The event id to read after to start at the first event of the last
        ``seconds`` (``GET /v1/events?since_seconds=``, one event)."""
        params = [("since_seconds", f"{seconds:g}"), ("limit", "1")]
        data = self._call("GET", "/v1/events", params=params)
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, builtins.list) or not isinstance(data.get("last_id"), int):
            raise CorralClientError(f"unexpected answer from {self.url}: not an event page")
        if items and isinstance(items[0], dict) and isinstance(items[0].get("id"), int):
            return max(0, int(items[0]["id"]) - 1)
        return int(data["last_id"])

    def _event_stream(
        self,
        params: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        idle_timeout: float,
    ) -> Iterator[TransitionEvent | None]:
        """The events of one ``text/event-stream`` answer, until it ends: ``None``
        first, once the stream is open."""
        conn, response = self._request(
            "GET",
            "/v1/events",
            params=params,
            headers=headers,
            follow=True,
            read_timeout=idle_timeout,
        )
        buffer = b""
        data: builtins.list[bytes] = []
        try:
            yield None
            while chunk := response.read1(LOG_CHUNK_BYTES):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    line = line.rstrip(b"\r")
                    if line.startswith(b"data:"):
                        data.append(line[5:].removeprefix(b" "))
                    elif not line and data:
                        try:
                            parsed = json.loads(b"\n".join(data))
                        except ValueError:
                            raise self._unexpected("an event that is not JSON") from None
                        data = []
                        yield self._read(TransitionEvent.from_json, parsed)
        except TimeoutError:
            conn.close()
            raise CorralClientError(
                f"nothing from the corral server at {self.url} for {idle_timeout:g} s"
                " (it sends a keep-alive every 15 s)"
            ) from None
        except (OSError, HTTPException) as exc:
            conn.close()
            raise self._transport_error(exc) from exc
        finally:
            self._done(conn, response)

    # --- waiting --------------------------------------------------------------------

    def wait(
        self,
        workload_id: str,
        *,
        timeout: float | None = None,
        on_update: Callable[[Workload], None] | None = None,
    ) -> Workload:
        """Poll until the workload is terminal (backing off from 0.05 s to 1 s) and
        return it; ``on_update`` sees every poll; ``WaitTimeout`` after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = WAIT_MIN_DELAY
        last_status: Status | None = None
        while True:
            workload = self.get(workload_id)
            if on_update is not None:
                on_update(workload)
            if workload.status in TERMINAL:
                return workload
            if workload.status != last_status:
                delay, last_status = WAIT_MIN_DELAY, workload.status
            pause = delay
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(workload, timeout or 0.0)
                pause = min(pause, remaining)
            time.sleep(pause)
            delay = min(delay * 2, WAIT_MAX_DELAY)

    # --- plumbing: answers ------------------------------------------------------------

    @staticmethod
    def _path(workload_id: str, *rest: str) -> str:
        if workload_id in ("", ".", ".."):
            raise NotFound(404, {}, f"no workload {workload_id!r}")
        return "/".join(("/v1/workloads", quote(workload_id, safe=""), *rest))

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: Any = _NO_BODY,
        headers: Mapping[str, str] | None = None,
        patient: bool = False,
    ) -> Any:
        """Send a request and return its JSON answer (see ``_request``); ``patient``:
        wait for the answer as long as it takes (no read timeout, as a stream)."""
        conn, response = self._request(
            method, path, params=params, body=body, headers=headers, follow=patient
        )
        try:
            data = response.read()
        except (OSError, HTTPException) as exc:
            conn.close()
            raise self._transport_error(exc) from exc
        finally:
            self._done(conn, response)
        try:
            return json.loads(data)
        except ValueError:
            raise self._unexpected("not JSON") from None

    def _read(self, parse: Callable[[Any], T], data: Any) -> T:
        try:
            return parse(data)
        except WireError as exc:
            raise self._unexpected(str(exc)) from None

    def _items(self, data: Any, parse: Callable[[Any, str], T], what: str) -> builtins.list[T]:
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, builtins.list):
            raise self._unexpected(f"a list of {what} was expected")
        try:
            return [parse(item, f"items[{i}]") for i, item in enumerate(items)]
        except WireError as exc:
            raise self._unexpected(str(exc)) from None

    def _unexpected(self, what: str) -> CorralClientError:
        return CorralClientError(
            f"unexpected answer from {self.url} ({what}); is it a corral server?"
        )

    # --- plumbing: requests -----------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: Any = _NO_BODY,
        headers: Mapping[str, str] | None = None,
        follow: bool = False,
        read_timeout: float | None = None,
    ) -> tuple[_Connection, _Response]:
        """Send, retrying 429 and 503 (see the class docstring); raise the typed error
        of an error answer. The caller reads the answer, then calls ``_done``.
        ``follow``: an answer read as it comes, waiting ``read_timeout`` seconds at
        most for each read (None: for ever), not ``timeout``."""
        target = self._base_path + path
        if params:
            target += "?" + urlencode(params)
        if self._proxy is not None and not self._https:
            target = self._origin + target  # absolute form, for the proxy
        all_headers = dict(self._headers)
        payload: bytes | None = None
        if body is not _NO_BODY:
            payload = json.dumps(body).encode("utf-8")
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        replayable = method in _IDEMPOTENT or "Idempotency-Key" in all_headers
        began = time.monotonic()  # the budget counts from the first try
        attempt = 0
        while True:
            conn, response = self._send(
                method,
                target,
                payload,
                all_headers,
                replayable=replayable,
                read_timeout=read_timeout if follow else self.timeout,
            )
            if response.status < 400:
                return conn, response
            try:
                data = response.read(ERROR_BODY_MAX_BYTES)
            except (OSError, HTTPException) as exc:
                conn.close()
                raise self._transport_error(exc) from exc
            finally:
                self._done(conn, response)
            error = error_from_response(
                response.status,
                data,
                reason=response.reason,
                retry_after_header=response.getheader("Retry-After"),
            )
            delay = self._retry_delay(method, all_headers, error, attempt)
            if delay is None or time.monotonic() + delay - began > self.retry_for:
                raise self._explain(error)
            if self.on_retry is not None:
                self.on_retry(error, delay)
            time.sleep(delay)
            attempt += 1

    def _send(
        self,
        method: str,
        target: str,
        payload: bytes | None,
        headers: Mapping[str, str],
        *,
        replayable: bool,
        read_timeout: float | None,
    ) -> tuple[_Connection, _Response]:
        """One request on a pooled connection, sent again on a new one when a
        kept-alive connection turns out dropped and the request is ``replayable``."""
        for last_try in (False, True):
            conn = self._new_connection() if last_try else self._acquire()
            reused = conn.sock is not None
            if not reused:
                self._connect(conn)
            try:
                conn.settimeout(read_timeout)
                conn.request(method, target, body=payload, headers=headers)
                return conn, conn.getresponse()
            except ValueError:  # a header corral.http refuses (a line break in it)
                # Not given back to the pool: a refused request leaves the connection
                # in no state to trust for the next one.
                conn.close()
                raise
            except (OSError, HTTPException) as exc:
                conn.close()
                self._release(conn)
                dropped = isinstance(exc, ConnectionError | BadStatusLine)
                if reused and dropped and replayable and not last_try:
                    continue
                raise self._transport_error(exc) from exc
        raise AssertionError("unreachable")

    def _connect(self, conn: _Connection) -> None:
        """Open ``conn`` (through the proxy's tunnel, for HTTPS through a proxy), or
        raise ``ServerUnreachable`` or the certificate's error."""
        try:
            conn.connect()
        except (OSError, HTTPException) as exc:
            conn.close()
            self._release(conn)
            ssl = sys.modules.get("ssl")  # loaded for an https URL only
            if ssl is not None and isinstance(exc, ssl.SSLCertVerificationError):
                raise CorralClientError(
                    f"cannot trust the TLS certificate of the corral server at {self.url}"
                    f" ({_reason(exc)}); for a certificate of your own CA, set SSL_CERT_FILE"
                    " to the CA's certificate"
                ) from None
            reason = "timed out connecting" if isinstance(exc, TimeoutError) else _reason(exc)
            if self._proxy is not None:
                reason += f", through the proxy {self._proxy.shown}"
            raise ServerUnreachable(self.url, reason) from None

    def _new_connection(self) -> _Connection:
        proxy = self._proxy
        if not self._https:
            host, port = (proxy.host, proxy.port) if proxy else (self._host, self._port)
            return HTTPConnection(host, port, timeout=self.timeout)
        if proxy is None:
            return HTTPSConnection(self._host, self._port, timeout=self.timeout, context=self._ssl)
        conn = HTTPSConnection(proxy.host, proxy.port, timeout=self.timeout, context=self._ssl)
        conn.set_tunnel(self._host, self._port, headers=proxy.headers)
        return conn

    def _acquire(self) -> _Connection:
        """An idle kept-alive connection (one the server closed is reopened), else a
        new one, not yet connected."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            return self._new_connection()
        if conn.dropped():
            conn.close()
        return conn

    def _release(self, conn: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < IDLE_CONNECTIONS_MAX:
                self._idle.append(conn)
                return
        conn.close()

    def _done(self, conn: _Connection, response: _Response) -> None:
        """The caller is done with ``response``: keep its connection for the next
        request if the answer was read whole, else close it."""
        if not response.isclosed():
            conn.close()
        self._release(conn)

    @staticmethod
    def _retry_delay(
        method: str, headers: Mapping[str, str], error: APIError, attempt: int
    ) -> float | None:
        """Seconds to wait before sending the request again, or None not to."""
        if error.status == 503:
            if error.slug is not None and error.slug != "busy":
                return None  # corral's own 503 that waiting does not mend (log-unavailable)
            safe = method in _IDEMPOTENT or error.slug == "busy" or "Idempotency-Key" in headers
            if not safe:
                return None
        elif error.status != 429:
            return None
        if error.retry_after is not None:
            return max(error.retry_after, RETRY_MIN_DELAY)
        return min(RETRY_MIN_DELAY * 2.0 ** min(attempt, 10), RETRY_MAX_DELAY)

    def _explain(self, error: APIError) -> APIError:
        """Add what the client knows (where its key came from) to an error."""
        if isinstance(error, Unauthorized):
            return error.explain(self.url, self.token_source, self._looked_in)
        if isinstance(error, Forbidden):
            error.token_source = self.token_source
        return error

    def _transport_error(self, exc: BaseException) -> CorralClientError:
        """An error after the connection was made: no answer in time, a lost one, or
        one that is not HTTP as a corral server speaks it."""
        if isinstance(exc, TimeoutError):
            return CorralClientError(
                f"the corral server at {self.url} did not answer within {self.timeout:g} s"
            )
        if isinstance(exc, HTTPException) and not isinstance(exc, IncompleteRead | OSError):
            return CorralClientError(
                f"a malformed answer from {self.url} ({_reason(exc)}); is it a corral server?"
            )
        return CorralClientError(
            f"lost the connection to the corral server at {self.url}: {_reason(exc)}"
        )
