"""Logs from anywhere: a log request is answered by the server that keeps the log
(docs/postgres.md, Phase 2, "Logs from anywhere: proxy").

**Who keeps a log** (``log_keeper``, pure). With the local executor, the server that
ran the workload, on its own disk: the workload's ``node`` is that server's name.
With the Ray executor, the scheduling server (the lease holder), which pulls every
node's copy of a running workload's log. A workload that never ran has no log
anywhere.

**Forwarding** (``LogProxy``). A server asked for a log that another server keeps
sends the same request (``GET``, path and query string: ``follow``, ``tail``) to that
server's ``url`` (its ``servers`` row) with the caller's own ``Authorization``
header: every server checks keys against the same database, so there is no
server-to-server secret, and the keeper checks the key and the owner again. The
answer is streamed back as it arrives: status, content type, body chunks, a
``follow`` until it ends; the caller going away closes the request upstream.

- **What passes through, what is wrapped.** A success passes through, and so do
  corral's errors about the caller or the workload (401, 403, 404, 422, 429) and
  about the database or the log itself (503 ``busy``, 503 ``log-unavailable``, 507):
  the keeper's words are the user's answer. Any other answer is about the hop, and
  would mislead as the asked server's own (a 400 "this server does not serve the
  host …" for a Host the keeper refuses, a redirect, a 500, a proxy's 502, a 404
  from something that is not corral at that URL): a 503 ``log-unavailable`` naming
  the keeper, its URL, and what it answered, in one line.
- **No loops.** A forwarded request carries ``Corral-Forwarded-By: <name>``; a
  server never forwards a request that carries it, so two servers that disagree
  about who keeps a log (a stale URL, two rows naming one address) cannot bounce a
  request between them. It answers from here when it keeps the log (by name; a log
  not written yet is empty, as asked directly), when the log is on its disk (a
  server renamed: its old name's row still names its address), or when no server
  keeps one (it never ran). Otherwise the request reached the wrong server (the
  keeper's ``--advertise-url`` leads here): a 503 ``log-unavailable`` naming the
  forwarder, this server and the keeper, and the URL to check, never an empty 200
  that a client would take for an empty log.
- **A keeper out of reach** (no URL, connection refused, no connection within
  ``CONNECT_SECONDS``, no answer within ``ANSWER_SECONDS``): 503, "the log of W is
  kept by server X, which is not reachable (last seen T)" (T by the database clock).
  A keeper that no ``servers`` row names is this server when the log is on its disk
  (a workload run before servers had names: its node is the host name), else
  that 503 ("no server of that name has registered").
- **A keeper lost in the middle of a body** cuts the body (the connection closes
  without its end), so a client never takes a cut log, or a follow cut short, for a
  whole one.
- **A follow of a workload that has not started** waits (reading the workload every
  ``FOLLOW_POLL_SECONDS``, as a local follow does) until it has: with the local
  executor its keeper is known only then. A workload that ends without running has
  no log: the answer is an empty one, from here.
- **Timeouts.** Connecting: ``CONNECT_SECONDS``. The answer's head: within
  ``ANSWER_SECONDS`` (a keeper stopped by SIGSTOP still accepts connections, its
  kernel does, and would otherwise hold the request for ever). The body: no read
  timeout for a follow (output may pause for hours), ``READ_SECONDS`` between two
  chunks otherwise. One ``httpx.AsyncClient`` per app (opened and closed by its
  lifespan), without a bound on connections (each follow holds one), without proxies
  from the environment (servers reach each other directly), and idle connections
  dropped before uvicorn's 5 s keep-alive ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from corral.logs import FOLLOW_POLL_SECONDS, LogUnavailableError
from corral.model import TERMINAL, Workload
from corral.serverlog import mark_logged
from corral.store import Store
from corral.store.cluster import ServerInfo
from corral.store.errors import StorageFullError, StoreBusyError

log = logging.getLogger("corral.api")

FORWARDED_BY = "Corral-Forwarded-By"
"""The header a forwarded log request carries: the forwarding server's name."""
CONNECT_SECONDS = 2.0
ANSWER_SECONDS = 10.0
READ_SECONDS = 30.0
KEEPALIVE_SECONDS = 4.0
"""Idle connections to other servers are dropped before uvicorn's 5 s would."""
PASSED_HEADERS = ("content-type", "retry-after", "www-authenticate")
"""The keeper's answer headers passed on (the body is re-framed here)."""
PASSED_ERRORS = frozenset({401, 403, 404, 422, 429})
"""The keeper's corral problems about the caller or the workload: passed through."""
PASSED_FAULTS = frozenset({"busy", "log-unavailable", "storage-full"})
"""The keeper's corral 503/507 problems passed through (the database, the log)."""
ERROR_BODY_MAX = 8192
"""How much of an error answer is read from the keeper (a corral problem is < 1 KB)."""
PROBLEM_PREFIX = "urn:corral:problem:"


def log_keeper(workload: Workload, executor_kind: str, lease_holder: str | None) -> str | None:
    """The name of the server that keeps ``workload``'s log, or None when no server
    does (it never ran; with Ray, no server has ever held the scheduler lease).

    ``executor_kind`` is the executor that runs the cluster's workloads: ``ray``
    (logs are pulled to the scheduling server, ``lease_holder``); anything else
    (``local``) keeps a log on the disk of the server named by ``workload.node``."""
    if workload.node is None and workload.status in TERMINAL:
        return None  # ended without running: no log anywhere
    if executor_kind == "ray":
        return lease_holder
    return workload.node


@dataclass(frozen=True, slots=True)
class Keeper:
    """The server that keeps a log: its name and its ``servers`` row (None when no
    server of that name has registered)."""

    name: str
    server: ServerInfo | None


class LogKeeperUnreachableError(LogUnavailableError):
    """The log is kept by another server, which cannot be reached (a 503)."""


class LogKeeperRefusedError(LogUnavailableError):
    """The keeper's URL answered with an error about the hop (a 503)."""


class LogMisroutedError(LogUnavailableError):
    """A forwarded request reached a server that does not keep the log (a 503)."""


class LogRelayBrokenError(Exception):
    """The keeper's answer broke off in the middle of its body (logged already; the
    connection to the caller is closed without the body's end)."""


class LogProxy:
    """The logs route's view of the other servers on the database: where a log is
    kept (``keeper``) and the forwarding to it (``answer``).

    ``this_server`` is this server's name (its ``servers`` row); ``executor_kind``
    the kind of executor the cluster runs workloads with (``local`` or ``ray``);
    ``answer_seconds`` how long a keeper has to send its answer's head. ``open`` and
    ``close`` bracket the app's life (its lifespan)."""

    def __init__(
        self,
        store: Store,
        *,
        this_server: str,
        executor_kind: str,
        answer_seconds: float = ANSWER_SECONDS,
    ) -> None:
        self.store = store
        self.this_server = this_server
        self.executor_kind = executor_kind
        self.answer_seconds = answer_seconds
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(READ_SECONDS, connect=CONNECT_SECONDS, pool=None),
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=32,
                keepalive_expiry=KEEPALIVE_SECONDS,
            ),
            trust_env=False,
            follow_redirects=False,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @staticmethod
    def forwarded(request: Request) -> bool:
        """True for a request another server forwarded here (never forwarded again)."""
        return FORWARDED_BY in request.headers

    async def keeper(self, workload: Workload) -> Keeper | None:
        """The other server that keeps ``workload``'s log; None when this server
        keeps it, or none does (both answered from here)."""
        holder = None
        if self.executor_kind == "ray":
            holder = (await self.store.get_lease()).holder
        name = log_keeper(workload, self.executor_kind, holder)
        if name is None or name == self.this_server:
            return None
        servers = await self.store.list_servers()
        return Keeper(name, next((s for s in servers if s.name == name), None))

    async def received(self, workload: Workload, request: Request, *, here: Path) -> None:
        """Check that a forwarded ``request`` for ``workload``'s log reached the
        server that keeps it: return when this server answers it (it keeps the log,
        the log is on its disk at ``here``, or no server keeps one), else raise
        ``LogMisroutedError``."""
        keeper = await self.keeper(workload)
        if keeper is None or here.exists():
            return
        by = "".join(c for c in request.headers.get(FORWARDED_BY, "")[:64] if c.isprintable())
        server = keeper.server
        if server is None:
            check = "no server of that name has registered"
        elif server.url:
            check = f"check server {keeper.name}'s --advertise-url ({server.url}), which leads here"
        else:
            check = f"server {keeper.name} has no URL"
        log.warning(
            "server %s forwarded the request for the log of %s here, but server %s keeps it",
            by,
            workload.id,
            keeper.name,
            extra={"id": workload.id, "server": keeper.name},
        )
        raise LogMisroutedError(
            f"server {by} forwarded the request for the log of {workload.id} to server"
            f" {self.this_server}, but server {keeper.name} keeps it: {check}"
        )

    async def answer(
        self, workload: Workload, request: Request, *, follow: bool, here: Path
    ) -> Response | None:
        """The keeper's answer to ``request`` for ``workload``'s log (checked
        visible to the caller already), or None when this server answers it.
        ``LogKeeperUnreachableError`` when the keeper cannot be reached.

        ``here`` is where this server would keep that log: a keeper that no
        ``servers`` row names (a workload from before servers had names, when the
        host name was its node) is this server when the log is here."""
        if follow and self.executor_kind != "ray":
            started = await self._started(workload, request)
            if started is None:  # the caller left while it waited: nobody reads this
                return Response(media_type="text/plain")
            workload = started
        keeper = await self.keeper(workload)
        if keeper is None or (keeper.server is None and here.exists()):
            return None
        return await self.forward(keeper, workload.id, request, follow=follow)

    async def _started(self, workload: Workload, request: Request) -> Workload | None:
        """``workload`` once it has a node or has ended (read again every
        ``FOLLOW_POLL_SECONDS``); None if the caller disconnects first."""
        while workload.node is None and workload.status not in TERMINAL:
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
            if await request.is_disconnected():
                return None
            try:
                workload = await self.store.get_workload(workload.id)
            except (StorageFullError, StoreBusyError):
                continue  # ask again on the next poll
        return workload

    async def forward(
        self, keeper: Keeper, workload_id: str, request: Request, *, follow: bool
    ) -> Response:
        """Send ``request`` to ``keeper`` and stream its answer back."""
        assert self._client is not None, "LogProxy.open() was not awaited (the app's lifespan)"
        server = keeper.server
        if server is None or not server.url:
            raise self._unreachable(keeper, workload_id, "no URL")
        url = server.url.rstrip("/") + request.url.path
        query = request.scope.get("query_string", b"")
        headers = {FORWARDED_BY: self.this_server, "Accept-Encoding": "identity"}
        authorization = request.headers.get("authorization")
        if authorization is not None:
            headers["Authorization"] = authorization
        timeout = httpx.Timeout(
            None if follow else READ_SECONDS, connect=CONNECT_SECONDS, pool=None
        )
        try:
            # (a URL no client takes, from a row an older corral wrote: unreachable too)
            upstream_request = self._client.build_request(
                "GET", httpx.URL(url, query=query), headers=headers, timeout=timeout
            )
            async with asyncio.timeout(self.answer_seconds):
                upstream = await self._client.send(upstream_request, stream=True)
        except (httpx.TransportError, httpx.InvalidURL, TimeoutError) as exc:
            cause = str(exc) or type(exc).__name__
            raise self._unreachable(keeper, workload_id, cause) from None
        passed = {k: v for k in PASSED_HEADERS if (v := upstream.headers.get(k)) is not None}
        status = upstream.status_code
        if status < 300:
            return StreamingResponse(
                _relay(upstream, workload_id, keeper.name), status_code=status, headers=passed
            )
        try:
            body = await self._error_body(upstream)
        finally:
            await upstream.aclose()
        kind = _corral_problem(upstream, body)
        if kind is not None and (status in PASSED_ERRORS or kind in PASSED_FAULTS):
            return Response(body, status_code=status, headers=passed)
        raise self._refused(keeper, workload_id, upstream, body)

    async def _error_body(self, upstream: httpx.Response) -> bytes:
        """The start of an error answer's body (``ERROR_BODY_MAX``), as much as
        arrives within ``answer_seconds``."""
        body = b""
        with contextlib.suppress(httpx.TransportError, TimeoutError):
            async with asyncio.timeout(self.answer_seconds):
                async for chunk in upstream.aiter_raw():
                    body += chunk
                    if len(body) >= ERROR_BODY_MAX:
                        break
        return body[:ERROR_BODY_MAX]

    def _refused(
        self, keeper: Keeper, workload_id: str, upstream: httpx.Response, body: bytes
    ) -> LogKeeperRefusedError:
        assert keeper.server is not None and keeper.server.url
        status = upstream.status_code
        said = _said(upstream, body)
        log.warning(
            "server %s answered %d to the request for the log of %s: %s",
            keeper.name,
            status,
            workload_id,
            said,
            extra={"id": workload_id, "server": keeper.name},
        )
        return LogKeeperRefusedError(
            f"the log of {workload_id} is kept by server {keeper.name}, whose URL"
            f" {keeper.server.url} answered {said}"
        )

    def _unreachable(
        self, keeper: Keeper, workload_id: str, cause: str
    ) -> LogKeeperUnreachableError:
        server = keeper.server
        if server is None:
            seen = "no server of that name has registered"
        elif server.url:
            seen = f"last seen {server.last_seen or 'never'}"
        else:
            seen = f"last seen {server.last_seen or 'never'}; it has no URL"
        log.warning(
            "cannot reach server %s for the log of %s: %s",
            keeper.name,
            workload_id,
            cause,
            extra={"id": workload_id, "server": keeper.name},
        )
        return LogKeeperUnreachableError(
            f"the log of {workload_id} is kept by server {keeper.name},"
            f" which is not reachable ({seen})"
        )


def _corral_problem(upstream: httpx.Response, body: bytes) -> str | None:
    """The problem type (its slug) of a corral problem answer, else None (an answer
    from something that is not corral, or not an error of corral's)."""
    if upstream.headers.get("content-type", "").split(";")[0].strip() != "application/problem+json":
        return None
    try:
        problem = json.loads(body)
    except ValueError:
        return None
    kind = problem.get("type") if isinstance(problem, dict) else None
    if not isinstance(kind, str) or not kind.startswith(PROBLEM_PREFIX):
        return None
    return kind.removeprefix(PROBLEM_PREFIX)


def _said(upstream: httpx.Response, body: bytes) -> str:
    """What an error answer says, on one line: ``400 Bad Request: <its detail>``
    (a problem's detail, else the start of its text), and where a redirect leads."""
    status = upstream.status_code
    said = f"{status} {upstream.reason_phrase}".rstrip()
    location = upstream.headers.get("location")
    if 300 <= status < 400 and location:
        said += f" (to {location})"
    detail = None
    try:
        problem = json.loads(body)
    except ValueError:
        problem = None
    if isinstance(problem, dict) and isinstance(problem.get("detail"), str):
        detail = problem["detail"]
    if detail is None:
        detail = body.decode("utf-8", errors="replace")
    detail = " ".join("".join(c if c.isprintable() else " " for c in detail).split())
    if len(detail) > 300:
        detail = detail[:300] + "…"
    return f"{said}: {detail}" if detail else said


async def _relay(upstream: httpx.Response, workload_id: str, keeper: str) -> AsyncIterator[bytes]:
    """The keeper's body as it arrives; its response is closed however this ends (the
    caller gone included: the keeper then sees its caller gone)."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.TransportError as exc:
        log.warning(
            "the log of %s from server %s broke off: %s",
            workload_id,
            keeper,
            str(exc) or type(exc).__name__,
            extra={"id": workload_id, "server": keeper},
        )
        broken = LogRelayBrokenError(f"the log of {workload_id} from server {keeper} broke off")
        mark_logged(broken)
        raise broken from None
    finally:
        with anyio.CancelScope(shield=True):
            await upstream.aclose()
