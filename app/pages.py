"""Browser pages and static assets (no build step)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"


async def index(_: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/admin/positions")


def setup(app: web.Application) -> None:
    app.router.add_get("/", index)
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR, name="static")
