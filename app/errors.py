"""HTTP API errors, defined once: every error body is ``{"error": code, "message": text}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from config.logging import get_logger

log = get_logger()


class ApiError(Exception):
    """An error response with a stable machine-readable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self) -> web.Response:
        body = {"error": self.code, "message": self.message, **self.extra}
        return web.json_response(body, status=self.status, headers=self.headers)

    @classmethod
    def unauthorized(cls) -> ApiError:
        return cls(401, "unauthorized", "Authentication required: log in to get a session cookie")

    @classmethod
    def forbidden(cls, message: str) -> ApiError:
        return cls(403, "forbidden", message)

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "bad_request", message)


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
        return ApiError(500, "internal_error", "Internal server error").response()
