"""One position's arithmetic: how a fill changes quantity and average entry price.

Quantities are signed (negative for shorts, as Alpaca's ``position_qty``). Adding to a position
moves the average entry price to the quantity-weighted mean; reducing it keeps the average (the
closed part realises P&L); a fill that crosses zero opens the remainder at the fill price.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from alpaca_bridge.models import TradeUpdate, decimal_text

# A computed average (e.g. 2255 / 15) is shown to this many places, as the embedded broker's REST
# shows it; prices with fewer places are shown exactly as given.
PRICE_PLACES = 7
_PRICE_QUANTUM = Decimal(10) ** -PRICE_PLACES


@dataclass(slots=True)
class Position:
    symbol: str
    qty: Decimal
    avg_entry_price: Decimal
    current_price: Decimal | None = None

    @property
    def mark(self) -> Decimal:
        """The price positions are valued at: the last trade, else what was paid."""
        return self.current_price if self.current_price is not None else self.avg_entry_price

    @property
    def market_value(self) -> Decimal:
        return self.qty * self.mark

    @property
    def cost_basis(self) -> Decimal:
        return self.qty * self.avg_entry_price

    @property
    def unrealized_pnl(self) -> Decimal:
        return self.market_value - self.cost_basis

    def as_tuple(self) -> tuple[Decimal, Decimal, Decimal | None]:
        return (self.qty, self.avg_entry_price, self.current_price)


def price_text(value: Decimal) -> str:
    if int(value.as_tuple().exponent) < -PRICE_PLACES:
        value = value.quantize(_PRICE_QUANTUM, rounding=ROUND_HALF_EVEN).normalize()
    return decimal_text(value)


def position_payload(position: Position, money: Callable[[Decimal], str]) -> dict[str, str]:
    """The ``position:updated`` fields (without userId/updatedAt)."""
    cost = position.cost_basis
    pnl = position.unrealized_pnl
    percent = pnl / abs(cost) * 100 if cost else Decimal(0)
    return {
        "symbol": position.symbol,
        "qty": decimal_text(position.qty),
        "side": "long" if position.qty > 0 else "short",
        "avgEntryPrice": price_text(position.avg_entry_price),
        "currentPrice": price_text(position.mark),
        "marketValue": money(position.market_value),
        "costBasis": money(cost),
        "unrealizedPnl": money(pnl),
        "unrealizedPnlPercent": money(percent),
    }


def signed_fill(update: TradeUpdate, counted: Decimal) -> tuple[Decimal, Decimal] | None:
    """(signed quantity, price) of this execution, or None if the message cannot tell.

    Without ``qty``/``price`` (tolerated, never seen in practice) the order's cumulative figures
    stand in: the growth of ``filled_qty`` since last counted, at ``filled_avg_price``.
    """
    order = update.order
    qty = update.qty
    if qty is None and order.filled_qty > counted:
        qty = order.filled_qty - counted
    price = update.price if update.price is not None else order.filled_avg_price
    if qty is None or qty <= 0 or price is None or order.side not in ("buy", "sell"):
        return None
    return (qty if order.side == "buy" else -qty), price


def trade(
    position: Position | None,
    symbol: str,
    signed_qty: Decimal,
    price: Decimal,
    broker_qty: Decimal | None = None,
) -> Position | None:
    """The position after a fill; None when it is closed. ``broker_qty`` (Alpaca's
    ``position_qty``) wins over our own sum when they differ."""
    held = position.qty if position is not None else Decimal(0)
    average = position.avg_entry_price if position is not None else price
    after = held + signed_qty
    if held == 0 or (held > 0) == (signed_qty > 0):
        average = (held * average + signed_qty * price) / after
    elif abs(signed_qty) > abs(held):
        average = price  # flipped through zero: the remainder opened at this price
    if broker_qty is not None and broker_qty != after:
        if broker_qty != 0 and (after == 0 or (broker_qty > 0) != (after > 0)):
            average = price
        after = broker_qty
    if after == 0:
        return None
    return Position(symbol, after, average, price)
