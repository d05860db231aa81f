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

SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings", "Settings")
STORE_KEY: web.AppKey[Store] = web.AppKey("store", "Store")
BUS_KEY: web.AppKey[InProcessBus] = web.AppKey("bus", "InProcessBus")
PORTFOLIO_KEY: web.AppKey[PortfolioStore] = web.AppKey("portfolio", "PortfolioStore")
STATS_KEY: web.AppKey[StreamStats] = web.AppKey("stats", "StreamStats")
STREAM_KEY: web.AppKey[PortfolioStreamManager] = web.AppKey("stream", "PortfolioStreamManager")
THROTTLE_KEY: web.AppKey[LoginThrottle] = web.AppKey("throttle", "LoginThrottle")
METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics", "Metrics")
BRIDGE_KEY: web.AppKey[BrokerBridge] = web.AppKey("bridge", "BrokerBridge")
# Set by the lifecycle when shutdown begins: readiness turns 503 and upgrades are refused.
DRAINING_KEY: web.AppKey[dict[str, Any]] = web.AppKey("draining", "dict")
