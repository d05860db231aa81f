"""The synthetic event stream: positions ticking for many users, a few symbols hot.

Every payload carries SPEC §3's fields plus ``benchTs`` — the wall-clock creation time as a
float (µs precision is what ``updatedAt`` would give; the float is cheaper to read back). The
load client subtracts it from the receipt time, both on this machine's clock.

Mix per event: 94% ``position:updated`` price ticks (``quiet=True``: DEBUG log lines, as the
bridge does for ticks), 5% ``account:updated`` ticks (quiet), 1% ``order:updated`` (an INFO
emit line, like a real order update). Symbols follow a Zipf-like law over 40 tickers, so the
first few take most of the traffic; users are drawn uniformly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

SYMBOLS = (
    "AAPL",
    "TSLA",
    "NVDA",
    "MSFT",
    "AMZN",
    "META",
    "GOOGL",
    "AMD",
    "SPY",
    "QQQ",
    "NFLX",
    "INTC",
    "BA",
    "DIS",
    "JPM",
    "V",
    "MA",
    "KO",
    "PEP",
    "XOM",
    "CVX",
    "WMT",
    "COST",
    "ORCL",
    "CRM",
    "ADBE",
    "PYPL",
    "UBER",
    "SHOP",
    "SQ",
    "PLTR",
    "SOFI",
    "F",
    "GM",
    "T",
    "VZ",
    "PFE",
    "MRNA",
    "NKE",
    "SBUX",
)
ZIPF_S = 1.1
TABLE = 1 << 16  # pre-drawn random choices, cycled


class IsoClock:
    """ISO-8601 UTC with microseconds; the date-time prefix is formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self, ts: float) -> str:
        second = int(ts)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{int((ts - second) * 1e6):06d}Z"


class Workload:
    """Deterministic (seeded) generator of (event type, payload, quiet) triples."""

    def __init__(self, user_ids: Sequence[str], seed: int = 7) -> None:
        if not user_ids:
            raise ValueError("the workload needs at least one user")
        rng = random.Random(seed)
        weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(SYMBOLS))]
        self._users = rng.choices(list(user_ids), k=TABLE)
        self._symbols = rng.choices(SYMBOLS, weights=weights, k=TABLE)
        self._kinds = rng.choices((0, 1, 2), weights=(94, 5, 1), k=TABLE)
        self._moves = [rng.uniform(-0.002, 0.002) for _ in range(TABLE)]
        self._prices = {s: 50.0 + 10 * i for i, s in enumerate(SYMBOLS)}
        self._qtys = [rng.randint(10, 99) for _ in range(TABLE)]
        self._clock = IsoClock()
        self._i = 0
        self._order_seq = 0

    def next(self) -> tuple[str, dict[str, Any], bool]:
        i = self._i = (self._i + 1) & (TABLE - 1)
        user = self._users[i]
        symbol = self._symbols[i]
        price = self._prices[symbol] = self._prices[symbol] * (1 + self._moves[i])
        now = time.time()
        stamp = self._clock.stamp(now)
        kind = self._kinds[i]
        if kind == 0:
            qty = self._qtys[i]
            entry = price * 0.98
            value = qty * price
            pnl = qty * (price - entry)
            return (
                "position:updated",
                {
                    "userId": user,
                    "symbol": symbol,
                    "qty": str(qty),
                    "side": "long",
                    "avgEntryPrice": f"{entry:.2f}",
                    "currentPrice": f"{price:.2f}",
                    "marketValue": f"{value:.2f}",
                    "costBasis": f"{qty * entry:.2f}",
                    "unrealizedPnl": f"{pnl:.2f}",
                    "unrealizedPnlPercent": f"{pnl / value:.4f}",
                    "updatedAt": stamp,
                    "benchTs": now,
                },
                True,
            )
        if kind == 1:
            equity = 100_000 + price
            return (
                "account:updated",
                {
                    "userId": user,
                    "equity": f"{equity:.2f}",
                    "cash": "25000.00",
                    "buyingPower": f"{2 * equity:.2f}",
                    "updatedAt": stamp,
                    "benchTs": now,
                },
                True,
            )
        self._order_seq += 1
        return (
            "order:updated",
            {
                "userId": user,
                "orderId": f"ord-{self._order_seq % 64}",
                "clientOrderId": f"bench-{self._order_seq}",
                "symbol": symbol,
                "side": "buy",
                "type": "market",
                "qty": "10",
                "filledQty": "10",
                "filledAvgPrice": f"{price:.2f}",
                "status": "filled",
                "event": "fill",
                "timestamp": stamp,
                "benchTs": now,
            },
            False,
        )
