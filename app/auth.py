"""Request authentication: session cookies, admin checks, login throttling, Origin checks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from app.errors import ApiError
from app.keys import SETTINGS_KEY, STORE_KEY, THROTTLE_KEY
from app.store import HashingBusy, Session, StoreUnavailable, User
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
        503,
        "store_unavailable",
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
        attempt = request.app[THROTTLE_KEY].reserve(username, request.remote)
    except Throttled as throttled:
        raise ApiError(
            429,
            "too_many_attempts",
            "Too many failed logins; try again later",
            headers={"Retry-After": str(int(throttled.retry_after) + 1)},
        ) from None
    with attempt:  # an error before the verdict releases the attempt uncounted
        try:
            user = await request.app[STORE_KEY].authenticate(username, password)
        except HashingBusy:
            raise ApiError(
                503,
                "login_busy",
                "Too many logins in progress; try again shortly",
                headers={"Retry-After": "1"},
            ) from None
        except StoreUnavailable:
            raise store_unavailable() from None
        if user is None:
            attempt.failed()
            log.warning("[Auth] Login failed", username=username[:64], remote=request.remote)
            raise ApiError(401, "invalid_credentials", "Invalid username or password")
        attempt.succeeded()
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


class Throttled(Exception):
    """A login refused before its password is checked; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.0f}s")
        self.retry_after = retry_after


@dataclass(slots=True)
class _Failures:
    count: int
    first_at: float
    pending: int = 0  # attempts reserved and not yet settled


class LoginThrottle:
    """Locks a username out after repeated failed logins, and a client address after many.

    The address limit is separate and higher: behind a reverse proxy many users share one
    address, and a handful of typos must not lock everyone out. A success clears only the
    username's count, so one valid account cannot be used to reset an address's budget.

    An attempt is reserved before its password is checked and settled after: checking takes
    ~100 ms, and guesses in flight count against the limit, so concurrent guesses cannot all
    slip past a check made before any of them failed.
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

    def _entry(self, key: tuple[str, str], now: float) -> _Failures:
        """The key's live entry; a window that has run out starts afresh."""
        entry = self._failures.get(key)
        if entry is None:
            entry = self._failures[key] = _Failures(0, now)
        elif now - entry.first_at >= self._lockout:
            entry.count, entry.first_at = 0, now
        return entry

    def reserve(self, username: str, address: str | None) -> LoginAttempt:
        """Reserve one attempt for this username and address, or raise Throttled."""
        now = self._clock()
        keys = self._keys(username, address)
        wait = 0.0
        for key in keys:
            entry = self._entry(key, now)
            limit = self._limits[key[0]]
            if entry.count >= limit:
                wait = max(wait, self._lockout - (now - entry.first_at))
            elif entry.count + entry.pending >= limit:
                wait = max(wait, 1.0)  # the attempts in flight may yet succeed
        if wait > 0:
            self._forget_idle(keys)
            raise Throttled(wait)
        for key in keys:
            self._failures[key].pending += 1
        self._prune(now)
        return LoginAttempt(self, keys)

    def _settle(self, keys: tuple[tuple[str, str], ...], outcome: str) -> None:
        now = self._clock()
        for key in keys:
            entry = self._entry(key, now)
            entry.pending = max(0, entry.pending - 1)
            if outcome == "failed":
                if entry.count == 0:
                    entry.first_at = now
                entry.count += 1
            elif outcome == "succeeded" and key[0] == "user":
                entry.count = 0
        self._forget_idle(keys)

    def _forget_idle(self, keys: tuple[tuple[str, str], ...]) -> None:
        for key in keys:
            entry = self._failures.get(key)
            if entry is not None and entry.count == 0 and entry.pending == 0:
                del self._failures[key]

    def _prune(self, now: float) -> None:
        if len(self._failures) > 10_000:
            self._failures = {
                k: v
                for k, v in self._failures.items()
                if v.pending or now - v.first_at < self._lockout
            }


class LoginAttempt:
    """One reserved login attempt: settle it with ``failed``/``succeeded``; leaving the
    ``with`` block unsettled (an error before the verdict) releases it uncounted."""

    def __init__(self, throttle: LoginThrottle, keys: tuple[tuple[str, str], ...]) -> None:
        self._throttle = throttle
        self._keys = keys
        self._open = True

    def _finish(self, outcome: str) -> None:
        if self._open:
            self._open = False
            self._throttle._settle(self._keys, outcome)

    def failed(self) -> None:
        self._finish("failed")

    def succeeded(self) -> None:
        self._finish("succeeded")

    def __enter__(self) -> LoginAttempt:
        return self

    def __exit__(self, *_: object) -> None:
        self._finish("released")
