"""Random but plausible orders for demo accounts, so a fresh install shows live activity.

``random_order`` is a pure decision from the account's book and the market: mostly small buys,
and sells only of what is held (never more), sized so cash stays comfortably positive.
``DemoTrader`` places one such order per account on a timer, through the REST order path.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import structlog

from alpaca_bridge.simulator.desk import OrderDesk
from alpaca_bridge.simulator.ledger import AccountBook
from alpaca_bridge.simulator.market import MarketEngine
from alpaca_bridge.simulator.orders import SimApiError
from alpaca_bridge.simulator.rest import place_order
from alpaca_bridge.simulator.wire import Json

log = structlog.get_logger()

SELL_PROBABILITY = 0.35
MAX_SPEND_FRACTION = Decimal("0.08")  # of buying power, per order
MAX_HOLDINGS = 6  # keep a demo portfolio readable


def random_order(
    book: AccountBook, market: MarketEngine, rng: random.Random
) -> dict[str, Any] | None:
    """An order body for ``POST /v2/orders``, or None when nothing sensible can be done."""
    sellable = {s: book.qty_available(s) for s in book.holdings}
    sellable = {s: q for s, q in sellable.items() if q >= 1}
    if sellable and (rng.random() < SELL_PROBABILITY or len(book.holdings) >= MAX_HOLDINGS):
        symbol = rng.choice(sorted(sellable))
        held = int(sellable[symbol])
        # Usually trim, sometimes close the whole position.
        qty = held if rng.random() < 0.3 else rng.randint(1, max(1, held // 2))
        return _market(symbol, "sell", qty)
    candidates = sorted(book.holdings) if len(book.holdings) >= MAX_HOLDINGS else market.symbols
    if not candidates:
        return None
    symbol = rng.choice(candidates)
    budget = book.valuation(market.price).buying_power * MAX_SPEND_FRACTION
    most = int(budget / (market.price(symbol) * Decimal("1.05")))
    if most < 1:
        return None
    return _market(symbol, "buy", rng.randint(1, min(most, 25)))


def _market(symbol: str, side: str, qty: int) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "side": side,
        "qty": str(qty),
        "type": "market",
        "time_in_force": "day",
    }


class DemoTrader:
    """One random order per account every ``interval_s`` while not paused.

    ``configure`` changes the rate and the accounts at once (the next order comes one new
    interval later), so the same timer serves the demo and a test's steady flow of fills.
    """

    def __init__(self, desk: OrderDesk, interval_s: float, seed: int | None) -> None:
        self._desk = desk
        self.interval_s = interval_s
        self.accounts: frozenset[str] | None = None  # None: every account
        self.paused = False
        self._changed = asyncio.Event()
        # Its own generator, so placing an extra order never changes the price path.
        self._rng = random.Random(None if seed is None else seed + 1)

    def configure(
        self, interval_s: float, accounts: Iterable[str] | None = None, *, paused: bool = False
    ) -> None:
        """Place orders every ``interval_s`` (0: none) on ``accounts`` (None: all)."""
        if interval_s < 0:
            raise ValueError("interval_s must be >= 0")
        self.interval_s = interval_s
        self.accounts = None if accounts is None else frozenset(accounts)
        self.paused = paused
        self._changed.set()

    def pause(self, paused: bool = True) -> None:
        self.paused = paused
        self._changed.set()

    def place_round(self) -> list[Json]:
        """One round of orders, as the timer places them; returns the accepted orders."""
        placed = []
        for api_key, book in list(self._desk.books.items()):
            if self.accounts is not None and api_key not in self.accounts:
                continue
            body = random_order(book, self._desk.market, self._rng)
            if body is None:
                continue
            try:
                placed.append(place_order(self._desk, api_key, body))
            except SimApiError as exc:
                log.debug("[SimulatedBroker] Demo order rejected", reason=exc.message)
        return placed

    async def run(self) -> None:
        while True:
            self._changed.clear()
            idle = self.paused or self.interval_s <= 0
            try:
                await asyncio.wait_for(self._changed.wait(), None if idle else self.interval_s)
                continue  # reconfigured: start a fresh interval
            except TimeoutError:
                pass
            if self.paused or self.interval_s <= 0:
                continue
            try:
                self.place_round()
            except Exception:
                log.exception("[SimulatedBroker] Demo orders failed")
