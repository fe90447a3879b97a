"""The web console (DESIGN.md §5): `GET /console`, one page that shows the version tree, what each
version learned and forgot, the learn jobs, the serving history and the live serving figures.

The page is plain HTML, CSS and JavaScript modules from `static/`, served as they are: no build
step, nothing fetched from another origin. It holds no data of its own: it reads and acts through
the admin API with the token the user types in, which it keeps in the tab's `sessionStorage`
(never in a URL or a cookie), and reads `/metrics` like any scraper; so whatever it does, curl
does too. The shell itself is public: without the token it shows only the login form.

Files are served from an allowlist made when the router is built (no path from a request reaches
the file system), each with a Content-Security-Policy that lets the page run only its own scripts
and styles and talk only to its own origin, since the port is open to whoever reaches it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

STATIC = Path(__file__).parent / "static"

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
"""Only the page's own files run; it talks only to its own origin; no form posts anywhere (the
token never leaves in a query string, even if the scripts failed to load); no framing."""

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


def console_router(folder: Path = STATIC) -> APIRouter:
    """`GET /console` (the page) and `GET /console/NAME` (its scripts and styles)."""
    files = {p.name: p for p in sorted(folder.iterdir()) if p.suffix in MEDIA_TYPES}
    router = APIRouter(include_in_schema=False)

    def _serve(name: str) -> Response:
        path = files.get(name)
        if path is None:
            raise HTTPException(404, f"no console file {name!r}; the console is at /console")
        return Response(
            path.read_bytes(), media_type=MEDIA_TYPES[path.suffix], headers=HEADERS.copy()
        )

    @router.api_route("/console", methods=["GET", "HEAD"])
    @router.api_route("/console/", methods=["GET", "HEAD"])
    def page() -> Response:
        return _serve("index.html")

    @router.api_route("/console/{name}", methods=["GET", "HEAD"])
    def asset(name: str) -> Response:
        return _serve(name)

    return router
