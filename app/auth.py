"""Request authentication: session cookies, admin checks, login throttling, Origin checks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from app.errors import ApiError
from app.keys import SETTINGS_KEY, STORE_KEY
from app.store import User

SESSION_COOKIE = "session"
# Failure records kept before the expired ones are swept: bounds memory under a spray of
# made-up usernames without a pass over the table on every failure.
THROTTLE_SWEEP_AT = 10_000
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


@dataclass(slots=True)
class _Failures:
    count: int
    first_at: float


class LoginThrottle:
    """Locks a username out after repeated failed logins, and a client address after many.

    The address limit is separate and higher: behind a reverse proxy many users share one
    address, and a handful of typos must not lock everyone out. A success clears only the
    username's count, so one valid account cannot be used to reset an address's budget.
    """

    def __init__(
        self,
        max_failures: int,
        lockout_s: float,
        max_failures_per_address: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = {"user": max_failures, "addr": max_failures_per_address}
        self._lockout = lockout_s
        self._clock = clock
        self._failures: dict[tuple[str, str], _Failures] = {}

    @staticmethod
    def _keys(username: str, address: str | None) -> tuple[tuple[str, str], ...]:
        return ("user", username.strip().lower()), ("addr", address or "unknown")

    def retry_after(self, username: str, address: str | None) -> float:
        """Seconds until this username/address may try again; 0 when neither is locked."""
        now = self._clock()
        wait = 0.0
        for key in self._keys(username, address):
            entry = self._failures.get(key)
            if entry is None:
                continue
            if now - entry.first_at >= self._lockout:
                del self._failures[key]
            elif entry.count >= self._limits[key[0]]:
                wait = max(wait, self._lockout - (now - entry.first_at))
        return wait

    def failed(self, username: str, address: str | None) -> None:
        now = self._clock()
        for key in self._keys(username, address):
            entry = self._failures.get(key)
            if entry is None or now - entry.first_at >= self._lockout:
                self._failures[key] = _Failures(1, now)
            else:
                entry.count += 1
        if len(self._failures) > THROTTLE_SWEEP_AT:
            self._failures = {
                k: v for k, v in self._failures.items() if now - v.first_at < self._lockout
            }

    def succeeded(self, username: str) -> None:
        self._failures.pop(self._keys(username, None)[0], None)
