"""The `/ws/portfolio` upgrade handler: admission in the contract's order, then the stream.

1. session cookie valid, else 401 (JSON, no upgrade)
2. Origin allowed, else 403
3. feature flag on (and not draining), else 503
4. upgrade
5. connection limits, else close 1013 ``Maximum connections exceeded``
"""

from __future__ import annotations

from aiohttp import web

from app.auth import current_user, origin_allowed
from app.errors import ApiError
from app.keys import LIFECYCLE_KEY, SETTINGS_KEY, STREAM_KEY
from app.protocol import CloseCode, CloseReason
from app.store import User
from config.logging import get_logger

log = get_logger()


async def admission_refusal(request: web.Request) -> tuple[User | None, web.Response | None]:
    """Steps 1-3: the user, or the response refusing the upgrade."""
    settings = request.app[SETTINGS_KEY]
    user = await current_user(request)
    if user is None:
        return None, ApiError.unauthorized().response()
    if not origin_allowed(request, settings.allowed_origins):
        log.warning(
            "[PortfolioStream] Rejected cross-origin upgrade",
            userId=user.id,
            origin=request.headers.get("Origin", "")[:200],
        )
        return None, ApiError.forbidden("Origin not allowed").response()
    if not settings.enable_realtime_portfolio:
        return None, web.json_response({"status": "disabled"}, status=503)
    if request.app[LIFECYCLE_KEY].draining or not request.app[STREAM_KEY].accepting:
        draining = web.json_response({"status": "draining"}, status=503)
        draining.headers["Retry-After"] = "1"
        return None, draining
    return user, None


async def portfolio_ws(request: web.Request) -> web.StreamResponse:
    """The upgrade handler; it runs for the socket's lifetime (outside the error middleware)."""
    try:
        user, refusal = await admission_refusal(request)
    except ApiError as error:  # e.g. the store is unavailable: 503, not a traceback
        return error.response()
    except Exception:
        log.exception("[PortfolioStream] Admission failed", path=request.path)
        return ApiError.internal().response()
    if user is None:
        assert refusal is not None
        return refusal
    settings = request.app[SETTINGS_KEY]
    manager = request.app[STREAM_KEY]
    ws = web.WebSocketResponse(
        autoping=False,  # pongs must reach us: they are what "heard from" means
        compress=settings.ws_compression,
        max_msg_size=settings.ws_max_message_bytes,
        decode_text=False,
        # Check for a paused socket on every send: a backed-up client's writer then waits for
        # it to drain while its batches coalesce, instead of queueing 64 KiB more first.
        writer_limit=1,
    )
    await ws.prepare(request)
    conn = manager.admit(user.id, ws, request)
    if conn is None:
        log.warning(
            "[PortfolioStream] Connection rejected: Maximum connections exceeded",
            userId=user.id,
            activeConnections=manager.active_connections,
        )
        await ws.close(code=CloseCode.TRY_AGAIN_LATER, message=CloseReason.LIMIT.encode())
        return ws
    await manager.serve(conn)
    return ws
