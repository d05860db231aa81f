"""The `/ws/portfolio` upgrade handler: admission in the contract's order, then the stream.

1. session cookie valid, else 401 (JSON, no upgrade)
2. Origin allowed, else 403
3. feature flag on (and not draining), else 503
4. upgrade
5. connection limits, else close 1013 ``Maximum connections exceeded`` — with REDIS_URL the
   cluster's limits first (one atomic admission in Redis), then this node's own

The session it was admitted with is watched while the socket is open: when it ends (logout,
expiry, the user removed) the socket is closed with 4001.
"""

from __future__ import annotations

from functools import partial

from aiohttp import web

from app.auth import current_session, origin_allowed
from app.connection import new_connection_id
from app.errors import ApiError
from app.frame_guard import guard_frames
from app.keys import CLUSTER_KEY, LIFECYCLE_KEY, SETTINGS_KEY, STORE_KEY, STREAM_KEY
from app.protocol import CloseCode, CloseReason
from app.store import Session
from app.stream import close_grace_s
from config.logging import get_logger

log = get_logger()


async def admission_refusal(
    request: web.Request,
) -> tuple[Session | None, web.Response | None]:
    """Steps 1-3: the session, or the response refusing the upgrade."""
    settings = request.app[SETTINGS_KEY]
    session = await current_session(request)
    if session is None:
        return None, ApiError.unauthorized().response()
    user = session.user
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
    return session, None


async def portfolio_ws(request: web.Request) -> web.StreamResponse:
    """The upgrade handler; it runs for the socket's lifetime (outside the error middleware)."""
    try:
        session, refusal = await admission_refusal(request)
    except ApiError as error:  # e.g. the store is unavailable: 503, not a traceback
        return error.response()
    except Exception:
        log.exception("[PortfolioStream] Admission failed", path=request.path)
        return ApiError.internal().response()
    if session is None:
        assert refusal is not None
        return refusal
    user = session.user
    settings = request.app[SETTINGS_KEY]
    manager = request.app[STREAM_KEY]
    ws = web.WebSocketResponse(
        autoping=False,  # pongs must reach us: they are what "heard from" means
        compress=settings.ws_compression,
        # aiohttp refuses a frame of exactly max_msg_size (its check is ">="), and the limit
        # is documented as the largest frame accepted.
        max_msg_size=settings.ws_max_message_bytes + 1,
        decode_text=False,
        # Check for a paused socket on every send: a backed-up client's writer then waits for
        # it to drain while its batches coalesce, instead of queueing 64 KiB more first.
        writer_limit=1,
        # How long a close waits for the client's close frame (aiohttp's default is 10 s).
        timeout=close_grace_s(settings),
    )
    transport = request.transport
    guard = None
    if transport is not None and ws.can_prepare(request).ok:
        guard = guard_frames(transport, transport.abort)
    await ws.prepare(request)
    cluster = request.app.get(CLUSTER_KEY)
    conn_id = new_connection_id()
    if cluster is not None:
        verdict = await cluster.admit(conn_id, user.id)
        if verdict is not None and not verdict.admitted:
            return await _refuse(ws, user.id, verdict.total_connections)
    conn = manager.admit(user.id, ws, request, session.token_hash, guard, conn_id=conn_id)
    if conn is None:
        if cluster is not None:
            cluster.release(conn_id, user.id)
        return await _refuse(ws, user.id, manager.active_connections)
    if guard is not None:
        guard.on_unmasked = partial(
            conn.writer.start_close, CloseCode.PROTOCOL_ERROR, CloseReason.UNMASKED
        )
    unwatch = request.app[STORE_KEY].watch_session(session)
    try:
        await manager.serve(conn)
    finally:
        unwatch()
        if cluster is not None:
            cluster.release(conn_id, user.id)
    return ws


async def _refuse(ws: web.WebSocketResponse, user_id: str, active: int) -> web.WebSocketResponse:
    log.warning(
        "[PortfolioStream] Connection rejected: Maximum connections exceeded",
        userId=user_id,
        activeConnections=active,
    )
    await ws.close(code=CloseCode.TRY_AGAIN_LATER, message=CloseReason.LIMIT.encode())
    return ws
