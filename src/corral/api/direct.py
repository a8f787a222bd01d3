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
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from typing import Any, TypeGuard, get_type_hints

from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound, request_response
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
        self.app = request_response(route.endpoint)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if (
            scope["type"] == "http"
            and scope["method"] in self.methods
            and get_route_path(scope) == self.path
        ):
            # "route": FastAPI's router sets it for its own routes only; the request's
            # timing (access.py, for /metrics) reads the path template there.
            return Match.FULL, {"endpoint": self.endpoint, "path_params": {}, "route": self}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)  # the FastAPI route answers for it

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def __repr__(self) -> str:
        return f"DirectRoute(path={self.path!r}, methods={sorted(self.methods)!r})"


_PARAM = re.compile(r"{[^}]*}")


def is_direct(route: BaseRoute) -> TypeGuard[APIRoute]:
    """True for a FastAPI route whose endpoint is ``async def f(request: Request) ->
    Response``, at a path without parameters, with no dependencies."""
    if (
        not isinstance(route, APIRoute)
        or not route.methods
        or route.dependencies
        or _PARAM.search(route.path)
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
    return (
        len(params) == 1
        and hints.get(params[0].name) is Request
        and isinstance(hints.get("return"), type)
        and issubclass(hints["return"], Response)
    )


def direct_routes(routes: Iterable[BaseRoute]) -> list[DirectRoute]:
    """A ``DirectRoute`` for each route of ``routes`` that ``is_direct``. The routes
    are a router's own, as declared: a router included with a ``prefix`` or
    ``dependencies`` would have them bypassed, so ``create_app`` includes its routers
    with neither (``include_router`` refuses nothing of the kind: keep it so)."""
    return [DirectRoute(route) for route in routes if is_direct(route)]
