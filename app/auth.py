"""Request authentication: session cookies, admin checks, Origin checks."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from app.errors import ApiError
from app.keys import SETTINGS_KEY, STORE_KEY
from app.store import User

SESSION_COOKIE = "session"
_USER_KEY: web.RequestKey[User | None] = web.RequestKey("user")


async def current_user(request: web.Request) -> User | None:
    """The user behind the request's session cookie (looked up once per request)."""
    if _USER_KEY in request:
        return request[_USER_KEY]
    token = request.cookies.get(SESSION_COOKIE, "")
    user = await request.app[STORE_KEY].session_user(token) if token else None
    request[_USER_KEY] = user
    return user


async def require_user(request: web.Request) -> User:
    user = await current_user(request)
    if user is None:
        raise ApiError.unauthorized()
    return user


async def require_admin(request: web.Request) -> User:
    user = await require_user(request)
    if not user.is_admin:
        raise ApiError.forbidden("Admin access required")
    return user


def set_session_cookie(response: web.StreamResponse, request: web.Request, token: str) -> None:
    settings = request.app[SETTINGS_KEY]
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(settings.session_ttl_hours * 3600),
        path="/",
        httponly=True,
        samesite="Lax",
        secure=settings.cookie_secure,
    )


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")


def origin_allowed(request: web.Request, allowed: list[str]) -> bool:
    """Cross-site WebSocket hijacking guard.

    With ALLOWED_ORIGINS empty only the request's own host may connect; a request without an
    Origin header (not a browser) is allowed, since browsers always send one on upgrade.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if allowed:
        return origin in allowed or "*" in allowed
    parts = urlsplit(origin)
    host = request.headers.get("Host", request.host)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
