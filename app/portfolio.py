"""Per-user portfolio state: the latest position per symbol, open and recent orders, the account.

It mirrors bus events (latest value wins) and is the source of WebSocket snapshots and of the
polling fallback ``GET /api/portfolio``. It never mixes users: every lookup is by userId.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.bus import EventBus, Unsubscribe
from app.events import (
    ACCOUNT_UPDATED,
    ORDER_UPDATED,
    POSITION_CLOSED,
    POSITION_UPDATED,
    TERMINAL_STATUSES,
    Event,
)
from app.protocol import ACCOUNT, ORDERS, POSITIONS, public_payload


@dataclass(slots=True)
class UserPortfolio:
    positions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Insertion-ordered so the oldest terminal orders are evicted first.
    orders: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    account: dict[str, Any] | None = None

    def snapshot(self, channels: frozenset[str] | set[str]) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if POSITIONS in channels:
            body[POSITIONS] = [public_payload(p) for _, p in sorted(self.positions.items())]
        if ORDERS in channels:
            body[ORDERS] = [public_payload(o) for o in reversed(self.orders.values())]
        if ACCOUNT in channels:
            body[ACCOUNT] = public_payload(self.account) if self.account else None
        return body


class PortfolioStore:
    """Latest-value state for every user, fed by the bus."""

    def __init__(self, recent_orders_limit: int = 50) -> None:
        self._users: dict[str, UserPortfolio] = {}
        self._recent_limit = recent_orders_limit

    def attach(self, bus: EventBus) -> list[Unsubscribe]:
        handlers: dict[str, Callable[[Event], None]] = {
            POSITION_UPDATED: self._on_position,
            POSITION_CLOSED: self._on_position_closed,
            ORDER_UPDATED: self._on_order,
            ACCOUNT_UPDATED: self._on_account,
        }
        return [bus.subscribe(kind, handler) for kind, handler in handlers.items()]

    def user(self, user_id: str) -> UserPortfolio:
        portfolio = self._users.get(user_id)
        if portfolio is None:
            portfolio = self._users[user_id] = UserPortfolio()
        return portfolio

    def snapshot(self, user_id: str, channels: frozenset[str] | set[str]) -> dict[str, Any]:
        portfolio = self._users.get(user_id)
        return (portfolio or UserPortfolio()).snapshot(channels)

    def replace(self, user_id: str, portfolio: UserPortfolio) -> None:
        """Put a whole state read elsewhere (a cluster's shared state) in place of the user's."""
        self._users[user_id] = portfolio

    def drop(self, user_id: str) -> None:
        self._users.pop(user_id, None)

    def clear(self) -> None:
        self._users.clear()

    def _on_position(self, event: Event) -> None:
        self.user(event.user_id).positions[event.payload["symbol"]] = event.payload

    def _on_position_closed(self, event: Event) -> None:
        self.user(event.user_id).positions.pop(event.payload["symbol"], None)

    def _on_account(self, event: Event) -> None:
        self.user(event.user_id).account = event.payload

    def _on_order(self, event: Event) -> None:
        orders = self.user(event.user_id).orders
        order_id = event.payload["orderId"]
        orders.pop(order_id, None)
        orders[order_id] = event.payload
        self._evict_terminal(orders)

    def _evict_terminal(self, orders: OrderedDict[str, dict[str, Any]]) -> None:
        """Keep every open order but only the most recent ``recent_orders_limit`` closed ones."""
        terminal = [oid for oid, o in orders.items() if o.get("status") in TERMINAL_STATUSES]
        excess = len(terminal) - self._recent_limit
        for order_id in terminal[: max(excess, 0)]:
            del orders[order_id]
