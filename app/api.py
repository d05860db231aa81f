"""HTTP API routes: auth, portfolio polling fallback, realtime config, admin stats and trades."""

from __future__ import annotations

import dataclasses
import hmac
import socket
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from aiohttp import web

from app.auth import (
    check_password,
    clear_session_cookie,
    require_admin,
    require_user,
    set_session_cookie,
    store_unavailable,
)
from app.broker import AccountStatus, BrokerUnavailable, OrderRejected, UnknownAccount
from app.cluster.leases import LeaseRow, account_lease
from app.cluster.registry import NodeFigures, NodeRow
from app.cluster.runtime import ClusterRuntime
from app.errors import ApiError, ApiErrorCode
from app.keys import (
    BROKER_KEY,
    BUS_KEY,
    CLUSTER_KEY,
    LIFECYCLE_KEY,
    METRICS_KEY,
    PORTFOLIO_KEY,
    SETTINGS_KEY,
    STATS_KEY,
    STORE_KEY,
    STREAM_KEY,
)
from app.metrics import CONTENT_TYPE
from app.stats import StatsRules, StatsTotals
from app.store import StoreUnavailable
from app.stream import WS_PATH
from config.logging import get_logger, utc_timestamp

log = get_logger()
routes = web.RouteTableDef()

# Longer than any listed ticker; it bounds what reaches the broker and the log line.
SYMBOL_MAX = 12


def _too_large() -> ApiError:
    return ApiError(ApiErrorCode.PAYLOAD_TOO_LARGE, "Request body is too large")


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The JSON object body; HTTP_MAX_BODY_BYTES caps it (also aiohttp's ``client_max_size``)."""
    limit = request.app[SETTINGS_KEY].http_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large()
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large() from None  # a chunked body, stopped by client_max_size
    except ValueError:
        raise ApiError.bad_request("Request body must be JSON") from None
    if not isinstance(body, dict):
        raise ApiError.bad_request("Request body must be a JSON object")
    return body


@routes.post("/api/auth/login")
async def login(request: web.Request) -> web.Response:
    body = await _json_body(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise ApiError.bad_request("username and password are required strings")
    user = await check_password(request, username, password)
    settings = request.app[SETTINGS_KEY]
    try:
        token = await request.app[STORE_KEY].create_session(
            user.id, settings.session_ttl_hours * 3600
        )
    except StoreUnavailable:
        raise store_unavailable() from None
    log.info("[Auth] Login", userId=user.id, username=user.username)
    response = web.json_response({"user": user.public()})
    set_session_cookie(response, request, token)
    return response


@routes.post("/api/auth/logout")
async def logout(request: web.Request) -> web.Response:
    token = request.cookies.get("session")
    if token:
        try:
            await request.app[STORE_KEY].revoke_session(token)
        except StoreUnavailable:
            raise store_unavailable() from None
    response = web.json_response({"ok": True})
    clear_session_cookie(response)
    return response


@routes.get("/api/auth/me")
async def me(request: web.Request) -> web.Response:
    user = await require_user(request)
    return web.json_response({"user": user.public()})


@routes.get("/api/portfolio")
async def portfolio(request: web.Request) -> web.Response:
    """The polling fallback: served whether or not the realtime flag is on."""
    user = await require_user(request)
    cluster = request.app.get(CLUSTER_KEY)
    shared = await cluster.portfolio(user.id) if cluster is not None else None
    body = shared or request.app[PORTFOLIO_KEY].snapshot(
        user.id, {"positions", "orders", "account"}
    )
    return web.json_response({"userId": user.id, **body, "serverTime": utc_timestamp()})


@routes.get("/api/realtime/config")
async def realtime_config(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    return web.json_response(
        {
            "enabled": settings.enable_realtime_portfolio,
            "wsPath": WS_PATH,
            "pollIntervalMs": settings.poll_interval_ms,
            "batchWindowMs": settings.batch_window_ms,
            "heartbeatIntervalMs": settings.heartbeat_interval_ms,
        }
    )


async def stats_document(app: web.Application) -> dict[str, Any]:
    settings = app[SETTINGS_KEY]
    stream = app[STREAM_KEY]
    cluster = app.get(CLUSTER_KEY)
    local = app[STATS_KEY].totals(stream.active_connections)
    document = local.report(
        rules=StatsRules.from_settings(settings),
        enabled=settings.enable_realtime_portfolio,
        by_user=stream.connections_by_user(),
        events_emitted=app[BUS_KEY].events_emitted,
        max_per_user=settings.max_connections_per_user,
        max_total=settings.max_total_connections,
        timestamp=utc_timestamp(),
    )
    if cluster is not None:
        document.update(await cluster_stats(app, cluster, local))
    else:
        document["node"] = settings.node_id or socket.gethostname()
    document["batchWindowMs"] = settings.batch_window_ms
    document["draining"] = app[LIFECYCLE_KEY].draining
    report = app[BROKER_KEY].report()
    if report is not None and "broker" not in document:  # a cluster's is its consumers' view
        document["broker"] = report
    return document


async def cluster_stats(
    app: web.Application, cluster: ClusterRuntime, local: StatsTotals
) -> dict[str, Any]:
    """The runbook's fields as cluster totals (SPEC §11), with ``node`` and ``nodes``. This
    node counts with its figures of now; the others with their last report. Without Redis the
    document is this node's alone, and ``cluster`` says so."""
    settings = app[SETTINGS_KEY]
    stream, bus = app[STREAM_KEY], app[BUS_KEY]
    consumed = cluster.consumed_accounts(app[BROKER_KEY])
    mine = dataclasses.replace(local, events_emitted=bus.events_emitted)
    figures = cluster.figures(
        stream.active_connections, len(stream.connections_by_user()), consumed, mine
    )
    here = node_row(figures, 0.0)
    health = cluster.health.as_json()
    read = await cluster.read_figures()
    if read is None:
        return {"node": here, "nodes": [here], "cluster": {**health, "redis": "unavailable"}}
    others = [
        row
        for row in read.rows
        if row.figures.node_id != cluster.node_id and row.figures.totals is not None
    ]
    parts = [mine, *(row.figures.totals for row in others if row.figures.totals is not None)]
    totals = StatsTotals.sum(parts)
    document = totals.report(
        rules=StatsRules.from_settings(settings),
        enabled=settings.enable_realtime_portfolio,
        by_user=dict(sorted(read.by_user.items())),
        events_emitted=totals.events_emitted,
        max_per_user=settings.max_connections_per_user,
        max_total=settings.max_total_connections,
        timestamp=utc_timestamp(),
    )
    rows = [here, *(node_row(row.figures, row.last_seen_s) for row in others)]
    broker = app[BROKER_KEY].report()
    if broker is not None:
        by_consumer = {
            str(a["username"]).lower(): (row.figures.node_id, a)
            for row in [NodeRow(figures, 0, 0.0), *others]
            for a in row.figures.consumed
        }
        leases = {row.name: row for row in await cluster.lease_rows()}
        document["broker"] = {
            **broker,
            "accounts": [
                consumer_view(account, by_consumer, leases) for account in broker["accounts"]
            ],
        }
    document["node"] = here
    if cluster.keeper is not None:
        # This node's leases: held, epoch, renewals failing and when it would fence itself.
        held = [status.to_json() for status in cluster.keeper.status()]
        document["node"] = {**here, "leases": held}
    document["nodes"] = sorted(rows, key=lambda row: str(row["id"]))
    document["cluster"] = health
    return document


def consumer_view(
    account: AccountStatus,
    by_consumer: dict[str, tuple[str, dict[str, Any]]],
    leases: dict[str, LeaseRow],
) -> dict[str, Any]:
    """An account as the node consuming it reports it, with that node and its lease epoch."""
    name = account["username"].lower()
    consumer, status = by_consumer.get(name, (None, dict(account)))
    lease = leases.get(account_lease(name))
    return {
        **status,
        "consumer": consumer if lease is None or lease.holder is None else lease.holder,
        "epoch": None if lease is None else lease.epoch,
    }


def node_row(figures: NodeFigures, last_seen_s: float) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(figures.to_json())
    body.pop("totals", None)
    body.pop("consumedAccounts", None)
    body["lastSeenSeconds"] = round(last_seen_s, 3)
    return body


@routes.get("/api/admin/websocket-stats")
async def websocket_stats(request: web.Request) -> web.Response:
    await require_admin(request)
    return web.json_response(await stats_document(request.app))


@routes.post("/api/admin/test-trade")
async def test_trade(request: web.Request) -> web.Response:
    admin = await require_admin(request)
    body = await _json_body(request)
    username, symbol, side, qty = (body.get(k) for k in ("username", "symbol", "side", "qty"))
    if not isinstance(username, str) or not username:
        raise ApiError.bad_request("username is required")
    if not isinstance(symbol, str) or not symbol.strip().isalnum() or len(symbol) > SYMBOL_MAX:
        raise ApiError.bad_request("symbol must be a ticker such as AAPL")
    if side not in ("buy", "sell"):
        raise ApiError.bad_request('side must be "buy" or "sell"')
    try:
        quantity = Decimal(str(qty))
    except (InvalidOperation, ValueError):
        raise ApiError.bad_request("qty must be a positive number") from None
    if not quantity.is_finite() or quantity <= 0:
        raise ApiError.bad_request("qty must be a positive number")
    broker = request.app[BROKER_KEY]
    try:
        order = await broker.place_order(username, symbol.strip().upper(), side, quantity)
    except UnknownAccount as exc:
        raise ApiError(ApiErrorCode.UNKNOWN_ACCOUNT, str(exc)) from None
    except OrderRejected as exc:
        raise ApiError(ApiErrorCode.ORDER_REJECTED, str(exc)) from None
    except BrokerUnavailable as exc:
        raise ApiError(ApiErrorCode.BROKER_UNAVAILABLE, str(exc)) from None
    log.info(
        "[PortfolioStream] Test trade placed",
        admin=admin.username,
        username=username,
        symbol=symbol.upper(),
        side=side,
        qty=str(quantity),
        orderId=order.get("orderId"),
    )
    return web.json_response({"order": order}, status=201)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    token = request.app[SETTINGS_KEY].metrics_token
    if token is not None:
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(supplied.encode(), token.get_secret_value().encode()):
            raise ApiError(ApiErrorCode.UNAUTHORIZED, "Bearer token required")
    body = request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/healthz")
async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    app = request.app
    store = app[STORE_KEY]
    if store.is_open and not store.health.available:
        await store.probe()  # recovers by itself once the disk takes a write again
    checks = {
        "store": store.is_open and store.health.available,
        "bus": app[BUS_KEY].running,
        "stream": app[STREAM_KEY].accepting or not app[SETTINGS_KEY].enable_realtime_portfolio,
        "broker": app[BROKER_KEY].ready,
        "notDraining": not app[LIFECYCLE_KEY].draining,
    }
    ready = all(checks.values())
    body: dict[str, Any] = {"ready": ready, "checks": checks, "store": store.health.status()}
    cluster = app.get(CLUSTER_KEY)
    if cluster is not None:  # a node without Redis still serves its sockets: not a check
        body["cluster"] = cluster.health.as_json()
    broker = app[BROKER_KEY].broker_health()
    if broker is not None:  # the broker's health, apart: browsers can be served without it
        body["broker"] = broker
    return web.json_response(body, status=200 if ready else 503)
