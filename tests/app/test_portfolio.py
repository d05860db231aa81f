"""PortfolioStore: latest-value state per user, the source of snapshots and /api/portfolio."""

from __future__ import annotations

from typing import Any

from app.events import (
    ACCOUNT_UPDATED,
    ORDER_UPDATED,
    POSITION_CLOSED,
    POSITION_UPDATED,
    Event,
)
from app.portfolio import PortfolioStore

ALL = {"positions", "orders", "account"}


def event(kind: str, **payload: Any) -> Event:
    return Event(kind, payload, emitted_at=0.0)


def order(user: str, order_id: str, status: str) -> Event:
    return event(ORDER_UPDATED, userId=user, orderId=order_id, status=status, symbol="AAPL")


class FakeBus:
    """Collects subscriptions so a test can feed handlers directly (the bus is tested apart)."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Any]] = {}

    def subscribe(self, kind: str, handler: Any) -> Any:
        self.handlers.setdefault(kind, []).append(handler)
        return lambda: self.handlers[kind].remove(handler)

    def emit(self, evt: Event) -> None:
        for handler in self.handlers.get(evt.type, []):
            handler(evt)


def attached(limit: int = 50) -> tuple[PortfolioStore, FakeBus]:
    store, bus = PortfolioStore(limit), FakeBus()
    store.attach(bus)  # type: ignore[arg-type]
    return store, bus


def test_latest_position_wins_and_a_closed_position_disappears() -> None:
    store, bus = attached()
    bus.emit(event(POSITION_UPDATED, userId="u1", symbol="AAPL", qty="1"))
    bus.emit(event(POSITION_UPDATED, userId="u1", symbol="AAPL", qty="5"))
    bus.emit(event(POSITION_UPDATED, userId="u1", symbol="MSFT", qty="2"))
    assert [p["qty"] for p in store.snapshot("u1", ALL)["positions"]] == ["5", "2"]
    bus.emit(event(POSITION_CLOSED, userId="u1", symbol="AAPL", closedAt="t"))
    assert [p["symbol"] for p in store.snapshot("u1", ALL)["positions"]] == ["MSFT"]


def test_snapshots_carry_only_the_requested_channels_and_no_user_id() -> None:
    store, bus = attached()
    bus.emit(event(ACCOUNT_UPDATED, userId="u1", equity="100", cash="100", buyingPower="100"))
    snapshot = store.snapshot("u1", {"account"})
    assert snapshot == {"account": {"equity": "100", "cash": "100", "buyingPower": "100"}}
    assert store.snapshot("nobody", ALL) == {"positions": [], "orders": [], "account": None}


def test_open_orders_are_kept_and_only_the_most_recent_closed_ones() -> None:
    store, bus = attached(limit=2)
    bus.emit(order("u1", "open-1", "new"))
    for n in range(5):
        bus.emit(order("u1", f"done-{n}", "filled"))
    bus.emit(order("u1", "open-2", "partially_filled"))
    ids = [o["orderId"] for o in store.snapshot("u1", {"orders"})["orders"]]
    assert ids == ["open-2", "done-4", "done-3", "open-1"]  # newest first


def test_an_order_update_moves_the_order_to_most_recent() -> None:
    store, bus = attached()
    bus.emit(order("u1", "a", "new"))
    bus.emit(order("u1", "b", "new"))
    bus.emit(order("u1", "a", "filled"))
    orders = store.snapshot("u1", {"orders"})["orders"]
    assert [(o["orderId"], o["status"]) for o in orders] == [("a", "filled"), ("b", "new")]


def test_users_never_share_state_and_detach_stops_updates() -> None:
    store, bus = PortfolioStore(), FakeBus()
    undo = store.attach(bus)  # type: ignore[arg-type]
    bus.emit(event(POSITION_UPDATED, userId="u1", symbol="AAPL", qty="1"))
    assert store.snapshot("u2", {"positions"}) == {"positions": []}
    for unsubscribe in undo:
        unsubscribe()
    bus.emit(event(POSITION_UPDATED, userId="u1", symbol="TSLA", qty="1"))
    assert [p["symbol"] for p in store.snapshot("u1", ALL)["positions"]] == ["AAPL"]
