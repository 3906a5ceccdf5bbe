"""The admin web UI: static files under ``/ui/``, served by the admin app itself.

Why static and token-less: the pages hold no data. They are plain HTML, ES modules and CSS
(``admin/ui/``; no CDN, no build step, works offline), and every figure is fetched from the
``/api/v1`` routes with the bearer token the user pastes in (kept in ``sessionStorage``), so
the UI has exactly the API's permissions and nothing else to secure.

Only files that exist in ``admin/ui/`` with a known type are served, by name (no directory
listing, no path traversal), with a strict Content-Security-Policy: scripts, styles and
requests only from this origin, no inline script, no framing.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

UI_DIR = Path(__file__).resolve().parent / "ui"
PREFIX = "/ui/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.[a-z]{2,4}$")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # small files, changed by upgrades: revalidate every time (ETag / Last-Modified)
    "Cache-Control": "no-cache",
}


def _file(name: str) -> web.FileResponse:
    path = UI_DIR / name
    if not NAME_RE.match(name) or path.suffix not in CONTENT_TYPES or not path.is_file():
        raise web.HTTPNotFound()
    response = web.FileResponse(path, headers=HEADERS)
    response.content_type = CONTENT_TYPES[path.suffix].split(";")[0]
    if "charset" in CONTENT_TYPES[path.suffix]:
        response.charset = "utf-8"
    return response


async def index(_: web.Request) -> web.FileResponse:
    return _file("index.html")


async def asset(request: web.Request) -> web.FileResponse:
    return _file(request.match_info["name"])


async def to_ui(_: web.Request) -> web.Response:
    raise web.HTTPFound(PREFIX)


def mount_ui(app: web.Application) -> None:
    """Serve the UI at ``/ui/`` (``/`` and ``/ui`` redirect there)."""
    app.router.add_get("/", to_ui)
    app.router.add_get("/ui", to_ui)
    app.router.add_get(PREFIX, index)
    app.router.add_get(PREFIX + "{name}", asset)
