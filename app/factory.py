"""The application factory: everything is built from an explicit Settings object.

Resources are ``cleanup_ctx`` generators in dependency order — store, bus, portfolio state,
broker bridge, stream manager — so they start in that order and stop in reverse. Graceful
shutdown (SPEC §9) runs in ``on_shutdown``, before aiohttp waits for handlers: stop accepting,
stop the broker streams, unsubscribe, flush pending batches, close every socket with 1001.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from app import api, pages
from app.auth import LoginThrottle
from app.bus import InProcessBus
from app.csrf import csrf_middleware
from app.errors import error_middleware
from app.keys import (
    BRIDGE_KEY,
    BUS_KEY,
    DRAINING_KEY,
    METRICS_KEY,
    PORTFOLIO_KEY,
    SETTINGS_KEY,
    STATS_KEY,
    STORE_KEY,
    STREAM_KEY,
    THROTTLE_KEY,
)
from app.metrics import Metrics
from app.portfolio import PortfolioStore
from app.stats import StreamStats
from app.store import Store
from app.stream import WS_PATH, PortfolioStreamManager
from app.ws import portfolio_ws
from config.logging import get_logger
from config.settings import Settings

log = get_logger()

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    store = Store(
        settings.sqlite_path,
        hash_concurrency=settings.login_hash_concurrency,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        session_check_interval_s=settings.session_check_interval_s,
    )
    await store.open()
    app[STORE_KEY] = store
    yield
    await store.close()


async def bus_ctx(app: web.Application) -> AsyncIterator[None]:
    bus = app[BUS_KEY]
    await bus.start()
    yield
    await bus.close()


async def portfolio_ctx(app: web.Application) -> AsyncIterator[None]:
    unsubscribe = app[PORTFOLIO_KEY].attach(app[BUS_KEY])
    yield
    for undo in unsubscribe:
        undo()
    app[PORTFOLIO_KEY].clear()


async def stream_ctx(app: web.Application) -> AsyncIterator[None]:
    manager = app[STREAM_KEY]
    await manager.start()
    yield
    await manager.shutdown()  # idempotent; already done by on_shutdown in a graceful stop


async def drain(app: web.Application) -> None:
    """on_shutdown: the graceful-shutdown sequence of the runbook."""
    app[DRAINING_KEY]["draining"] = True
    manager = app[STREAM_KEY]
    manager.stop_accepting()
    log.info("[PortfolioStream] Shutting down", activeConnections=manager.active_connections)
    bridge = app.get(BRIDGE_KEY)
    if bridge is not None:
        await bridge.stop()
    await manager.shutdown()
    log.info("[PortfolioStream] Shutdown complete: all connections closed")


def _wire_metrics(app: web.Application) -> None:
    metrics, stats, settings = app[METRICS_KEY], app[STATS_KEY], app[SETTINGS_KEY]
    sources = metrics.sources
    sources.active_connections = lambda: app[STREAM_KEY].active_connections
    sources.messages_delivered = lambda: stats.messages_delivered
    sources.event_deliveries = lambda: stats.event_deliveries
    sources.events_emitted = lambda: app[BUS_KEY].events_emitted
    sources.reconnects = lambda: stats.reconnects
    sources.batch_efficiency = stats.batch_efficiency
    sources.bus_queue_depth = lambda: app[BUS_KEY].queue_depth
    sources.enabled = lambda: settings.enable_realtime_portfolio
    sources.batch_messages = lambda: stats.batch_messages
    sources.draining = lambda: bool(app[DRAINING_KEY].get("draining"))
    sources.max_total_connections = lambda: settings.max_total_connections
    sources.max_connections_per_user = lambda: settings.max_connections_per_user

    def broker_streams() -> list[tuple[str, str, bool]]:
        bridge = app.get(BRIDGE_KEY)
        if bridge is None:
            return []
        return [
            (a["username"], a["mode"], a["status"] == "connected") for a in bridge.accounts_status()
        ]

    sources.broker_streams = broker_streams


def create_app(
    settings: Settings, *, with_bridge: bool = True, extra_contexts: tuple[CleanupContext, ...] = ()
) -> web.Application:
    """Build the service. ``with_bridge=False`` runs without a broker (events come from tests)."""
    app = web.Application(
        middlewares=[error_middleware({WS_PATH}), csrf_middleware(settings.allowed_origins)],
        client_max_size=64 * 1024,
    )
    app[SETTINGS_KEY] = settings
    app[BUS_KEY] = InProcessBus()
    app[PORTFOLIO_KEY] = PortfolioStore(settings.recent_orders_limit)
    app[STATS_KEY] = StreamStats(settings.reconnect_window_s)
    app[METRICS_KEY] = Metrics()
    app[THROTTLE_KEY] = LoginThrottle(
        settings.login_max_failures,
        settings.login_lockout_s,
        settings.login_max_failures_per_address,
    )
    app[DRAINING_KEY] = {"draining": False}
    app[STREAM_KEY] = PortfolioStreamManager(
        settings, app[BUS_KEY], app[PORTFOLIO_KEY], app[STATS_KEY], app[METRICS_KEY]
    )
    _wire_metrics(app)

    contexts: list[Any] = [store_ctx, bus_ctx, portfolio_ctx]
    if with_bridge:
        from alpaca_bridge.service import bridge_ctx

        contexts.append(bridge_ctx)
    contexts.extend(extra_contexts)
    contexts.append(stream_ctx)
    app.cleanup_ctx.extend(contexts)
    app.on_shutdown.append(drain)

    app.router.add_routes(api.routes)
    app.router.add_get(WS_PATH, portfolio_ws)
    pages.setup(app)
    return app
