"""Bus event types and their payloads (SPEC §3).

Money and quantities are exact decimal strings, as Alpaca sends them; times are ISO-8601 UTC.
Every payload carries ``userId``: the stream routes by it and never crosses users.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypedDict

TRADE_EXECUTED: Final = "trade:executed"
ORDER_UPDATED: Final = "order:updated"
POSITION_UPDATED: Final = "position:updated"
POSITION_CLOSED: Final = "position:closed"
ACCOUNT_UPDATED: Final = "account:updated"

EventType = Literal[
    "trade:executed", "order:updated", "position:updated", "position:closed", "account:updated"
]

# The runbook's three first, in its order, then the two this service adds.
EVENT_TYPES: Final[tuple[EventType, ...]] = (
    TRADE_EXECUTED,
    POSITION_UPDATED,
    POSITION_CLOSED,
    ORDER_UPDATED,
    ACCOUNT_UPDATED,
)

# Alpaca order statuses after which an order never changes again (``order:updated`` status).
TERMINAL_STATUSES: Final = frozenset(
    {
        "filled",
        "canceled",
        "expired",
        "rejected",
        "replaced",
        "done_for_day",
        "stopped",
        "suspended",
        "calculated",
    }
)


class TradeExecuted(TypedDict):
    userId: str
    tradeId: str
    orderId: str
    symbol: str
    side: str
    qty: str
    price: str
    positionQty: str
    event: str
    timestamp: str


class OrderUpdated(TypedDict):
    userId: str
    orderId: str
    clientOrderId: str
    symbol: str
    side: str
    type: str
    qty: str | None
    filledQty: str
    filledAvgPrice: str | None
    status: str
    event: str
    timestamp: str


class PositionUpdated(TypedDict):
    userId: str
    symbol: str
    qty: str
    side: str
    avgEntryPrice: str
    currentPrice: str
    marketValue: str
    costBasis: str
    unrealizedPnl: str
    unrealizedPnlPercent: str
    updatedAt: str


class PositionClosed(TypedDict):
    userId: str
    symbol: str
    closedAt: str


class AccountUpdated(TypedDict):
    userId: str
    equity: str
    cash: str
    buyingPower: str
    updatedAt: str


EventPayload = TradeExecuted | OrderUpdated | PositionUpdated | PositionClosed | AccountUpdated

PAYLOAD_TYPES: Final[dict[EventType, type[EventPayload]]] = {
    TRADE_EXECUTED: TradeExecuted,
    ORDER_UPDATED: OrderUpdated,
    POSITION_UPDATED: PositionUpdated,
    POSITION_CLOSED: PositionClosed,
    ACCOUNT_UPDATED: AccountUpdated,
}

# The payload fields of each type, in the order above: the TypedDicts are their one definition.
REQUIRED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    kind: tuple(payload.__annotations__) for kind, payload in PAYLOAD_TYPES.items()
}
_REQUIRED_SETS: Final = {kind: frozenset(names) for kind, names in REQUIRED_FIELDS.items()}


class InvalidEvent(ValueError):
    """A publish with an unknown type or a payload missing a required field."""


def validate_payload(event_type: str, payload: dict[str, Any]) -> None:
    required = _REQUIRED_SETS.get(event_type)
    if required is None:
        raise InvalidEvent(f"unknown event type {event_type!r}")
    if not required <= payload.keys():
        missing = [name for name in REQUIRED_FIELDS[event_type] if name not in payload]
        raise InvalidEvent(f"{event_type} payload is missing {', '.join(missing)}")
    if not isinstance(payload["userId"], str) or not payload["userId"]:
        raise InvalidEvent(f"{event_type} payload needs a non-empty userId")


@dataclass(slots=True, frozen=True)
class Event:
    """One bus event. ``emitted_at`` is wall-clock seconds (for emit-to-send latency);
    ``quiet`` marks high-rate price-tick events whose log lines are DEBUG."""

    type: str
    payload: dict[str, Any]
    emitted_at: float
    quiet: bool = False
    origin: str | None = field(default=None, compare=False)

    @property
    def user_id(self) -> str:
        return str(self.payload["userId"])
