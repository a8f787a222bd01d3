"""RFC 9457 problem details: every error response of the API is built here.

Domain errors (``corral.errors``) and framework errors (validation, unknown routes,
oversized bodies) are mapped to ``application/problem+json`` in one place; routes
never build error responses themselves.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette._utils import get_route_path
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from corral.errors import (
    CorralError,
    ExceedsCapacityError,
    FieldError,
    ForbiddenError,
    InvalidInputError,
    UnsupportedMediaTypeError,
    format_loc,
)
from corral.logs import LogUnavailableError
from corral.model import Status
from corral.serverlog import mark_logged
from corral.store.errors import (
    IdempotencyKeyReusedError,
    InvalidTransitionError,
    NotFoundError,
    StorageFullError,
    StoreBusyError,
    TokenNotFoundError,
    UnixUserConflictError,
)

log = logging.getLogger("corral.api")

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:corral:problem:"
RETRY_AFTER_SECONDS = 1
"""``Retry-After`` of a 503 ``busy``: the server's busy timeout is 1 s."""
RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
}
"""The OpenAPI ``headers`` of a 429 or 503."""
READ_FAULTS = (503,)
"""What a route that reads the store may answer besides its own codes."""
WRITE_FAULTS = (503, 507)
"""What a route that writes the store may answer besides its own codes."""


class Problem(BaseModel):
    """An RFC 9457 problem; ``type`` is ``urn:corral:problem:<slug>``."""

    type: str
    title: str
    status: int
    detail: str


class TransitionProblem(Problem):
    """A 409 from the state machine."""

    current_status: Status
    requested_status: Status
    allowed: list[Status]


class ValidationProblem(Problem):
    """A 422: ``errors`` lists each invalid field (``loc`` is its path)."""

    errors: list[dict[str, Any]] = []


class BodyTooLargeError(CorralError):
    """The request body is larger than the server accepts."""


def problem(status: int, slug: str, detail: str, **extra: Any) -> Response:
    body = {
        "type": TYPE_PREFIX + slug,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(json.dumps(body), status_code=status, media_type=PROBLEM_JSON)


def _clean_errors(errors: Any) -> list[dict[str, Any]]:
    cleaned = []
    for err in errors:
        item = {
            "loc": list(err.get("loc", ())),
            "msg": str(err.get("msg", "")),
            "type": err.get("type"),
        }
        cleaned.append(item)
    return cleaned


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        where = format_loc([p for p in err["loc"] if p != "body"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


PROBLEMS: dict[type[CorralError], tuple[int, str]] = {
    NotFoundError: (404, "not-found"),
    TokenNotFoundError: (404, "not-found"),
    ForbiddenError: (403, "forbidden"),
    UnsupportedMediaTypeError: (415, "unsupported-media-type"),
    UnixUserConflictError: (409, "unix-user-conflict"),
    IdempotencyKeyReusedError: (422, "idempotency-key-reused"),
    ExceedsCapacityError: (422, "invalid-input"),
    InvalidInputError: (422, "invalid-input"),
    BodyTooLargeError: (413, "body-too-large"),
    StorageFullError: (507, "storage-full"),
    StoreBusyError: (503, "busy"),
    LogUnavailableError: (503, "log-unavailable"),
}
"""Each domain error's status and problem type (``InvalidTransitionError`` adds the
state machine's fields; a 503 ``busy`` says when to retry)."""


async def _corral_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, InvalidTransitionError):
        return problem(
            409,
            "invalid-transition",
            str(exc),
            current_status=exc.current.value,
            requested_status=exc.requested.value,
            allowed=[s.value for s in exc.allowed],
        )
    if isinstance(exc, FieldError):
        errors = [{"loc": ["body", *exc.loc], "msg": exc.msg, "type": "value_error"}]
        return problem(422, "invalid-input", str(exc), errors=errors)
    mapped = next((PROBLEMS[c] for c in type(exc).__mro__ if c in PROBLEMS), None)
    if mapped is None:
        _log_unexpected(request, exc)
        return problem(500, "internal", "an unexpected error occurred; the server log has details")
    response = problem(*mapped, str(exc))
    if isinstance(exc, StoreBusyError):
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = _clean_errors(exc.errors())
    return problem(422, "invalid-input", _describe(errors), errors=errors)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
    if status == 404 and detail == "Not Found":
        detail = f"no route for {request.method} {request.url.path}"
    slug = "not-found" if status == 404 else HTTPStatus(status).phrase.lower().replace(" ", "-")
    response = problem(status, slug, detail)
    if exc.headers:
        response.headers.update(exc.headers)
    if status == 405:
        # Starlette names only the first route matching the path; list all of them.
        response.headers["Allow"] = ", ".join(_allowed_methods(request))
    return response


@functools.lru_cache(maxsize=64)
def _template_pattern(template: str) -> re.Pattern[str]:
    """``/v1/workloads/{workload_id}`` as a pattern of the paths it stands for."""
    parts = re.split(r"({[^}]*})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


def _allowed_methods(request: Request) -> list[str]:
    """The methods of the resource at this path, as the API document says them: of
    the documented path templates that match it, the most literal one
    (``/v1/workloads/batch`` takes POST only, though ``/v1/workloads/{id}`` would
    match it too); plus those of the undocumented plain routes (``/docs``)."""
    path = get_route_path(request.scope)
    best: tuple[int, dict[str, object]] | None = None
    for template, operations in request.app.openapi().get("paths", {}).items():
        if _template_pattern(template).fullmatch(path):
            params = template.count("{")
            if best is None or params < best[0]:
                best = (params, operations)
    methods = {m.upper() for m in best[1]} if best else set()
    for route in request.app.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def _log_unexpected(request: Request, exc: Exception) -> None:
    fields = {"method": request.method, "path": request.url.path}
    log.error("unexpected error", exc_info=exc, extra=fields)
    mark_logged(exc)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # Starlette's ServerErrorMiddleware calls this, then re-raises for the server; the
    # traceback is logged here (with the request), and serverlog drops uvicorn's second
    # record of it. The client gets a problem, never a stack.
    _log_unexpected(request, exc)
    return problem(500, "internal", "an unexpected error occurred; the server log has details")


def install(app: FastAPI) -> None:
    """Register the one mapping from exceptions to problem responses."""
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_exception_handler(CorralError, _corral_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error codes a route can return."""
    models: dict[int, type[Problem]] = {409: TransitionProblem, 422: ValidationProblem}
    entries: dict[int | str, dict[str, Any]] = {
        code: {
            "model": models.get(code, Problem),
            "description": HTTPStatus(code).phrase,
        }
        for code in codes
    }
    if 503 in entries:
        entries[503]["description"] = "Service Unavailable: the database is busy; retry"
        entries[503]["headers"] = RETRY_AFTER_HEADER
    if 507 in entries:
        entries[507]["description"] = "Insufficient Storage: the server's disk is full"
    return entries
