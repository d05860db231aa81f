"""The bus payloads of SPEC §3, built from ledger state: money to the cent, quantities and
given prices exactly as received, times ISO-8601 UTC with a Z. Every payload names its user."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, cast

from alpaca_bridge.positions import Position
from alpaca_bridge.wire_parser import OrderState, TradeUpdate, decimal_text, iso_utc
from app.events import (
    ACCOUNT_UPDATED,
    ORDER_UPDATED,
    POSITION_CLOSED,
    POSITION_UPDATED,
    TRADE_EXECUTED,
    AccountUpdated,
    EventPayload,
    EventType,
    OrderUpdated,
    PositionClosed,
    PositionUpdated,
    TradeExecuted,
)

CENT = Decimal("0.01")
# A computed average (e.g. 2255 / 15) is shown to this many places, as the embedded broker's REST
# shows it; prices with fewer places are shown exactly as given.
PRICE_PLACES = 7
_PRICE_QUANTUM = Decimal(10) ** -PRICE_PLACES


@dataclass(frozen=True, slots=True)
class BusEvent:
    """An event for ``bus.publish(type, payload, quiet=quiet)``."""

    type: EventType
    payload: dict[str, Any]
    quiet: bool = False


def _event(kind: EventType, payload: EventPayload, quiet: bool = False) -> BusEvent:
    # The builders type their payload so mypy checks its fields; at run time a TypedDict is the
    # plain dict the bus takes.
    return BusEvent(kind, cast("dict[str, Any]", payload), quiet)


def money(value: Decimal) -> str:
    return decimal_text(value.quantize(CENT, rounding=ROUND_HALF_EVEN))


def price_text(value: Decimal) -> str:
    if int(value.as_tuple().exponent) < -PRICE_PLACES:
        value = value.quantize(_PRICE_QUANTUM, rounding=ROUND_HALF_EVEN).normalize()
    return decimal_text(value)


def order_updated(user_id: str, order: OrderState, event: str, moment: datetime) -> BusEvent:
    filled_avg = order.filled_avg_price
    payload: OrderUpdated = {
        "userId": user_id,
        "orderId": order.id,
        "clientOrderId": order.client_order_id,
        "symbol": order.symbol,
        "side": order.side,
        "type": order.type,
        "qty": None if order.qty is None else decimal_text(order.qty),
        "filledQty": decimal_text(order.filled_qty),
        "filledAvgPrice": None if filled_avg is None else decimal_text(filled_avg),
        "status": order.status,
        "event": event,
        "timestamp": iso_utc(moment),
    }
    return _event(ORDER_UPDATED, payload)


def trade_executed(
    user_id: str,
    update: TradeUpdate,
    qty: Decimal,
    price: Decimal,
    position_qty: Decimal,
    moment: datetime,
) -> BusEvent:
    order = update.order
    payload: TradeExecuted = {
        "userId": user_id,
        "tradeId": update.execution_id or f"{order.id}:{decimal_text(order.filled_qty)}",
        "orderId": order.id,
        "symbol": order.symbol,
        "side": order.side,
        "qty": decimal_text(qty),
        "price": decimal_text(price),
        "positionQty": decimal_text(position_qty),
        "event": update.event,
        "timestamp": iso_utc(moment),
    }
    return _event(TRADE_EXECUTED, payload)


def position_updated(
    user_id: str, position: Position, moment: datetime, quiet: bool = False
) -> BusEvent:
    cost = position.cost_basis
    pnl = position.unrealized_pnl
    percent = pnl / abs(cost) * 100 if cost else Decimal(0)
    payload: PositionUpdated = {
        "userId": user_id,
        "symbol": position.symbol,
        "qty": decimal_text(position.qty),
        "side": "long" if position.qty > 0 else "short",
        "avgEntryPrice": price_text(position.avg_entry_price),
        "currentPrice": price_text(position.mark),
        "marketValue": money(position.market_value),
        "costBasis": money(cost),
        "unrealizedPnl": money(pnl),
        "unrealizedPnlPercent": money(percent),
        "updatedAt": iso_utc(moment),
    }
    return _event(POSITION_UPDATED, payload, quiet)


def position_closed(user_id: str, symbol: str, moment: datetime) -> BusEvent:
    payload: PositionClosed = {"userId": user_id, "symbol": symbol, "closedAt": iso_utc(moment)}
    return _event(POSITION_CLOSED, payload)


def account_updated(
    user_id: str, figures: tuple[str, str, str], moment: datetime, quiet: bool = False
) -> BusEvent:
    """``figures`` are (equity, cash, buying power), already as money strings."""
    equity, cash, buying_power = figures
    payload: AccountUpdated = {
        "userId": user_id,
        "equity": equity,
        "cash": cash,
        "buyingPower": buying_power,
        "updatedAt": iso_utc(moment),
    }
    return _event(ACCOUNT_UPDATED, payload, quiet)
