"""``/docs``: Swagger UI, served from the files the ``swagger-ui-bundle-v2`` package
ships rather than from a CDN, so that the page works on a machine without Internet
access and asks no third party for anything (its validator badge is off too).

The page and its assets are public, as ``/openapi.json`` is (``guard.PUBLIC_PATHS``):
only the few files the page loads are served, by name, never a path from the request.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import FileResponse, HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
ASSETS_PATH = "/docs/assets"
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
"""The files of the Swagger UI distribution the page loads, and their media types."""
ASSET_PATHS = frozenset(f"{ASSETS_PATH}/{name}" for name in ASSETS)
CACHE_CONTROL = "public, max-age=86400"
UI_PARAMETERS: dict[str, Any] = {"validatorUrl": None}
"""Swagger UI would otherwise load a badge from validator.swagger.io for any server not
on localhost, sending it the document's URL."""


def install_docs(app: FastAPI, *, title: str) -> None:
    """Add ``/docs``, its OAuth2 redirect page and its assets to ``app`` (built with
    ``docs_url=None``); none of them is in the OpenAPI document."""

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - API",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_PATH}",
            swagger_ui_parameters=UI_PARAMETERS,
        )

    @app.get(OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    for name, media_type in ASSETS.items():
        _asset_route(app, name, media_type)


def _asset_route(app: FastAPI, name: str, media_type: str) -> None:
    path = str(swagger_ui_path / name)

    @app.get(f"{ASSETS_PATH}/{name}", include_in_schema=False)
    async def asset() -> Response:
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": CACHE_CONTROL})
