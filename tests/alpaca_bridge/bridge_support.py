"""Helpers for the bridge tests that run BrokerBridge against the simulated broker: settings
pointing BROKER=alpaca at it, and the portfolio as the bus and as REST describe it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from alpaca_bridge.service import BrokerBridge
from alpaca_bridge.simulator import SimulatedBroker
from app.broker import UserLookup
from app.events import Event
from app.store import Store
from config.settings import Settings

KEY, SECRET = "PKALICE", "alice-secret"

AlpacaBridgeFor = Callable[..., BrokerBridge]
"""Builds a bridge on the simulated broker from settings overrides (``alpaca_bridge_for``)."""


def alpaca_settings(sim: SimulatedBroker, tmp_path: Path, **values: Any) -> Settings:
    """BROKER=alpaca pointed at the simulator: the production code path, on loopback."""
    defaults: dict[str, Any] = {
        "broker": "alpaca",
        "alpaca_api_key": KEY,
        "alpaca_secret_key": SECRET,
        "alpaca_username": "alice",
        "alpaca_api_url": sim.base_url,
        "alpaca_stream_url": sim.trading_stream_url,
        "alpaca_data_stream_url": sim.data_stream_url,
        "database_url": f"sqlite:///{tmp_path}/users.db",
        "alpaca_backoff_initial_s": 0.05,
        "alpaca_backoff_max_s": 0.2,
        "alpaca_auth_timeout_s": 2,
    }
    return Settings(_env_file=None, **(defaults | values))


def users_in(store: Store) -> UserLookup:
    """The bridge's view of the user store: username to user id."""

    async def user_id(username: str) -> str | None:
        user = await store.get_user_by_username(username)
        return None if user is None else user.id

    return user_id


def is_(kind: str, **fields: Any) -> Callable[[Event], bool]:
    return lambda e: e.type == kind and all(e.payload.get(k) == v for k, v in fields.items())


def bus_state(events: list[Event], user_id: str) -> dict[str, Any]:
    """The latest-value portfolio the bus describes for one user."""
    positions: dict[str, dict[str, Any]] = {}
    orders: dict[str, dict[str, Any]] = {}
    account: dict[str, Any] = {}
    for event in (e for e in events if e.user_id == user_id):
        payload = event.payload
        if event.type == "position:updated":
            positions[payload["symbol"]] = payload
        elif event.type == "position:closed":
            positions.pop(payload["symbol"], None)
        elif event.type == "order:updated":
            orders[payload["orderId"]] = payload
        elif event.type == "account:updated":
            account = payload
    return {
        "positions": {
            s: (Decimal(p["qty"]), Decimal(p["avgEntryPrice"])) for s, p in positions.items()
        },
        "orders": {i: (o["status"], Decimal(o["filledQty"])) for i, o in orders.items()},
        "cash": Decimal(account["cash"]),
        "buyingPower": Decimal(account["buyingPower"]),
    }


def rest_state(sim: SimulatedBroker, key: str) -> dict[str, Any]:
    account = sim.account(key)
    return {
        "positions": {
            p["symbol"]: (Decimal(p["qty"]), Decimal(p["avg_entry_price"]))
            for p in sim.positions(key)
        },
        "orders": {o["id"]: (o["status"], Decimal(o["filled_qty"])) for o in sim.orders(key)},
        "cash": Decimal(account["cash"]),
        "buyingPower": Decimal(account["buying_power"]),
    }


async def started(bridge: BrokerBridge, collected: Any) -> str:
    await bridge.start()
    [status] = bridge.accounts_status()
    await collected.wait_for(is_("account:updated", userId=status["userId"]))
    return str(status["userId"])


async def buy(bridge: BrokerBridge, collected: Any, symbol: str, qty: int) -> Event:
    order = await bridge.place_order("alice", symbol, "buy", Decimal(qty))
    return await collected.wait_for(is_("trade:executed", orderId=order["orderId"]))


async def keep_stream_down(broker: SimulatedBroker) -> None:
    """Cut the account's stream and leave it down (auth goes unanswered) until auth is "ok"."""
    broker.set_auth_behaviour(KEY, "silent")
    broker.drop_trading_streams(KEY, how="abort")
    await asyncio.wait_for(broker.wait_trading_disconnected(KEY), 5)
