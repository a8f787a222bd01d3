"""The request guard: one pure ASGI middleware that every request passes before a
route sees it (design: ``docs/security.md``).

In order: the ``Host`` must be one the server serves (DNS rebinding fails); a
state-changing request from a foreign ``Origin`` is refused; every route but the
public ones needs a valid bearer key, whose principal is put in
``scope["corral.principal"]``; each key has a request budget (a token bucket); a
metrics key reaches ``GET /metrics`` only. A stream (events, a followed log) asks
``still_allowed`` before it sends more, so a key revoked while its streams are open
stops getting data within ``KEY_CACHE_SECONDS`` (at once through this server).
Refusals are problem details, built by ``problems.problem`` like every other error.
(That a body is declared ``application/json`` is checked where bodies are read,
``routes.parse_body``, after routing: an unknown method answers 405 first.)
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.api.docs import ASSET_PATHS, DOCS_PATH, OAUTH2_REDIRECT_PATH
from corral.api.problems import RETRY_AFTER_SECONDS, problem
from corral.api.web import WEB_PATHS
from corral.keys import key_digest
from corral.store.base import Principal
from corral.store.errors import DatabaseError, StoreBusyError

T = TypeVar("T")
PRINCIPAL = "corral.principal"
KEY_CHECK = "corral.key_check"
"""In the scope of a request made with a key: ``await check()`` says whether that key
is still valid (``still_allowed``)."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
"""Kubernetes' probes: served whatever the ``Host`` (the kubelet sends the pod's IP,
which no ``--allowed-host`` names in advance; the answers say only ok or down, so a
page that rebinds a name to this server learns nothing from them), and to ``HEAD`` as
to ``GET`` (the server sends no body)."""
PUBLIC_PATHS = frozenset(
    {
        *PROBE_PATHS,
        DOCS_PATH,
        OAUTH2_REDIRECT_PATH,
        "/openapi.json",
        *ASSET_PATHS,
        *WEB_PATHS,
    }
)
"""Reachable without a key: liveness and readiness for probes, the API's own
description, and the dashboard's page and files (``web.py``: code only; it asks for a
key to call the API)."""
METRICS_PATH = "/metrics"
METRICS_KEY_REACHES = frozenset({("GET", METRICS_PATH)})
"""All a metrics key may do (every other route answers it 403, before routing)."""
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
KEY_CACHE_SECONDS = 2.0
"""How long a key found valid is trusted without a database read (a revoke through
this server clears the cache at once)."""
MISSING_KEY = (
    "this route needs an API key: send 'Authorization: Bearer KEY'. corral serve writes"
    " an admin key to DATA_DIR/token on its first start (the CLI and corral.Client read"
    " it, or $CORRAL_TOKEN); an admin makes more with: corral token create --user NAME"
)


@dataclass(frozen=True)
class AccessPolicy:
    """Who may reach the API, and how (the server's settings)."""

    auth: bool = True
    """False only with ``--no-auth``: every request is ``anonymous``, an admin."""
    anonymous: Principal = field(default_factory=lambda: Principal(None, "admin", True))
    allowed_hosts: frozenset[str] = LOOPBACK_HOSTS
    """Names (or addresses) the ``Host`` header may carry; ``*`` allows any."""
    allowed_origins: frozenset[str] = frozenset()
    """Origins (``scheme://host[:port]``) other than the server's own that may change
    state, and get CORS answers."""
    rate_limit: float = 0.0
    """Requests per second per key (a burst of twice that); 0: no limit."""


def principal(request: Request) -> Principal:
    """Who the request speaks for (set by the guard)."""
    found: Principal = request.scope[PRINCIPAL]
    return found


async def still_allowed(request: Request) -> bool:
    """Whether the key the request was made with is still valid (not revoked since):
    what a long stream asks before it sends more. A valid key is remembered for
    ``KEY_CACHE_SECONDS``, so asking often costs a database read that often at most;
    a database that does not answer leaves the key valid (streams ride out an outage)."""
    check: Callable[[], Awaitable[bool]] | None = request.scope.get(KEY_CHECK)
    return True if check is None else await check()


async def while_allowed(request: Request, chunks: AsyncIterator[T]) -> AsyncIterator[T]:
    """``chunks`` (a stream's body) as long as ``still_allowed``: asked before each
    one, the stream ends once the key is revoked (reconnecting then gets the 401)."""
    async for chunk in chunks:
        if not await still_allowed(request):
            return
        yield chunk


BUCKETS_MAX = 100_000
"""Buckets kept at most (one a key); full ones are dropped first."""


class _Buckets:
    """A token bucket per key: ``rate`` tokens a second, at most ``2 * rate`` kept."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, 2 * rate)
        self.clock = clock
        self._buckets: dict[str | None, tuple[float, float]] = {}

    def take(self, key: str | None) -> float:
        """0 when the request may go on, else the seconds until it may."""
        now = self.clock()
        if key not in self._buckets and len(self._buckets) >= BUCKETS_MAX:
            self._forget_full(now)
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        """Drop every bucket that has refilled (it is as good as new); if none has,
        drop them all rather than grow without end."""
        full = [
            k
            for k, (t, last) in self._buckets.items()
            if t + (now - last) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        if not full:
            self._buckets.clear()


class KeyCache:
    """``await find(sha256)``: the store's ``find_api_key``, remembering a valid key
    for ``KEY_CACHE_SECONDS`` (a revoke through this server calls ``forget``). A
    lookup under way while ``forget`` is called is not remembered: it may have read
    the key before the revoke committed."""

    def __init__(self, lookup: Callable[[str], Awaitable[Principal | None]]) -> None:
        self.lookup = lookup
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._generation = 0  # counts forget()s

    async def find(self, digest: str) -> Principal | None:
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        generation = self._generation
        found = await self.lookup(digest)
        if found is None:
            self._cache.pop(digest, None)
            return None
        if generation != self._generation:
            return found  # answered for this request, not remembered
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (found, now + KEY_CACHE_SECONDS)
        return found

    def forget(self) -> None:
        self._generation += 1
        self._cache.clear()

    def keep(self, digest: str) -> None:
        """A key found valid before is taken as valid for another ``KEY_CACHE_SECONDS``
        (the database did not answer: a stream asks again then, not at every chunk)."""
        cached = self._cache.get(digest)
        if cached is not None:
            self._cache[digest] = (cached[0], time.monotonic() + KEY_CACHE_SECONDS)


class Guard:
    """See the module docstring; ``keys`` looks keys up (and remembers valid ones)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: AccessPolicy,
        keys: KeyCache,
    ) -> None:
        self.app = app
        self.policy = policy
        self.keys = keys
        self._buckets = _Buckets(policy.rate_limit) if policy.rate_limit > 0 else None
        self._any_host = "*" in policy.allowed_hosts
        self._cors = (
            CORSMiddleware(
                self._checked,
                allow_origins=sorted(policy.allowed_origins),
                allow_methods=["GET", "POST", "PUT", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
                expose_headers=["Location", "Idempotent-Replayed", "Retry-After"],
            )
            if policy.allowed_origins
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # none is served: refuse before any route
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers, repeated = _headers(scope)
        if repeated:
            detail = f"the {repeated} header is given more than once"
            await problem(400, "bad-request", detail)(scope, receive, send)
            return
        if scope["path"] in PROBE_PATHS:
            if scope["method"] == "HEAD":  # the server (uvicorn) still sends no body
                scope = {**scope, "method": "GET"}
            scope["corral.headers"] = headers
            await self._checked(scope, receive, send)
            return
        host = headers.get("host", "")
        if not self._any_host and _hostname(host) not in self.policy.allowed_hosts:
            detail = (
                f"this server does not serve the host {host!r}; an operator allows more"
                " names with --allowed-host"
            )
            await problem(400, "host-not-allowed", detail)(scope, receive, send)
            return
        scope["corral.headers"] = headers
        if self._cors is not None and headers.get("origin") in self.policy.allowed_origins:
            await self._cors(scope, receive, send)
            return
        await self._checked(scope, receive, send)

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = scope["corral.headers"]
        method: str = scope["method"]
        if method in UNSAFE_METHODS and not self._same_origin(scope, headers):
            origin = headers.get("origin") or headers.get("sec-fetch-site", "")
            detail = (
                f"cross-origin {method} refused (origin {origin!r}); an operator allows an"
                " origin with --allowed-origin"
            )
            await problem(403, "origin-not-allowed", detail)(scope, receive, send)
            return
        if scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        who = await self._principal(headers.get("authorization"))
        if isinstance(who, StoreBusyError):
            response = problem(503, "busy", str(who))
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            await response(scope, receive, send)
            return
        if isinstance(who, str):
            challenge = 'Bearer realm="corral"' + (', error="invalid_token"' if who else "")
            response = problem(401, "unauthorized", who or MISSING_KEY)
            response.headers["WWW-Authenticate"] = challenge
            await response(scope, receive, send)
            return
        if self._buckets is not None:
            wait = self._buckets.take(who.key_id)
            if wait:
                seconds = max(1, math.ceil(wait))
                detail = (
                    f"too many requests with this key (the limit is {self.policy.rate_limit:g}"
                    f" a second); retry in {seconds} s"
                )
                response = problem(429, "rate-limited", detail)
                response.headers["Retry-After"] = str(seconds)
                await response(scope, receive, send)
                return
        if who.metrics and (method, scope["path"]) not in METRICS_KEY_REACHES:
            detail = (
                f"this is a metrics key: it may only GET {METRICS_PATH}, not {method}"
                f" {scope['path']}; use a user or admin key for the API"
            )
            await problem(403, "forbidden", detail)(scope, receive, send)
            return
        scope[PRINCIPAL] = who
        if self.policy.auth:
            scope[KEY_CHECK] = functools.partial(
                self._still_valid, key_digest(headers["authorization"].partition(" ")[2].strip())
            )
        await self.app(scope, receive, send)

    async def _still_valid(self, digest: str) -> bool:
        try:
            return await self.keys.find(digest) is not None
        except (StoreBusyError, DatabaseError):
            self.keys.keep(digest)  # the database's fault, not the key's
            return True

    def _same_origin(self, scope: Scope, headers: dict[str, str]) -> bool:
        """True unless a browser says the request comes from another site that is not
        allowed. Requests without ``Origin`` (curl, the CLI) are not cross-origin."""
        origin = headers.get("origin")
        if origin is None:
            site = headers.get("sec-fetch-site", "").lower()
            return site not in ("cross-site", "same-site")
        if origin in self.policy.allowed_origins:
            return True
        scheme = scope.get("scheme", "http")
        return origin == f"{scheme}://{headers.get('host', '')}"

    async def _principal(self, authorization: str | None) -> Principal | str | StoreBusyError:
        """The key's principal, or why not: "" for no key, else the reason (or the
        database's fault). Invalid keys are not throttled here: guessing is futile at
        256 bits, each costs one indexed read, and a per-address budget would lock out
        everyone behind the same proxy as a guesser; limiting floods is a proxy's job."""
        if not self.policy.auth:
            return self.policy.anonymous
        if authorization is None:
            return ""
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return "the Authorization header must be 'Bearer KEY'"
        try:
            found = await self.keys.find(key_digest(key))
        except StoreBusyError as exc:
            return exc
        if found is None:
            return "the API key is not valid: unknown, or revoked"
        return found


def _headers(scope: Scope) -> tuple[dict[str, str], str | None]:
    """The headers the guard reads, decoded, and the name of one given twice (parsers
    disagree on which of two counts, so neither does)."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED:
            key = name.decode()
            if key in found:
                return found, key
            found[key] = value.decode("latin-1")
    return found, None


_WANTED = frozenset({b"host", b"origin", b"sec-fetch-site", b"authorization"})


_HOST_RE = re.compile(r"^(?:\[([0-9a-f:.]+)\]|([a-z0-9.-]+))(?::[0-9]{1,5})?$")


def _hostname(host: str) -> str:
    """``Host`` without its port, lower case: ``[::1]:8765`` -> ``::1``; "" for
    anything but a name or an address and an optional port."""
    match = _HOST_RE.fullmatch(host.lower())
    if match is None:
        return ""
    return match.group(1) or match.group(2)


def host_name(name: str) -> str | None:
    """An ``--allowed-host`` value as the guard compares it (``::1``, ``[::1]`` ->
    ``::1``; lower case), or None when no ``Host`` header could ever name it."""
    bare = name.lower().strip("[]")
    return bare if _hostname(f"[{bare}]" if ":" in bare else bare) == bare else None
