"""HTTP API errors, defined once: every error body is ``{"error": code, "message": text}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn ApiError into its JSON response and unexpected errors into a logged 500."""
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
