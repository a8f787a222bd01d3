"""``corral.Client``: a synchronous Python client for the corral HTTP API (``/v1``).

::

    from corral import Client

    with Client() as corral:                      # $CORRAL_URL, else http://127.0.0.1:8765
        workload = corral.submit(["python", "train.py"], gpus=1, labels={"team": "ml"})
        done = corral.wait(workload.id)
        print(done.status, done.exit_code, corral.logs(done.id, tail=20))

The API key (sent as ``Authorization: Bearer KEY``) is the first of: the ``token=``
argument, ``$CORRAL_TOKEN``, the file named by ``$CORRAL_TOKEN_FILE``,
``$CORRAL_DATA_DIR/token``, the default data dir's ``token`` (where ``corral serve``
writes its admin key on first start). ``Client.token_source`` says which it was.

Results are ``corral.model.Workload`` and ``Event`` objects. Every failure is raised as
one of these errors, each with a message fit to show a user as is::

    CorralClientError               root: anything the client could not do
    ├── ServerUnreachable           no connection (refused, unknown host, connect timeout)
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

429 and 503 answers are retried transparently (see ``Client``), so ``RateLimited`` and a
503 ``ServerError`` mean the server stayed that way for ``retry_for`` seconds.
"""

from __future__ import annotations

import builtins
import os
import re
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from corral import __version__
from corral.config import DEFAULT_PORT, DEFAULT_URL, default_data_dir, is_loopback
from corral.keys import KEY_FILE_NAME
from corral.model import TERMINAL, Event, NewToken, Status, Token, Workload

PROBLEM_TYPE_PREFIX = "urn:corral:problem:"
WAIT_MIN_DELAY = 0.05
WAIT_MAX_DELAY = 1.0
LIST_PAGE_MAX = 1000
RETRY_FOR = 30.0
"""How long, in all, the client keeps retrying a 429 or 503 before raising."""
RETRY_MIN_DELAY = 0.25
RETRY_MAX_DELAY = 5.0
TOKEN_ENV = "CORRAL_TOKEN"
TOKEN_FILE_ENV = "CORRAL_TOKEN_FILE"
DATA_DIR_ENV = "CORRAL_DATA_DIR"
KEY_FILE_MAX_BYTES = 4096
KEY_RE = re.compile(r"[\x21-\x7e]+")
"""One word of printable ASCII: anything else cannot go in an HTTP header."""

__all__ = [
    "APIError",
    "Client",
    "CorralClientError",
    "Forbidden",
    "InvalidInput",
    "InvalidTransition",
    "NotFound",
    "RateLimited",
    "ServerError",
    "ServerUnreachable",
    "Unauthorized",
    "WaitTimeout",
]


# --- errors -------------------------------------------------------------------------


class CorralClientError(Exception):
    """Root of the client's errors; ``str(exc)`` is a message for the user."""


def _serve_hint(url: str) -> str:
    try:
        port = httpx.URL(url).port
    except httpx.InvalidURL:
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
            hint = "the server stayed busy; nothing was changed: retry later"
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


def error_from_response(response: httpx.Response) -> APIError:
    """The typed error for an error response, from its problem details when it has
    them (a body that is not JSON still gives a readable message)."""
    status = response.status_code
    problem: dict[str, Any] = {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        problem = body
    detail = problem.get("detail") or problem.get("title")
    if not isinstance(detail, str) or not detail:
        text = " ".join(response.text.split())[:200]
        detail = f"HTTP {status} {response.reason_phrase}" + (f": {text}" if text else "")
    cls = _BY_SLUG.get(_slug(problem) or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else APIError
    return cls(status, problem, detail, retry_after=retry_after(response))


def retry_after(response: httpx.Response) -> float | None:
    """The response's ``Retry-After`` in seconds (delay-seconds or an HTTP date)."""
    value = response.headers.get("Retry-After", "").strip()
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


# --- the client ---------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def _normalize_url(url: str) -> str:
    raw = url.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parsed = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise CorralClientError(f"invalid server URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CorralClientError(f"invalid server URL {url!r}: expected http://HOST:PORT")
    return raw.rstrip("/")


def _connect_reason(exc: httpx.TransportError) -> str:
    """``[Errno 111] Connection refused`` -> ``connection refused``."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out connecting"
    text = str(exc) or type(exc).__name__
    if text.startswith("[Errno") and "] " in text:
        text = text.split("] ", 1)[1]
    return text[:1].lower() + text[1:]


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
        self.looked_in.append(f"${TOKEN_ENV}")
        if self._found(os.environ.get(TOKEN_ENV, ""), f"${TOKEN_ENV}", explicit=False):
            return
        named = os.environ.get(TOKEN_FILE_ENV, "")
        if named:
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
        self._from_file(str(default_data_dir() / KEY_FILE_NAME), explicit=False)

    def _found(self, text: str, source: str, *, explicit: bool) -> bool:
        key = text.strip()
        if not key:
            if explicit:
                raise CorralClientError(f"the API key from {source} is empty")
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


class Client:
    """A synchronous client for one corral server; use it as a context manager or
    call ``close()``. Safe to share between threads.

    ``url`` defaults to ``$CORRAL_URL``, else ``http://127.0.0.1:8765``. ``token`` is
    the API key; without it the client takes ``$CORRAL_TOKEN``, else the file named by
    ``$CORRAL_TOKEN_FILE``, else ``$CORRAL_DATA_DIR/token``, else the default data
    dir's ``token`` (``$XDG_DATA_HOME/corral/token``, where a local ``corral serve``
    writes its admin key). ``token_source`` says where the key came from (None when
    none was found: requests then go without one, which only a ``--no-auth`` server
    accepts). The key itself is never shown, in a ``repr`` or a message.

    Retries: a 429 (rate limited) or a 503 (busy) answer is retried after the
    server's ``Retry-After`` (else a short backoff), for ``retry_for`` seconds in all,
    then raised (``RateLimited``, ``ServerError``). That is safe even for a POST,
    which is not idempotent, because both answers mean the request was not carried
    out: a 429 comes from the request guard before any route runs, and corral answers
    503 ``busy`` only when its database transaction could not start or was rolled
    back whole. A 503 from something else (a proxy, without corral's ``busy``
    problem) promises nothing, so a POST is retried after it only when it carries an
    ``Idempotency-Key`` (the server then replays instead of doing it twice);
    GET, PUT and DELETE are idempotent and always retried.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retry_for: float = RETRY_FOR,
    ) -> None:
        self.url = _normalize_url(url or os.environ.get("CORRAL_URL") or DEFAULT_URL)
        self.timeout = timeout
        self.retry_for = retry_for
        local = is_loopback(httpx.URL(self.url).host)
        search = _KeySearch(token, local=local)
        self.token_source: str | None = search.source
        """Where the key came from (``$CORRAL_TOKEN``, a file's path, …), or None."""
        self._looked_in = tuple(search.looked_in)
        headers = {"User-Agent": f"corral-client/{__version__}"}
        if search.key is not None:
            headers["Authorization"] = f"Bearer {search.key}"
        # A loopback server is reached directly: never through $HTTP_PROXY (which
        # would see the key, and cannot reach this machine's loopback anyway). Its
        # certificate's CA may still come from $SSL_CERT_FILE.
        verify: ssl.SSLContext | bool = True
        ca_file = os.environ.get("SSL_CERT_FILE")
        if local and ca_file:
            try:
                verify = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise CorralClientError(f"cannot use SSL_CERT_FILE {ca_file}: {reason}") from None
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            headers=headers,
            trust_env=not local,
            verify=verify,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

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
        idempotency_key: str | None = None,
    ) -> Workload:
        """Submit a workload; unset fields take the server's defaults."""
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
        }
        body.update((k, v) for k, v in optional.items() if v is not None)
        resources = {"cpus": cpus, "memory_mb": memory_mb, "gpus": gpus}
        if any(v is not None for v in resources.values()):
            body["resources"] = {k: v for k, v in resources.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        response = self._request("POST", "/v1/workloads", json=body, headers=headers)
        return self._parse(Workload, response)

    def get(self, workload_id: str) -> Workload:
        """The workload, or ``NotFound``."""
        return self._parse(Workload, self._request("GET", self._path(workload_id)))

    def events(self, workload_id: str) -> builtins.list[Event]:
        """The workload's history, oldest first (the first is ``created``)."""
        body = self._json(self._request("GET", self._path(workload_id, "events")))
        items = body.get("items") if isinstance(body, dict) else None
        return [self._validate(Event, item) for item in (items or [])]

    def kill(self, workload_id: str) -> Workload:
        """Kill the workload (now ``killed``); ``InvalidTransition`` when it already
        ended, ``NotFound`` when there is no such workload."""
        return self._parse(Workload, self._request("DELETE", self._path(workload_id)))

    def list(
        self,
        *,
        status: Iterable[str | Status] = (),
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
        limit: int | None = None,
        all_users: bool = False,
    ) -> Iterator[Workload]:
        """Workloads newest first, fetched ``page_size`` at a time; any of ``status``,
        every one of ``labels``; at most ``limit`` of them. Only the key's user's own,
        unless ``all_users`` (admin keys only; ``Forbidden`` otherwise)."""
        params: builtins.list[tuple[str, str]] = [("status", str(s)) for s in status]
        params += [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        if all_users:
            params.append(("all_users", "true"))
        remaining = limit
        cursor = ""
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            query = [*params, ("limit", str(size)), ("cursor", cursor)]
            body = self._json(self._request("GET", "/v1/workloads", params=query))
            if not isinstance(body, dict):
                raise self._unexpected("a workload list was expected")
            items = body.get("items") or []
            for item in items:
                yield self._validate(Workload, item)
            if remaining is not None:
                remaining -= len(items)
            cursor = body.get("next_cursor") or ""
            if not cursor or not items:
                return

    # --- API keys (admin keys only) ---------------------------------------------------

    def create_token(
        self,
        user: str,
        *,
        admin: bool = False,
        unix_user: str | None = None,
        description: str | None = None,
    ) -> NewToken:
        """A new API key for ``user`` (created with its first key); ``.key`` is the key,
        which the server shows this once. ``unix_user``: run the user's workloads as
        that Unix account (the server must run as root)."""
        body: dict[str, Any] = {"user": user, "admin": admin}
        if unix_user is not None:
            body["unix_user"] = unix_user
        if description is not None:
            body["description"] = description
        return self._parse(NewToken, self._request("POST", "/v1/tokens", json=body))

    def tokens(self) -> builtins.list[Token]:
        """Every API key (never the keys themselves), newest first."""
        body = self._json(self._request("GET", "/v1/tokens"))
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, builtins.list):
            raise self._unexpected("a token list was expected")
        return [self._validate(Token, item) for item in items]

    def revoke_token(self, token_id: str) -> Token:
        """Revoke a key (its requests then get 401); revoking it again changes nothing.
        ``NotFound`` when there is no such key."""
        if token_id in ("", ".", ".."):
            raise NotFound(404, {}, f"no token {token_id!r}")
        path = "/v1/tokens/" + quote(token_id, safe="")
        return self._parse(Token, self._request("DELETE", path))

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
        new output as it is written, until the workload ends (no read timeout then)."""
        params = {"follow": "true"} if follow else {}
        if tail is not None:
            params["tail"] = str(tail)
        timeout = httpx.Timeout(self.timeout, read=None) if follow else httpx.USE_CLIENT_DEFAULT
        path = self._path(workload_id, "logs")
        response = self._request("GET", path, params=params, timeout=timeout, stream=True)
        try:
            yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        finally:
            response.close()

    def follow_logs(self, workload_id: str, *, tail: int | None = None) -> Iterator[bytes]:
        """``stream_logs(..., follow=True)``: new output as it is written, until the
        workload ends."""
        return self.stream_logs(workload_id, tail=tail, follow=True)

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

    # --- plumbing -------------------------------------------------------------------

    @staticmethod
    def _path(workload_id: str, *rest: str) -> str:
        if workload_id in ("", ".", ".."):
            raise NotFound(404, {}, f"no workload {workload_id!r}")
        return "/".join(("/v1/workloads", quote(workload_id, safe=""), *rest))

    def _request(
        self, method: str, path: str, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """Send, retrying 429 and 503 (see the class docstring); raise the typed error
        of an error answer. With ``stream``, the caller reads and closes the body."""
        request = self._http.build_request(method, path, **kwargs)
        waited = 0.0
        attempt = 0
        while True:
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                raise self._transport_error(exc) from exc
            if not response.is_error:
                return response
            if stream:
                response.read()
                response.close()
            error = error_from_response(response)
            delay = self._retry_delay(request, error, attempt)
            if delay is None or waited + delay > self.retry_for:
                raise self._explain(error)
            time.sleep(delay)
            waited += delay
            attempt += 1

    @staticmethod
    def _retry_delay(request: httpx.Request, error: APIError, attempt: int) -> float | None:
        """Seconds to wait before sending ``request`` again, or None not to."""
        if error.status == 503:
            safe = (
                request.method in _IDEMPOTENT
                or error.slug == "busy"
                or "Idempotency-Key" in request.headers
            )
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

    def _transport_error(self, exc: httpx.TransportError) -> CorralClientError:
        if isinstance(exc, httpx.ConnectError) and "CERTIFICATE" in str(exc):
            return CorralClientError(
                f"cannot trust the TLS certificate of the corral server at {self.url}"
                f" ({_connect_reason(exc)}); for a certificate of your own CA, set"
                " SSL_CERT_FILE to the CA's certificate"
            )
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return ServerUnreachable(self.url, _connect_reason(exc))
        if isinstance(exc, httpx.TimeoutException):
            return CorralClientError(
                f"the corral server at {self.url} did not answer within {self.timeout:g} s"
            )
        reason = str(exc) or type(exc).__name__
        return CorralClientError(
            f"lost the connection to the corral server at {self.url}: {reason}"
        )

    def _unexpected(self, what: str) -> CorralClientError:
        return CorralClientError(
            f"unexpected answer from {self.url} ({what}); is it a corral server?"
        )

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise self._unexpected("not JSON") from None

    def _validate(self, model: type[M], data: Any) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise self._unexpected(
                f"not a valid {model.__name__}: {exc.error_count()} errors"
            ) from None

    def _parse(self, model: type[M], response: httpx.Response) -> M:
        return self._validate(model, self._json(response))
