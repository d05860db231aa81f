"""Browser pages and static assets (no build step).

The pages are static HTML files in ``templates/``; their scripts (``static/*.js``, ES modules)
fill them from the JSON API. The handlers here only decide who may see a page: a visitor
without a session is sent to ``/login?next=...``, a non-admin asking for an admin page gets
a 403 page. Every page and asset carries the security headers of SPEC §10 (a CSP with no
inline script or style, no framing, no sniffing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import quote

from aiohttp import web

from app.auth import current_user

STATIC_DIR: Final = Path(__file__).parent / "static"
TEMPLATES_DIR: Final = Path(__file__).parent / "templates"

LOGIN_PATH: Final = "/login"
HOME_PATH: Final = "/admin/positions"
STATS_PATH: Final = "/admin/websocket"

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

PAGE_PATHS: Final = frozenset({"/", LOGIN_PATH, HOME_PATH, STATS_PATH})


def safe_next(target: str | None, default: str = HOME_PATH) -> str:
    """A same-site path to return to after login; anything else becomes ``default``.

    Rejects absolute URLs, scheme-relative ``//host`` and backslash tricks (``/\\host``), which
    browsers would resolve to another origin.
    """
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 0x20 for c in target)
    ):
        return default
    return target


def login_redirect(request: web.Request) -> web.HTTPFound:
    return web.HTTPFound(f"{LOGIN_PATH}?next={quote(request.path_qs, safe='/')}")


class Pages:
    """The HTML documents, read once at startup."""

    def __init__(self, directory: Path = TEMPLATES_DIR) -> None:
        self._html = {path.stem: path.read_bytes() for path in directory.glob("*.html")}

    def response(self, name: str, status: int = 200) -> web.Response:
        return web.Response(
            body=self._html[name],
            status=status,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def index(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(HOME_PATH)

    async def login(self, request: web.Request) -> web.StreamResponse:
        if await current_user(request) is not None:
            raise web.HTTPFound(safe_next(request.query.get("next")))
        return self.response("login")

    async def positions(self, request: web.Request) -> web.StreamResponse:
        if await current_user(request) is None:
            raise login_redirect(request)
        return self.response("positions")

    async def websocket_stats(self, request: web.Request) -> web.StreamResponse:
        user = await current_user(request)
        if user is None:
            raise login_redirect(request)
        if not user.is_admin:
            return self.response("forbidden", status=403)
        return self.response("websocket")


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: security headers on pages and static assets (API untouched)."""
    path = request.path
    if path in PAGE_PATHS or path.startswith("/static/"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if path.startswith("/static/"):
            # Revalidate (ETag / Last-Modified) so a deploy is picked up on the next load.
            response.headers.setdefault("Cache-Control", "no-cache")


def setup(app: web.Application) -> None:
    pages = Pages()
    app.router.add_get("/", pages.index)
    app.router.add_get(LOGIN_PATH, pages.login)
    app.router.add_get(HOME_PATH, pages.positions)
    app.router.add_get(STATS_PATH, pages.websocket_stats)
    app.router.add_static("/static/", STATIC_DIR, name="static")
    app.on_response_prepare.append(add_security_headers)
