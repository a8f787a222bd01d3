"""``corral.Client``: a synchronous Python client for the corral HTTP API (``/v1``).

::

    from corral import Client

    with Client() as corral:                      # $CORRAL_URL, else http://127.0.0.1:8765
        workload = corral.submit(["python", "train.py"], gpus=1, labels={"team": "ml"})
        done = corral.wait(workload.id)
        print(done.status, done.exit_code, corral.logs(done.id, tail=20))

Results are ``corral.model.Workload`` and ``Event`` objects. Every failure is raised as
one of these errors, each with a message fit to show a user as is::

    CorralClientError               root: anything the client could not do
    ├── ServerUnreachable           no connection (refused, unknown host, connect timeout)
    ├── WaitTimeout                 wait(timeout=…) ran out; .workload is the last seen
    └── APIError                    the server answered with an error (.status, .problem, .detail)
        ├── NotFound                404: no such workload
        ├── InvalidTransition       409: the state machine forbids it (.current_status,
        │                                .requested_status, .allowed)
        └── InvalidInput            422 (invalid body, filter, reused idempotency key), 413
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from corral import __version__
from corral.config import DEFAULT_PORT, DEFAULT_URL
from corral.model import TERMINAL, Event, Status, Workload

PROBLEM_TYPE_PREFIX = "urn:corral:problem:"
WAIT_MIN_DELAY = 0.05
WAIT_MAX_DELAY = 1.0
LIST_PAGE_MAX = 1000

__all__ = [
    "APIError",
    "Client",
    "CorralClientError",
    "InvalidInput",
    "InvalidTransition",
    "NotFound",
    "ServerUnreachable",
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

    def __init__(self, status: int, problem: dict[str, Any], detail: str) -> None:
        self.status = status
        self.problem = problem
        self.detail = detail
        super().__init__(detail)

    @property
    def slug(self) -> str | None:
        """The problem type without its ``urn:corral:problem:`` prefix."""
        return _slug(self.problem)


class NotFound(APIError):
    """404: no such workload (or route)."""


class InvalidTransition(APIError):
    """409: the state machine forbids the change (e.g. killing a finished workload)."""

    def __init__(self, status: int, problem: dict[str, Any], detail: str) -> None:
        super().__init__(status, problem, detail)
        self.current_status = _status_or_none(problem.get("current_status"))
        self.requested_status = _status_or_none(problem.get("requested_status"))
        allowed = problem.get("allowed")
        self.allowed: list[Status] = [
            s for s in map(_status_or_none, allowed if isinstance(allowed, list) else []) if s
        ]


class InvalidInput(APIError):
    """422 (invalid body or filter, reused idempotency key) or 413 (body too large)."""


_BY_SLUG: dict[str, type[APIError]] = {
    "not-found": NotFound,
    "invalid-transition": InvalidTransition,
    "invalid-input": InvalidInput,
    "idempotency-key-reused": InvalidInput,
    "body-too-large": InvalidInput,
}
_BY_STATUS: dict[int, type[APIError]] = {
    404: NotFound,
    409: InvalidTransition,
    413: InvalidInput,
    422: InvalidInput,
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
    cls = _BY_SLUG.get(_slug(problem) or "") or _BY_STATUS.get(status, APIError)
    return cls(status, problem, detail)


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


class Client:
    """A synchronous client for one corral server; use it as a context manager or
    call ``close()``. Safe to share between threads."""

    def __init__(self, url: str | None = None, *, timeout: float = 30.0) -> None:
        self.url = _normalize_url(url or os.environ.get("CORRAL_URL") or DEFAULT_URL)
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            headers={"User-Agent": f"corral-client/{__version__}"},
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
    ) -> Iterator[Workload]:
        """Workloads newest first, fetched ``page_size`` at a time; any of ``status``,
        every one of ``labels``; at most ``limit`` of them."""
        params: builtins.list[tuple[str, str]] = [("status", str(s)) for s in status]
        params += [("label", f"{k}={v}") for k, v in (labels or {}).items()]
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
        try:
            with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    raise error_from_response(response)
                yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc

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

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        if response.is_error:
            raise error_from_response(response)
        return response

    def _transport_error(self, exc: httpx.TransportError) -> CorralClientError:
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
