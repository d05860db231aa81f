"""Request authentication: session cookies, admin checks, Origin checks."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from app.errors import ApiError, ApiErrorCode
from app.keys import SETTINGS_KEY, STORE_KEY, THROTTLE_KEY
from app.login_throttle import Throttled
from app.store import USERNAME_MAX, HashingBusy, Session, StoreUnavailable, User
from config.logging import get_logger

log = get_logger()

SESSION_COOKIE = "session"
_SESSION_KEY: web.RequestKey[Session | None] = web.RequestKey("session")


async def current_session(request: web.Request) -> Session | None:
    """The live session behind the request's cookie (looked up once per request); a
    long-lived consumer (a WebSocket) hands it to ``Store.watch_session`` to hear of its end."""
    if _SESSION_KEY in request:
        return request[_SESSION_KEY]
    token = request.cookies.get(SESSION_COOKIE, "")
    try:
        session = await request.app[STORE_KEY].session(token) if token else None
    except StoreUnavailable:
        raise store_unavailable() from None
    request[_SESSION_KEY] = session
    return session


async def current_user(request: web.Request) -> User | None:
    """The user behind the request's session cookie."""
    session = await current_session(request)
    return session.user if session else None


def store_unavailable() -> ApiError:
    """The answer while the user store cannot be used (read-only, locked or full disk)."""
    return ApiError(
        ApiErrorCode.STORE_UNAVAILABLE,
        "Sign-in is unavailable right now; try again shortly",
        headers={"Retry-After": "5"},
    )


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


async def check_password(request: web.Request, username: str, password: str) -> User:
    """The user if the password is right; otherwise the ApiError to answer (401, or 429/503
    without checking it: throttled, every hashing slot busy, the store unavailable)."""
    try:
        attempt = await request.app[THROTTLE_KEY].reserve(username, request.remote)
    except Throttled as throttled:
        raise ApiError(
            ApiErrorCode.TOO_MANY_ATTEMPTS,
            "Too many failed logins; try again later",
            headers={"Retry-After": str(int(throttled.retry_after) + 1)},
        ) from None
    async with attempt:  # an error before the verdict releases the attempt uncounted
        try:
            user = await request.app[STORE_KEY].authenticate(username, password)
        except HashingBusy:
            raise ApiError(
                ApiErrorCode.LOGIN_BUSY,
                "Too many logins in progress; try again shortly",
                headers={"Retry-After": "1"},
            ) from None
        except StoreUnavailable:
            raise store_unavailable() from None
        if user is None:
            await attempt.failed()
            log.warning(
                "[Auth] Login failed", username=username[:USERNAME_MAX], remote=request.remote
            )
            raise ApiError(ApiErrorCode.INVALID_CREDENTIALS, "Invalid username or password")
        await attempt.succeeded()
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
