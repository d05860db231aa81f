"""One brokerage account's books: cash, positions, orders and executions, all in Decimal.

Pure bookkeeping with explicit timestamps, so the REST views and the stream events are both
derived from the same numbers: a fill moves cash by ``qty * price`` and the position by ``qty``
in one step, and the execution it returns is what the stream announces.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal

from alpaca_bridge.simulator.orders import OrderRequest, SimApiError, SimOrder, forbidden, invalid

# Market buys are checked against the price plus a margin, as Alpaca does, so that a fill a few
# ticks later at a slightly higher price cannot take cash below zero.
MARKET_BUY_BUFFER = Decimal("1.03")

PriceOf = Callable[[str], Decimal]


@dataclass(frozen=True, slots=True)
class SimAccount:
    """A brokerage account of the simulated broker; ``label`` is informational (our username)."""

    api_key: str
    secret_key: str
    label: str = ""


@dataclass(slots=True)
class Holding:
    """An open position; ``qty`` is signed (negative for a short)."""

    symbol: str
    asset_id: str
    qty: Decimal
    avg_entry_price: Decimal

    def apply(self, delta: Decimal, price: Decimal) -> None:
        """Add a signed execution: averaging in, reducing at the same basis, or flipping."""
        if self.qty == 0 or (self.qty > 0) == (delta > 0):
            held, added = abs(self.qty), abs(delta)
            self.avg_entry_price = (held * self.avg_entry_price + added * price) / (held + added)
        elif abs(delta) > abs(self.qty):
            self.avg_entry_price = price  # the part beyond flat opens a new position here
        self.qty += delta


@dataclass(frozen=True, slots=True)
class Execution:
    """One fill or partial fill; ``qty``/``price`` are this execution's own."""

    id: str
    order_id: str
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    at_ns: int
    event: str
    position_qty: Decimal
    cum_qty: Decimal
    leaves_qty: Decimal
    order_status: str


@dataclass(frozen=True, slots=True)
class Valuation:
    """Account figures at given prices (Alpaca: equity = cash + long + short market value)."""

    cash: Decimal
    long_market_value: Decimal
    short_market_value: Decimal
    buying_power: Decimal

    @property
    def equity(self) -> Decimal:
        return self.cash + self.long_market_value + self.short_market_value


class AccountBook:
    """Everything the broker knows about one account. Not thread-safe: used on one loop."""

    def __init__(
        self, account: SimAccount, cash: Decimal, *, opened_ns: int, shorting: bool = False
    ) -> None:
        self.account = account
        self.id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim-account:{account.api_key}"))
        self.account_number = "PA" + self.id.replace("-", "")[:10].upper()
        self.opened_ns = opened_ns
        self.cash = cash
        self.last_equity = cash
        self.shorting = shorting
        self.holdings: dict[str, Holding] = {}
        self.orders: dict[str, SimOrder] = {}  # insertion order is submission order
        self.executions: list[Execution] = []

    def open_orders(self) -> Iterator[SimOrder]:
        return (order for order in self.orders.values() if order.is_open)

    def find_client_order(self, client_order_id: str) -> SimOrder | None:
        return next(
            (o for o in self.orders.values() if o.request.client_order_id == client_order_id), None
        )

    def valuation(self, price_of: PriceOf) -> Valuation:
        long_value = sum(
            (h.qty * price_of(h.symbol) for h in self.holdings.values() if h.qty > 0), Decimal(0)
        )
        short_value = sum(
            (h.qty * price_of(h.symbol) for h in self.holdings.values() if h.qty < 0), Decimal(0)
        )
        reserved = sum(
            (self._reserve(o, price_of) for o in self.open_orders() if o.side == "buy"), Decimal(0)
        )
        equity = self.cash + long_value + short_value
        # A cash account: no leverage, and short-sale proceeds are not spendable.
        buying_power = max(min(self.cash, equity) - reserved, Decimal(0))
        return Valuation(self.cash, long_value, short_value, buying_power)

    def qty_available(self, symbol: str) -> Decimal:
        """Shares of ``symbol`` not already promised to open orders that close the position."""
        holding = self.holdings.get(symbol)
        if holding is None:
            return Decimal(0)
        closing_side = "sell" if holding.qty > 0 else "buy"
        promised = sum(
            (
                o.leaves_qty
                for o in self.open_orders()
                if o.symbol == symbol and o.side == closing_side
            ),
            Decimal(0),
        )
        return holding.qty - promised if holding.qty > 0 else holding.qty + promised

    def check(self, request: OrderRequest, price_of: PriceOf) -> None:
        """Raise :class:`SimApiError` unless the account can place ``request`` now."""
        if self.find_client_order(request.client_order_id) is not None:
            raise invalid("client_order_id must be unique")
        price = price_of(request.symbol)
        buying_power = self.valuation(price_of).buying_power
        if request.side == "buy":
            if self._cost(request.qty, request.limit_price, price) > buying_power:
                raise forbidden("insufficient buying power")
            return
        available = max(self.qty_available(request.symbol), Decimal(0))
        if request.qty <= available:
            return
        if not self.shorting:
            raise forbidden(
                f"insufficient qty available for order "
                f"(requested: {request.qty}, available: {available})"
            )
        short_part = request.qty - available
        if short_part != short_part.to_integral_value():
            raise forbidden("fractional orders cannot be sold short")
        if short_part * price > buying_power:
            raise forbidden("insufficient buying power")

    def place(self, order: SimOrder) -> None:
        self.orders[order.id] = order

    def execute(self, order: SimOrder, qty: Decimal, price: Decimal, at_ns: int) -> Execution:
        """Fill ``qty`` of ``order`` at ``price``; updates order, position and cash together."""
        if not order.is_open or qty <= 0 or qty > order.leaves_qty:
            raise SimApiError(422, 42210000, "order is not fillable")
        delta = qty if order.side == "buy" else -qty
        holding = self.holdings.get(order.symbol)
        if holding is None:
            holding = Holding(order.symbol, order.asset_id, Decimal(0), price)
            self.holdings[order.symbol] = holding
        holding.apply(delta, price)
        if holding.qty == 0:
            del self.holdings[order.symbol]
        self.cash -= delta * price
        order.filled_qty += qty
        order.filled_notional += qty * price
        order.updated_ns = at_ns
        if order.filled_qty == order.request.qty:
            order.status, order.filled_ns = "filled", at_ns
        else:
            order.status = "partially_filled"
        execution = Execution(
            id=str(uuid.uuid4()),
            order_id=order.id,
            symbol=order.symbol,
            side=order.side,
            qty=qty,
            price=price,
            at_ns=at_ns,
            event="fill" if order.status == "filled" else "partial_fill",
            position_qty=holding.qty,
            cum_qty=order.filled_qty,
            leaves_qty=order.leaves_qty,
            order_status=order.status,
        )
        self.executions.append(execution)
        return execution

    def cancel(self, order: SimOrder, at_ns: int) -> None:
        if not order.is_open:
            raise SimApiError(422, 42210000, "order is not cancelable")
        order.status, order.canceled_ns, order.updated_ns = "canceled", at_ns, at_ns

    @staticmethod
    def _cost(qty: Decimal, limit_price: Decimal | None, price: Decimal) -> Decimal:
        return qty * (limit_price if limit_price is not None else price * MARKET_BUY_BUFFER)

    def _reserve(self, order: SimOrder, price_of: PriceOf) -> Decimal:
        return self._cost(order.leaves_qty, order.request.limit_price, price_of(order.symbol))
