"""The order desk: accepts orders, fills them against the simulated market, announces each step.

Every state change is made in the account book first and then handed to ``announce`` as a
``trade_updates`` payload, so whatever a stream client hears, REST already shows. Fills happen
on loop timers a moment after acceptance (like a real venue), never inside the request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable
from decimal import ROUND_FLOOR, Decimal

from alpaca_bridge.simulator.ledger import AccountBook, Execution
from alpaca_bridge.simulator.market import MarketEngine
from alpaca_bridge.simulator.orders import OrderRequest, SimApiError, SimOrder, invalid
from alpaca_bridge.simulator.sockets import StateWatch
from alpaca_bridge.simulator.wire import Json, trade_update

Announce = Callable[[str, Json], None]
HISTORY = 1000  # trade updates remembered per account, for tests and duplicate resends


class OrderDesk:
    """Order lifecycle for every account: ``new`` → (``partial_fill``) → ``fill`` | ``canceled``."""

    def __init__(
        self, market: MarketEngine, announce: Announce, *, fill_delay_s: float = 0.05
    ) -> None:
        self.market = market
        self.books: dict[str, AccountBook] = {}
        self.fill_delay_s = fill_delay_s
        self.partial_fills = False
        self.clock_ns: Callable[[], int] = time.time_ns  # the broker's clock, for every timestamp
        self._announce = announce
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._history: dict[str, deque[Json]] = {}
        self.watch = StateWatch()  # notified on every announcement

    def open_book(self, book: AccountBook) -> None:
        self.books[book.account.api_key] = book
        self._history.setdefault(book.account.api_key, deque(maxlen=HISTORY))

    def book(self, api_key: str) -> AccountBook:
        """The account's book; KeyError for an unknown key."""
        return self.books[api_key]

    def history(self, api_key: str) -> list[Json]:
        """Every trade update announced for the account, delivered or not, oldest first."""
        return list(self._history.get(api_key, ()))

    def submit(self, api_key: str, request: OrderRequest) -> SimOrder:
        """Accept an order (announcing ``new``) and schedule its fill; raises SimApiError."""
        book = self.book(api_key)
        listing = self.market.listing(request.symbol)
        if listing is None:
            raise invalid(f"asset {request.symbol} not found")
        book.check(request, self.market.price)
        holding = book.holdings.get(request.symbol)
        held = holding.qty if holding else Decimal(0)
        opens = held >= 0 if request.side == "buy" else held <= 0
        intent = f"{request.side}_to_{'open' if opens else 'close'}"
        order = SimOrder(request, listing.asset_id, self.clock_ns(), intent)
        book.place(order)
        self._emit(api_key, "new", order)
        if self._marketable(order):
            self._schedule(api_key, order)
        elif request.time_in_force in ("ioc", "fok"):
            self.cancel(api_key, order.id)
        return order

    def cancel(self, api_key: str, order_id: str) -> SimOrder:
        """Cancel an open order (announcing ``canceled``); 404/422 SimApiError otherwise."""
        book = self.book(api_key)
        order = book.orders.get(order_id)
        if order is None:
            raise SimApiError(404, 40410000, "order not found")
        book.cancel(order, self.clock_ns())
        timer = self._timers.pop(order.id, None)
        if timer is not None:
            timer.cancel()
        self._emit(api_key, "canceled", order)
        return order

    def on_price(self, symbol: str) -> None:
        """A new price for ``symbol``: resting limit orders that became marketable fill now."""
        for api_key, book in self.books.items():
            for order in list(book.open_orders()):
                if (
                    order.symbol == symbol
                    and order.id not in self._timers
                    and self._marketable(order)
                ):
                    self._schedule(api_key, order, delay=0.0)

    def resend_last_fill(self, api_key: str) -> Json | None:
        """Announce the account's latest fill again, byte for byte (a duplicate execution)."""
        for payload in reversed(self._history.get(api_key, ())):
            if payload["data"]["event"] in ("fill", "partial_fill"):
                self._announce(api_key, payload)
                return payload
        return None

    def close(self) -> None:
        """Forget pending fills (on shutdown); orders stay open in the books."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _marketable(self, order: SimOrder) -> bool:
        limit = order.request.limit_price
        if limit is None:
            return True
        price = self.market.price(order.symbol)
        return price <= limit if order.side == "buy" else price >= limit

    def _schedule(self, api_key: str, order: SimOrder, delay: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        wait = self.fill_delay_s if delay is None else delay
        self._timers[order.id] = loop.call_later(wait, self._fill, api_key, order)

    def _fill(self, api_key: str, order: SimOrder) -> None:
        self._timers.pop(order.id, None)
        if not order.is_open:
            return
        if not self._marketable(order):
            return  # the price moved away from the limit; on_price will retry
        qty = order.leaves_qty
        if self.partial_fills and order.filled_qty == 0 and qty >= 2:
            qty = (qty / 2).to_integral_value(rounding=ROUND_FLOOR)
        execution = self.book(api_key).execute(
            order, qty, self.market.price(order.symbol), self.clock_ns()
        )
        self._emit(api_key, execution.event, order, execution)
        if order.is_open:
            self._schedule(api_key, order)

    def _emit(
        self, api_key: str, event: str, order: SimOrder, execution: Execution | None = None
    ) -> None:
        at_ns = execution.at_ns if execution is not None else order.updated_ns
        execution_id = execution.id if execution is not None else str(uuid.uuid4())
        payload = trade_update(event, order, at_ns, execution_id, execution)
        self._history[api_key].append(payload)
        self._announce(api_key, payload)
        self.watch.notify()
