"""Typed keys for everything the application shares (no string keys, no module singletons)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from alpaca_bridge.service import BrokerBridge
    from app.auth import LoginThrottle
    from app.bus import InProcessBus
    from app.metrics import Metrics
    from app.portfolio import PortfolioStore
    from app.stats import StreamStats
    from app.store import Store
    from app.stream import PortfolioStreamManager
    from config.settings import Settings

SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings")
STORE_KEY: web.AppKey[Store] = web.AppKey("store")
BUS_KEY: web.AppKey[InProcessBus] = web.AppKey("bus")
PORTFOLIO_KEY: web.AppKey[PortfolioStore] = web.AppKey("portfolio")
STATS_KEY: web.AppKey[StreamStats] = web.AppKey("stats")
STREAM_KEY: web.AppKey[PortfolioStreamManager] = web.AppKey("stream")
THROTTLE_KEY: web.AppKey[LoginThrottle] = web.AppKey("throttle")
METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics")
BRIDGE_KEY: web.AppKey[BrokerBridge] = web.AppKey("bridge")
# Set by the lifecycle when shutdown begins: readiness turns 503 and upgrades are refused.
DRAINING_KEY: web.AppKey[dict[str, Any]] = web.AppKey("draining")
