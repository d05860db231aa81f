"""Typed keys for everything the application shares (no string keys, no module singletons).

The broker and the bus are held by their interfaces. Every module named here imports no key,
so reading this file never leads back to it (``tests/test_import_graph.py`` checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from app.broker import Broker, DemoLogin
    from app.bus import EventBus
    from app.cluster.runtime import ClusterRuntime
    from app.connection_budget import ConnectionBudget
    from app.lifecycle import Lifecycle
    from app.login_throttle import LoginThrottling
    from app.metrics import Metrics
    from app.portfolio import PortfolioStore
    from app.stats import StreamStats
    from app.stream import PortfolioStreamManager
    from app.user_store import UserStore
    from config.settings import Settings

SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings")
STORE_KEY: web.AppKey[UserStore] = web.AppKey("store")
BUS_KEY: web.AppKey[EventBus] = web.AppKey("bus")
PORTFOLIO_KEY: web.AppKey[PortfolioStore] = web.AppKey("portfolio")
STATS_KEY: web.AppKey[StreamStats] = web.AppKey("stats")
STREAM_KEY: web.AppKey[PortfolioStreamManager] = web.AppKey("stream")
THROTTLE_KEY: web.AppKey[LoginThrottling] = web.AppKey("throttle")
METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics")
# A NullBroker when no broker runs, so no caller checks for its absence.
BROKER_KEY: web.AppKey[Broker] = web.AppKey("broker")
# The demo logins that work (their users exist with the demo password), for the start-up log.
DEMO_LOGINS_KEY: web.AppKey[tuple[DemoLogin, ...]] = web.AppKey("demo_logins")
# Draining from the moment shutdown begins: readiness turns 503 and upgrades are refused.
LIFECYCLE_KEY: web.AppKey[Lifecycle] = web.AppKey("lifecycle")
# The listener's connections, kept within the descriptors the reserve leaves.
BUDGET_KEY: web.AppKey[ConnectionBudget] = web.AppKey("connection_budget")
# Only with REDIS_URL: this node's part of the cluster.
CLUSTER_KEY: web.AppKey[ClusterRuntime] = web.AppKey("cluster")
