"""The simulated market: a seeded random walk over a fixed set of US equities.

Pure state and arithmetic, no I/O: the broker calls :meth:`MarketEngine.step` on its tick timer
and :meth:`MarketEngine.set_price` from test controls, and publishes the prints it gets back.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Listing:
    """Static facts about one symbol: where it lists and what it cost when the session began."""

    symbol: str
    exchange: str
    start_price: Decimal

    @property
    def asset_id(self) -> str:
        """Stable per symbol, like Alpaca's asset ids."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim-asset:{self.symbol}"))

    @property
    def tape(self) -> str:
        """Consolidated tape: C for Nasdaq listings, A for NYSE, B for Arca and the rest."""
        return {"NASDAQ": "C", "NYSE": "A"}.get(self.exchange, "B")


# Plausible recent prices; the walk drifts from here, mean-reverting so a long demo stays sane.
DEFAULT_LISTINGS: tuple[Listing, ...] = tuple(
    Listing(symbol, exchange, Decimal(price))
    for symbol, exchange, price in (
        ("AAPL", "NASDAQ", "229.87"),
        ("MSFT", "NASDAQ", "428.15"),
        ("NVDA", "NASDAQ", "134.25"),
        ("AMZN", "NASDAQ", "201.45"),
        ("GOOGL", "NASDAQ", "176.80"),
        ("META", "NASDAQ", "589.34"),
        ("TSLA", "NASDAQ", "251.44"),
        ("AMD", "NASDAQ", "142.33"),
        ("NFLX", "NASDAQ", "754.68"),
        ("INTC", "NASDAQ", "22.71"),
        ("QQQ", "NASDAQ", "496.71"),
        ("SPY", "NYSEARCA", "589.12"),
        ("JPM", "NYSE", "242.18"),
        ("V", "NYSE", "311.02"),
        ("KO", "NYSE", "62.45"),
    )
)


@dataclass(frozen=True, slots=True)
class Print:
    """One trade on the tape: what the data stream sends as a ``{"T":"t"}`` message."""

    symbol: str
    trade_id: int
    price: Decimal
    size: int
    tape: str


def to_cents(value: Decimal) -> Decimal:
    """A price rounded to the cent, never below one cent."""
    return max(value.quantize(CENT, rounding=ROUND_HALF_EVEN), CENT)


class MarketEngine:
    """Current prices and the walk that moves them; deterministic for a given seed.

    ``step`` moves a random subset of symbols (IEX prints are sparse) by a small Gaussian
    return and returns one print per moved symbol.
    """

    VOLATILITY = 0.0015  # per-tick standard deviation of the return
    REVERSION = 0.002  # pull towards the start price per tick, keeps hours-long runs plausible
    PRINT_PROBABILITY = 0.6

    def __init__(self, symbols: Sequence[str] | None = None, *, seed: int | None = None) -> None:
        known = {listing.symbol: listing for listing in DEFAULT_LISTINGS}
        chosen = list(symbols) if symbols is not None else list(known)
        self._rng = random.Random(seed)
        self._listings: dict[str, Listing] = {}
        self._prices: dict[str, Decimal] = {}
        self._next_trade_id = 1
        for symbol in chosen:
            self.list_symbol(symbol.upper())

    def list_symbol(self, symbol: str, price: Decimal | None = None) -> Listing:
        """Make ``symbol`` tradable (idempotent); unknown names start at a plausible price."""
        listing = self._listings.get(symbol)
        if listing is None:
            known = {item.symbol: item for item in DEFAULT_LISTINGS}
            listing = known.get(symbol) or Listing(
                symbol, "NASDAQ", price or to_cents(Decimal(repr(self._rng.uniform(20, 300))))
            )
            self._listings[symbol] = listing
            self._prices[symbol] = price if price is not None else listing.start_price
        return listing

    @property
    def symbols(self) -> list[str]:
        return list(self._listings)

    def listing(self, symbol: str) -> Listing | None:
        return self._listings.get(symbol)

    def price(self, symbol: str) -> Decimal:
        """The last trade price; KeyError for a symbol that is not listed."""
        return self._prices[symbol]

    def set_price(self, symbol: str, price: Decimal) -> Print:
        """Force a trade at ``price`` (listing the symbol if needed) and return the print."""
        if price <= 0:
            raise ValueError("price must be positive")
        listing = self.list_symbol(symbol, to_cents(price))
        self._prices[symbol] = to_cents(price)
        return self._print(listing)

    def step(self) -> list[Print]:
        """Advance one tick; returns the prints of the symbols that traded."""
        prints = []
        for symbol, listing in self._listings.items():
            if self._rng.random() > self.PRINT_PROBABILITY:
                continue
            current = float(self._prices[symbol])
            pull = self.REVERSION * math.log(float(listing.start_price) / current)
            ret = self._rng.gauss(pull, self.VOLATILITY)
            self._prices[symbol] = to_cents(Decimal(repr(current * math.exp(ret))))
            prints.append(self._print(listing))
        return prints

    def _print(self, listing: Listing) -> Print:
        trade_id = self._next_trade_id
        self._next_trade_id += 1
        size = self._rng.choice((1, 1, 5, 10, 25, 50, 100, 100, 100, 200, 300, 500))
        return Print(listing.symbol, trade_id, self._prices[listing.symbol], size, listing.tape)
