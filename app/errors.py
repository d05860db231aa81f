"""HTTP API errors, defined once: every error body is ``{"error": code, "message": text}``.

``ApiErrorCode`` lists every code the API answers with and ``STATUS`` its HTTP status; both are
documented in docs/http-api.md (a test holds the two in step).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from enum import StrEnum
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from config.logging import get_logger

log = get_logger()


class ApiErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    INVALID_CREDENTIALS = "invalid_credentials"
    FORBIDDEN = "forbidden"
    UNKNOWN_ACCOUNT = "unknown_account"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    ORDER_REJECTED = "order_rejected"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    INTERNAL_ERROR = "internal_error"
    BROKER_UNAVAILABLE = "broker_unavailable"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    LOGIN_BUSY = "login_busy"
    STORE_UNAVAILABLE = "store_unavailable"


STATUS: Final[dict[ApiErrorCode, int]] = {
    ApiErrorCode.BAD_REQUEST: 400,
    ApiErrorCode.UNAUTHORIZED: 401,
    ApiErrorCode.INVALID_CREDENTIALS: 401,
    ApiErrorCode.FORBIDDEN: 403,
    ApiErrorCode.UNKNOWN_ACCOUNT: 404,
    ApiErrorCode.PAYLOAD_TOO_LARGE: 413,
    ApiErrorCode.ORDER_REJECTED: 422,
    ApiErrorCode.TOO_MANY_ATTEMPTS: 429,
    ApiErrorCode.INTERNAL_ERROR: 500,
    ApiErrorCode.BROKER_UNAVAILABLE: 503,
    ApiErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ApiErrorCode.LOGIN_BUSY: 503,
    ApiErrorCode.STORE_UNAVAILABLE: 503,
}


class ApiError(Exception):
    """An error response with a stable machine-readable code (its status follows from it)."""

    def __init__(
        self,
        code: ApiErrorCode,
        message: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = STATUS[code]
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self) -> web.Response:
        body = {"error": self.code.value, "message": self.message, **self.extra}
        return web.json_response(body, status=self.status, headers=self.headers)

    @classmethod
    def unauthorized(cls) -> ApiError:
        return cls(
            ApiErrorCode.UNAUTHORIZED, "Authentication required: log in to get a session cookie"
        )

    @classmethod
    def forbidden(cls, message: str) -> ApiError:
        return cls(ApiErrorCode.FORBIDDEN, message)

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(ApiErrorCode.BAD_REQUEST, message)

    @classmethod
    def internal(cls) -> ApiError:
        """The body of an unexpected failure: nothing about it leaks to the client."""
        return cls(ApiErrorCode.INTERNAL_ERROR, "Internal server error")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_middleware(unwrapped_paths: Collection[str] = ()) -> Middleware:
    """Turn ApiError into its JSON response and unexpected errors into a logged 500.

    Handlers on ``unwrapped_paths`` are awaited directly, without a wrapping frame: a WebSocket
    handler lives as long as its socket, and a middleware frame per connection would be held
    for hours. Such handlers answer their own errors (app/ws.py).
    """
    unwrapped = frozenset(unwrapped_paths)

    @web.middleware  # a plain function returning the awaitable: no frame of its own
    def middleware(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        if request.path in unwrapped:
            return handler(request)
        return _guarded(request, handler)

    return middleware


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException:
        raise
    except Exception:
        log.exception(
            "[PortfolioStream] Unhandled error in request handler",
            method=request.method,
            path=request.path,
        )
        return ApiError.internal().response()
