"""The web dashboard (docs/operations.md, "The dashboard"): its page at ``/`` and its
files at ``/ui/NAME``, static files shipped in the package (``corral/web``), with no
build step and nothing loaded from anywhere else.

The page and its files are public (``guard.PUBLIC_PATHS``), like ``/docs``: they hold
nothing but code. The page asks for an API key and sends it with every API call as
``Authorization: Bearer`` (never a cookie, so a foreign page cannot make the browser
call the API for it); the guard still checks ``Host`` and ``Origin`` before them.
Only the files named in ``FILES`` are served, by name, never a path from the request,
and ``/ui/config.json``, which tells the page whether the server takes keys (with
``--no-auth`` it opens without a sign-in; it asks this rather than the API, which
answers 401 to a page with no key yet: nothing new, the API tells anyone as much).
Every answer carries a strict ``Content-Security-Policy`` (scripts, styles, images
and connections from this origin only; no inline script or style; no framing), and
``Cache-Control: no-cache`` (revalidated each time, so an upgrade is seen at once).
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, Response

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
PAGE_PATH = "/"
FILES_PATH = "/ui"
FILES = {
    "style.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "list.js": "text/javascript; charset=utf-8",
    "workload.js": "text/javascript; charset=utf-8",
    "overview.js": "text/javascript; charset=utf-8",
    "plot.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
"""The files the page loads, and their media types."""
PAGE = "index.html"
CONFIG_PATH = f"{FILES_PATH}/config.json"
"""``{"keys": bool}``: whether the API asks for keys."""
WEB_PATHS = frozenset({PAGE_PATH, CONFIG_PATH, *(f"{FILES_PATH}/{name}" for name in FILES)})
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "require-trusted-types-for 'script'",
    ]
)
"""``require-trusted-types-for``: the page never parses HTML from strings (it builds
its elements), so any ``innerHTML`` is an error rather than a way in."""
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def install_web(app: FastAPI, *, keys: bool = True) -> None:
    """Add the page, its files and its config to ``app`` (none is in the OpenAPI
    document); ``keys``: whether the API asks for keys (False: ``--no-auth``)."""
    _file_route(app, PAGE_PATH, PAGE, "text/html; charset=utf-8")
    for name, media_type in FILES.items():
        _file_route(app, f"{FILES_PATH}/{name}", name, media_type)
    config = json.dumps({"keys": keys})

    @app.get(CONFIG_PATH, include_in_schema=False)
    async def web_config() -> Response:
        return Response(config, media_type="application/json", headers=HEADERS)


def _file_route(app: FastAPI, path: str, name: str, media_type: str) -> None:
    file = str(WEB_DIR / name)

    @app.get(path, include_in_schema=False)
    async def web_file() -> Response:
        return FileResponse(file, media_type=media_type, headers=HEADERS)
