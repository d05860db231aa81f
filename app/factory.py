"""The application factory: everything is built from an explicit Settings object.

Resources are ``cleanup_ctx`` generators in dependency order — store, (with REDIS_URL) the
cluster node, bus, portfolio state, broker, stream manager, (with REDIS_URL) the node's stats
reports — so they start in that order and stop in reverse. The broker is
``alpaca_bridge``'s bridge, or a ``NullBroker`` when the app runs without one; its context
creates the demo users it reports before starting it. Graceful shutdown (SPEC §9) is
``Lifecycle.shutdown``, run from ``on_shutdown`` before aiohttp waits for handlers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence

from aiohttp import web

from alpaca_bridge.service import BrokerBridge
from app import api, pages
from app.broker import AccountStatus, Broker, DemoLogin, NullBroker, UserLookup
from app.bus import InProcessBus
from app.cluster.login_throttle import login_throttle_for
from app.cluster.price_relay import price_relay_for
from app.cluster.runtime import ClusterRuntime
from app.connection_budget import ConnectionBudget
from app.csrf import csrf_middleware
from app.errors import error_middleware
from app.keys import (
    BROKER_KEY,
    BUDGET_KEY,
    BUS_KEY,
    CLUSTER_KEY,
    DEMO_LOGINS_KEY,
    LIFECYCLE_KEY,
    METRICS_KEY,
    PORTFOLIO_KEY,
    SETTINGS_KEY,
    STATS_KEY,
    STORE_KEY,
    STREAM_KEY,
    THROTTLE_KEY,
)
from app.lifecycle import Lifecycle
from app.metrics import Metrics
from app.migrations import report
from app.portfolio import PortfolioStore
from app.process_tuning import client_socket_capacity
from app.stats import StatsRules, StatsTotals, StreamStats
from app.store_select import store_for
from app.stream import WS_PATH, PortfolioStreamManager
from app.user_store import UserStore
from app.ws import portfolio_ws
from config.logging import dropped_log_lines
from config.settings import Settings

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = store_for(app[SETTINGS_KEY])
    report(await store.open())
    app[STORE_KEY] = store
    yield
    await store.close()


async def cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """With REDIS_URL: Redis scripts, the notice subscriber and the slot refresher, before the
    bus; closed after it (this node's slots and stats row are given back last)."""
    cluster = app[CLUSTER_KEY]
    await cluster.start()
    yield
    await cluster.close()


async def cluster_reports_ctx(app: web.Application) -> AsyncIterator[None]:
    """This node's row in the cluster's stats, written once the stream serves."""
    stream, stats, broker, bus = app[STREAM_KEY], app[STATS_KEY], app[BROKER_KEY], app[BUS_KEY]
    cluster = app[CLUSTER_KEY]

    def collect() -> tuple[int, int, list[AccountStatus], StatsTotals]:
        active = stream.active_connections
        consumed = cluster.consumed_accounts(broker)
        totals = dataclasses.replace(stats.totals(active), events_emitted=bus.events_emitted)
        return active, len(stream.connections_by_user()), consumed, totals

    cluster.start_reports(collect)
    yield


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


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    broker = app[BROKER_KEY]
    app[DEMO_LOGINS_KEY] = await _create_demo_users(app[STORE_KEY], broker.demo_logins)
    await broker.start()
    yield
    await broker.stop()  # a no-op once Lifecycle.shutdown stopped it


async def _create_demo_users(
    store: UserStore, logins: Sequence[DemoLogin]
) -> tuple[DemoLogin, ...]:
    """Create each demo user that does not exist yet; returns the logins that work."""
    working = []
    for login in logins:
        await store.ensure_user(login.username, login.password, is_admin=login.is_admin)
        # An existing user keeps its own password: only advertise logins that work.
        if await store.authenticate(login.username, login.password) is not None:
            working.append(login)
    return tuple(working)


async def stream_ctx(app: web.Application) -> AsyncIterator[None]:
    manager = app[STREAM_KEY]
    await manager.start(app[STORE_KEY].revocations)  # a session's end closes its sockets
    yield
    await manager.shutdown()  # a no-op once Lifecycle.shutdown ran it


async def graceful_shutdown(app: web.Application) -> None:
    cluster = app.get(CLUSTER_KEY)
    if cluster is not None:
        # Hand every account over now: another node consumes it within a renewal, not a TTL.
        await cluster.stop_leases()
    await app[LIFECYCLE_KEY].shutdown()


async def leases_ctx(app: web.Application) -> AsyncIterator[None]:
    """With REDIS_URL: compete for the leases of the accounts this node may consume."""
    app[CLUSTER_KEY].start_leases(app[BROKER_KEY])
    yield
    await app[CLUSTER_KEY].stop_leases()


def _user_lookup(app: web.Application) -> UserLookup:
    async def user_id(username: str) -> str | None:
        user = await app[STORE_KEY].get_user_by_username(username)
        return None if user is None else user.id

    return user_id


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
    sources.draining = lambda: app[LIFECYCLE_KEY].draining
    sources.max_total_connections = lambda: settings.max_total_connections
    sources.max_connections_per_user = lambda: settings.max_connections_per_user
    sources.connections_shed = lambda: app[BUDGET_KEY].shed
    sources.log_lines_dropped = dropped_log_lines
    cluster = app.get(CLUSTER_KEY)
    if cluster is not None:
        sources.cluster = cluster.gauges
    # An account another node consumes (standby here) is not a stream of this node's.
    sources.broker_streams = lambda: [
        (a["username"], a["mode"], a["status"] == "connected")
        for a in app[BROKER_KEY].accounts_status()
        if a["status"] != "standby"
    ]


def create_app(
    settings: Settings, *, with_bridge: bool = True, extra_contexts: tuple[CleanupContext, ...] = ()
) -> web.Application:
    """Build the service. ``with_bridge=False`` puts a ``NullBroker`` in the bridge's place
    (events then come from the tests or from ``extra_contexts``)."""
    budget = ConnectionBudget(client_socket_capacity())
    app = web.Application(
        middlewares=[
            budget.middleware,
            error_middleware({WS_PATH}),
            csrf_middleware(settings.allowed_origins),
        ],
        client_max_size=settings.http_max_body_bytes,
    )
    app[SETTINGS_KEY] = settings
    app[BUDGET_KEY] = budget
    app[PORTFOLIO_KEY] = PortfolioStore(settings.recent_orders_limit)
    # With REDIS_URL the portfolio store mirrors the shared state of the users held here.
    cluster = ClusterRuntime(settings, app[PORTFOLIO_KEY]) if settings.redis_url else None
    if cluster is not None:
        app[CLUSTER_KEY] = cluster
    app[BUS_KEY] = cluster.bus if cluster is not None else InProcessBus()
    app[STATS_KEY] = StreamStats(StatsRules.from_settings(settings))
    app[METRICS_KEY] = Metrics()
    app[THROTTLE_KEY] = login_throttle_for(settings, cluster.node if cluster else None)
    broker: Broker = (
        BrokerBridge(
            settings,
            app[BUS_KEY],
            _user_lookup(app),
            on_demand=cluster is not None,
            price_relay=(
                price_relay_for(settings, cluster.node.redis, cluster.node_id)
                if cluster is not None
                else None
            ),
        )
        if with_bridge
        else NullBroker()
    )
    app[BROKER_KEY] = broker
    app[DEMO_LOGINS_KEY] = ()
    app[STREAM_KEY] = PortfolioStreamManager(
        settings,
        app[BUS_KEY],
        app[PORTFOLIO_KEY],
        app[STATS_KEY],
        app[METRICS_KEY],
        snapshot=cluster.view.snapshot if cluster is not None else None,
    )
    if cluster is not None:
        cluster.view.set_resnapshot(app[STREAM_KEY].resnapshot)
        cluster.bus.set_rebuild(broker.rebuild_state)
    app[LIFECYCLE_KEY] = Lifecycle(app[STREAM_KEY], broker)
    _wire_metrics(app)

    contexts: list[CleanupContext] = [store_ctx]
    if cluster is not None:
        contexts.append(cluster_ctx)
    contexts += [bus_ctx, portfolio_ctx, broker_ctx]
    if cluster is not None:
        contexts.append(leases_ctx)
    contexts += [*extra_contexts, stream_ctx]
    if cluster is not None:
        contexts.append(cluster_reports_ctx)
    app.cleanup_ctx.extend(contexts)
    app.on_shutdown.append(graceful_shutdown)

    app.router.add_routes(api.routes)
    app.router.add_get(WS_PATH, portfolio_ws)
    pages.setup(app)
    return app
