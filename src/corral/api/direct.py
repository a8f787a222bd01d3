"""Routes served without FastAPI's per-request machinery.

An endpoint that takes the ``Request`` alone and returns a ready ``Response`` (the
create route, ``routes.create_workload``, and the others written that way) gets
nothing from FastAPI at request time: no parameter to convert, no dependency to
solve, no response model to apply. Yet FastAPI still walks its included routers to
find it, builds two ``AsyncExitStack`` s, and solves an empty set of dependencies:
29 % of a create's CPU, measured in process (``docs/benchmarks.md``, "The request
path, trimmed").

``direct_routes`` puts, in front of the app's routes, a ``DirectRoute`` for each
such endpoint: the same function, run as Starlette runs a plain endpoint
(``starlette.routing.request_response``: the app's exception handlers answer what it
raises, as they do behind FastAPI). It answers only a full match (its path and one of
its methods); anything else falls through to FastAPI's routes, which still document
the endpoint in OpenAPI and decide every 404 and 405 as before. It has no
``path_regex``, so ``problems._allowed_methods`` (the methods of the routes whose
``path_regex`` matches) sees the routes it saw without it.

An endpoint may also take path parameters besides the request (``async def
f(workload_id: WorkloadId, request: Request) -> Response``: get, kill, a status
change, events). Its ``DirectRoute`` matches the route's own pattern, converts the
parameters as Starlette does, and validates them as FastAPI does (each of the
route's own path fields validates its value: the same values, and the same
``RequestValidationError`` for a bad one, answered by the app's handler).
Measured on ``GET /v1/workloads/{id}`` and ``DELETE``: the bulk of FastAPI's time
per request (docs/benchmarks.md, issue 13).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeGuard, get_type_hints

from fastapi._compat import ModelField
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound, Route, request_response
from starlette.types import Receive, Scope, Send


class DirectRoute(BaseRoute):
    """``route``'s endpoint at ``route``'s path and methods, answering full matches
    only (see the module docstring)."""

    def __init__(self, route: APIRoute) -> None:
        self.path = route.path
        self.path_format = route.path_format
        self.methods = frozenset(route.methods or ())
        self.name = route.name
        self.include_in_schema = False
        self.endpoint = route.endpoint
        fields = route.dependant.path_params
        self._pattern = route.path_regex if fields else None
        self._convertors = route.param_convertors
        request = route.dependant.request_param_name or "request"
        self.app = request_response(_with_path_params(route.endpoint, fields, request))

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] not in self.methods:
            return Match.NONE, {}
        path = get_route_path(scope)
        if self._pattern is None:
            if path != self.path:
                return Match.NONE, {}
            params: dict[str, Any] = {}
        else:
            found = self._pattern.match(path)
            if found is None:
                return Match.NONE, {}
            params = {k: self._convertors[k].convert(v) for k, v in found.groupdict().items()}
            params = {**scope.get("path_params", {}), **params}  # (as Starlette's Route)
        # "route": FastAPI's router sets it for its own routes only; the request's
        # timing (access.py, for /metrics) reads the path template there.
        return Match.FULL, {"endpoint": self.endpoint, "path_params": params, "route": self}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)  # the FastAPI route answers for it

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def __repr__(self) -> str:
        return f"DirectRoute(path={self.path!r}, methods={sorted(self.methods)!r})"


def _with_path_params(
    endpoint: Callable[..., Awaitable[Response]], fields: list[ModelField], request_name: str
) -> Callable[[Request], Awaitable[Response]]:
    """``endpoint`` as a function of the request alone (its parameter
    ``request_name``): its path parameters validated as FastAPI validates them (see
    the module docstring)."""
    if not fields:
        return endpoint

    async def call(request: Request) -> Response:
        # What FastAPI's ``request_params_to_args`` does for a path parameter, which
        # is always there once the path matched (that function's general case, with
        # its lookups of aliases and models, took 50 us a request).
        values: dict[str, Any] = {}
        errors: list[Any] = []
        for field in fields:
            value = request.path_params[field.alias]
            got, wrong = field.validate(value, values, loc=("path", field.alias))
            if wrong:
                errors.extend(wrong)
            else:
                values[field.name] = got
        if errors:
            raise RequestValidationError(errors)
        return await endpoint(**{request_name: request}, **values)

    return call


def is_direct(route: BaseRoute) -> TypeGuard[APIRoute]:
    """True for a FastAPI route whose endpoint is ``async def f(request: Request) ->
    Response``, or takes path parameters besides (and nothing else: no query,
    header or body parameter, no dependency)."""
    if not isinstance(route, APIRoute) or not route.methods or route.dependencies:
        return False
    dependant = route.dependant
    if (
        dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or dependant.dependencies
        or set(route.param_convertors) != {f.name for f in dependant.path_params}
        # FastAPI looks an aliased field up by its alias; here, by its name.
        or any(
            f.alias != f.name or f.field_info.validation_alias is not None
            for f in dependant.path_params
        )
    ):
        return False
    endpoint = route.endpoint
    if not inspect.iscoroutinefunction(endpoint):
        return False
    params = list(inspect.signature(endpoint).parameters.values())
    try:
        hints = get_type_hints(endpoint)
    except NameError:  # an annotation naming something local: FastAPI's to serve
        return False
    requests = [p for p in params if hints.get(p.name) is Request]
    return (
        len(requests) == 1
        and len(params) == 1 + len(dependant.path_params)
        and isinstance(hints.get("return"), type)
        and issubclass(hints["return"], Response)
    )


def direct_routes(
    routes: Iterable[BaseRoute], *, behind: Iterable[BaseRoute] = ()
) -> list[DirectRoute]:
    """A ``DirectRoute`` for each route of ``routes`` that ``is_direct``, unless a
    route before it that stays FastAPI's (one of ``routes``, or of ``behind``: the
    app's routes ahead of them) may answer one of its requests (the same method, a
    path both may match: ``/v1/workloads/stats`` declared before
    ``/v1/workloads/{id}``), which a ``DirectRoute`` in front would take from it.
    The routes are the routers' own, as declared, in the app's order: a router
    included with a ``prefix`` or ``dependencies`` would have them bypassed, so
    ``create_app`` includes its routers with neither (``include_router`` refuses
    nothing of the kind: keep it so)."""
    direct: list[DirectRoute] = []
    routed = list(behind)
    for route in routes:
        if is_direct(route) and not any(_may_share(route, other) for other in routed):
            direct.append(DirectRoute(route))
        else:
            routed.append(route)
    return direct


def _may_share(route: APIRoute, other: BaseRoute) -> bool:
    """Whether ``other`` may match a request ``route`` matches (when unsure, yes)."""
    other_methods = getattr(other, "methods", None)
    other_path = getattr(other, "path", None)
    if not isinstance(other, Route) or other_methods is None or other_path is None:
        return True  # a mount, a router, a route of any method: assume the worst
    if not set(route.methods or ()) & set(other_methods):
        return False
    if ":path}" in route.path + other_path:  # any number of segments
        return True
    mine, theirs = route.path.split("/"), other_path.split("/")
    return len(mine) == len(theirs) and all(
        a == b or "{" in a or "{" in b for a, b in zip(mine, theirs, strict=True)
    )
