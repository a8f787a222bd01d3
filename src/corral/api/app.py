"""Application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from corral import __version__
from corral.api import problems
from corral.api.access import AccessLog
from corral.api.direct import direct_routes
from corral.api.docs import install_docs
from corral.api.events import build_event_router
from corral.api.guard import (
    BODY_METHODS,
    PUBLIC_PATHS,
    UNSAFE_METHODS,
    AccessPolicy,
    Guard,
    KeyCache,
)
from corral.api.limits import MAX_BODY_BYTES, BodyLimit
from corral.api.logproxy import LogProxy
from corral.api.metrics import REFRESH_SECONDS, Metrics, build_metrics_router
from corral.api.problems import PROBLEM_JSON, RETRY_AFTER_HEADER
from corral.api.routes import BODY_MODELS, QUERY_ITEM_PATTERNS, build_router
from corral.api.tokens import build_token_router
from corral.api.web import install_web
from corral.cluster import Cluster
from corral.events import Broadcast, BroadcastingStore
from corral.retention import Retention
from corral.scheduler import Scheduler
from corral.store import Store


def create_app(
    store: Store,
    *,
    data_dir: Path,
    scheduler: Scheduler | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    policy: AccessPolicy | None = None,
    cluster: Cluster | None = None,
    log_proxy: LogProxy | None = None,
    metrics_refresh_seconds: float = REFRESH_SECONDS,
    retention: Retention | None = None,
) -> FastAPI:
    """The API over ``store``; ``scheduler`` (default: runs nothing) is started and
    stopped with the app; ``policy`` says who may reach it (default: keys required,
    loopback host names, no rate limit); ``log_proxy`` (several servers on one
    database) forwards a log request to the server that keeps the log (default: every
    log is kept here), its HTTP client opened and closed with the app;
    ``metrics_refresh_seconds``: how often ``/metrics`` reads the counts by status;
    ``retention`` (``--retain-finished``: its task runs with the app) deletes finished
    workloads (default: only when asked, ``POST /v1/workloads/clean``)."""
    policy = policy or AccessPolicy()
    if not isinstance(store, BroadcastingStore):  # (serve wraps it, for its scheduler too)
        store = BroadcastingStore(store, Broadcast())
    keys = KeyCache(store.find_api_key)
    sched = scheduler or Scheduler(store)
    metrics = Metrics(store, sched, metrics_refresh_seconds)
    if cluster is not None:
        cluster.publish = metrics.publication
    retention = retention or Retention(store, sched, data_dir / "logs")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if log_proxy is not None:
            await log_proxy.open()
        # With a cluster, the scheduler starts once this server holds the lease.
        await (cluster.start() if cluster else sched.start())
        refresher = asyncio.create_task(metrics.refresh_forever(), name="corral-metrics")
        retaining = retention.start()  # None without --retain-finished
        try:
            yield
        finally:
            for task in (refresher, retaining):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await (cluster.stop() if cluster else sched.stop())
            if log_proxy is not None:
                await log_proxy.close()

    app = FastAPI(
        title="corral",
        version=__version__,
        summary="A workload manager: submit commands, run them, follow and kill them.",
        lifespan=lifespan,
        docs_url=None,  # install_docs serves it, without a CDN
        # corral exports no telemetry. FastAPI's own OpenTelemetry hooks, left on, ask
        # three environment variables on every request whether a provider has been set
        # since (5 % of a create's CPU; docs/benchmarks.md, "The request path, trimmed").
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.metrics = metrics  # its counts' refresh, for tests
    problems.install(app)
    install_docs(app, title="corral")
    install_web(app, keys=policy.auth)
    routers = [
        build_router(store, sched, data_dir, log_proxy, retention),
        build_token_router(store, keys.forget),
        build_metrics_router(metrics),
        build_event_router(store),
    ]
    earlier = list(app.router.routes)  # (docs, web)
    for router in routers:
        app.include_router(router)
    # In front: the routes that need nothing of FastAPI at request time (direct.py).
    app.router.routes[:0] = direct_routes(
        (route for router in routers for route in router.routes), behind=earlier
    )
    _fix_openapi(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(Guard, policy=policy, keys=keys)
    # Outermost (added last): every state-changing request is logged, the ones the
    # guard or the body limit refuse too.
    app.add_middleware(AccessLog, observe=metrics.observe)
    return app


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


READINESS = "#/components/schemas/Readiness"
"""``/readyz`` answers 503 with its usual body, not a problem."""
TOO_LARGE = _problem_response("Content Too Large")
GUARD_RESPONSES = {
    "400": _problem_response(
        "Bad Request: the Host header names a host this server does not serve"
    ),
}
KEYED_RESPONSES = {
    "401": _problem_response("Unauthorized: no API key, or not a valid one"),
    "403": _problem_response(
        "Forbidden: the key may not do this (a metrics key: GET /metrics only)"
    ),
    "429": {
        **_problem_response("Too Many Requests for this key; see Retry-After"),
        "headers": RETRY_AFTER_HEADER,
    },
    "503": {  # the key's lookup, like any read, may find the database busy
        **_problem_response("Service Unavailable: the database is busy; retry"),
        "headers": RETRY_AFTER_HEADER,
    },
}
UNSAFE_RESPONSES = {"403": _problem_response("Forbidden: a cross-origin request")}
BODY_RESPONSES = {"415": _problem_response("Unsupported Media Type: send application/json")}
BEARER = {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key."}}


def _fix_openapi(app: FastAPI) -> None:
    """Corrections to FastAPI's document: error responses are
    ``application/problem+json``; list query items have patterns; put the models of bodies read by
    ``routes.parse_body`` into the components (where the routes' ``$ref`` point), and
    drop the 422 FastAPI adds to every route with parameters: our 422s are problem
    details, declared by the routes that can return them. ``BodyLimit`` guards every
    route, so every operation lists 413."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base()
            for path, operations in schema["paths"].items():
                for method, operation in operations.items():
                    _guard_responses(path, method.upper(), operation)
                    for param in operation.get("parameters", []):
                        pattern = QUERY_ITEM_PATTERNS.get(param["name"])
                        if pattern and param["schema"].get("type") == "array":
                            param["schema"]["items"]["pattern"] = pattern
                    operation["responses"].setdefault("413", TOO_LARGE)
                    default = operation["responses"].get("422", {})
                    if "HTTPValidationError" in str(default):
                        del operation["responses"]["422"]
                    for code, response in operation["responses"].items():
                        content = response.get("content", {})
                        if int(code) >= 400 and content and READINESS not in str(content):
                            response["content"] = {PROBLEM_JSON: next(iter(content.values()))}
            schema.setdefault("components", {})["securitySchemes"] = BEARER
            components = schema["components"].setdefault("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            for model in BODY_MODELS:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _guard_responses(path: str, method: str, operation: dict[str, Any]) -> None:
    """The answers of the ``Guard`` in front of every route (``guard.py``), and the
    key it asks for."""
    answers = operation["responses"]
    for code, response in GUARD_RESPONSES.items():
        answers.setdefault(code, response)
    if method in UNSAFE_METHODS:
        for code, response in UNSAFE_RESPONSES.items():
            answers.setdefault(code, response)
    if path in PUBLIC_PATHS:
        return
    operation["security"] = [{"bearer": []}]
    for code, response in KEYED_RESPONSES.items():
        answers.setdefault(code, response)
    if method in BODY_METHODS:
        for code, response in BODY_RESPONSES.items():
            answers.setdefault(code, response)
