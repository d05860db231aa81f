"""One position's arithmetic: how a fill changes quantity and average entry price.

Quantities are signed (negative for shorts, as Alpaca's ``position_qty``). Adding to a position
moves the average entry price to the quantity-weighted mean; reducing it keeps the average (the
closed part realises P&L); a fill that crosses zero opens the remainder at the fill price.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from alpaca_bridge.wire_parser import TradeUpdate


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
