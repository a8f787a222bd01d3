"""Application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from corral import __version__
from corral.api import problems
from corral.api.limits import MAX_BODY_BYTES, BodyLimit
from corral.api.problems import PROBLEM_JSON
from corral.api.routes import BODY_MODELS, QUERY_ITEM_PATTERNS, build_router
from corral.scheduler import Scheduler
from corral.store import Store


def create_app(
    store: Store,
    *,
    data_dir: Path,
    scheduler: Scheduler | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The API over ``store``; ``scheduler`` (default: runs nothing) is started and
    stopped with the app."""
    sched = scheduler or Scheduler(store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await sched.start()
        try:
            yield
        finally:
            await sched.stop()

    app = FastAPI(
        title="corral",
        version=__version__,
        summary="A workload manager: submit commands, run them, follow and kill them.",
        lifespan=lifespan,
    )
    problems.install(app)
    app.include_router(build_router(store, sched, data_dir))
    _fix_openapi(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app


TOO_LARGE = {
    "description": "Content Too Large",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


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
            for operations in schema["paths"].values():
                for operation in operations.values():
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
                        if int(code) >= 400 and content:
                            response["content"] = {PROBLEM_JSON: next(iter(content.values()))}
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            for model in BODY_MODELS:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
