"""The request log: every state-changing request (POST, PUT, PATCH, DELETE), at INFO
on ``corral.api`` once it is answered, with the acting user.

It also times every request, reads included, for ``/metrics`` (``observe``): the
route is the template of the route that served it (``scope["route"]``, which
Starlette's router sets on the scope it was given, the direct routes' too).

Fields: ``method``, ``path``, ``status``, ``duration_ms``, ``user`` (``-`` without a
principal), then ``id`` (from a 201's ``Location``) and whatever the route put in
``scope["corral.log"]`` (a dict this middleware adds: create puts the new workload's
``id`` and ``name``, kill its ``id``). Reads (GET, HEAD) are not logged.

The principal is read from ``scope["corral.principal"]`` after the response, so the
auth middleware may sit inside this one, as long as it sets the key on the scope it
was given (not on a copy).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.guard import PRINCIPAL
from corral.serverlog import info_fields

log = logging.getLogger("corral.api")

LOGGED_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOG_KEY = "corral.log"
UNMATCHED = "unmatched"
"""The ``route`` of a request no route served (a 404): never the raw path."""
Observe = Callable[[str, str, int, float], None]
"""Told each request's route template, method, status and seconds."""


def note(scope: Scope, **fields: object) -> None:
    """Add ``fields`` (but the None ones) to this request's log record, if it has one."""
    record = scope.get(LOG_KEY)
    if record is not None:
        record.update((k, v) for k, v in fields.items() if v is not None)


class AccessLog:
    """The request log, and (given ``observe``) every request's time, by route
    template, method and status, for ``/metrics``."""

    def __init__(self, app: ASGIApp, observe: Observe | None = None) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http = scope["type"] == "http"
        logged = http and scope["method"] in LOGGED_METHODS and log.isEnabledFor(logging.INFO)
        if not http or (not logged and self.observe is None):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        fields: dict[str, Any] = {}
        if logged:
            scope[LOG_KEY] = fields
        status = 0
        location: bytes | None = None

        async def logging_send(message: Message) -> None:
            nonlocal status, location
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 201:
                    for name, value in message.get("headers", ()):
                        if name.lower() == b"location":
                            location = value
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        except asyncio.CancelledError:
            status = status or 499  # the client went away before an answer
            raise
        except Exception:
            status = status or 500  # Starlette's outermost layer answers 500 for it
            raise
        finally:
            seconds = time.perf_counter() - start
            if self.observe is not None:
                self.observe(route_of(scope), scope["method"], status, seconds)
            if logged:
                _log(scope, status, seconds, location, fields)


def route_of(scope: Scope) -> str:
    """The path template of the route that served the request, else ``UNMATCHED``."""
    return getattr(scope.get("route"), "path", None) or UNMATCHED


def _log(
    scope: Scope, status: int, seconds: float, location: bytes | None, fields: dict[str, Any]
) -> None:
    principal = scope.get(PRINCIPAL)
    record: dict[str, Any] = {
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "user": principal.user if principal is not None else "-",
    }
    if location is not None:
        record["id"] = location.decode("latin-1").rpartition("/")[2]
    record.update(fields)
    info_fields(log, "request", record)
