"""Coalescing of bus events into per-user batches (pure: no sockets, no timers).

A ``Batch`` holds only the latest value per key — one entry per symbol, per order, one account —
so its size is bounded by the user's portfolio, never by the event rate. The same structure is a
slow connection's pending state: merging batches into it keeps memory flat however long the
socket stalls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from app.events import (
    ACCOUNT_UPDATED,
    ORDER_UPDATED,
    POSITION_CLOSED,
    POSITION_UPDATED,
    TRADE_EXECUTED,
    Event,
)
from app.protocol import ACCOUNT, CHANNELS, ORDERS, POSITIONS, public_payload

# Every possible channel set, built once: connections share these instead of each holding its
# own frozenset (216 bytes apiece at tens of thousands of connections).
_CHANNEL_SETS: Final[dict[frozenset[str], frozenset[str]]] = {
    subset: subset
    for subset in (
        frozenset(c for i, c in enumerate(CHANNELS) if mask >> i & 1)
        for mask in range(1 << len(CHANNELS))
    )
}


def channel_set(channels: frozenset[str]) -> frozenset[str]:
    """The shared instance equal to ``channels`` (which must hold known channels only)."""
    return _CHANNEL_SETS[channels]


# Which channel an event type belongs to (trade:executed informs about positions).
CHANNEL_OF: Final[dict[str, str]] = {
    POSITION_UPDATED: POSITIONS,
    POSITION_CLOSED: POSITIONS,
    TRADE_EXECUTED: POSITIONS,
    ORDER_UPDATED: ORDERS,
    ACCOUNT_UPDATED: ACCOUNT,
}


@dataclass(slots=True)
class Batch:
    """Coalesced changes: latest per symbol/order, closed symbols, latest account."""

    positions: dict[str, dict[str, Any]] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    account: dict[str, Any] | None = None
    # Events folded in, per channel: a connection's delivery count depends on its channels.
    counts: dict[str, int] = field(default_factory=dict)
    # Wall-clock emit time of the oldest event folded in (for emit-to-send latency).
    oldest_emit: float | None = None
    # Whether any event folded in was not a quiet price tick (its flush line is then INFO).
    loud: bool = False

    def add(self, event: Event) -> None:
        kind = event.type
        payload = event.payload
        if kind == POSITION_UPDATED:
            symbol = payload["symbol"]
            self.positions[symbol] = payload
            self.closed.discard(symbol)
        elif kind == POSITION_CLOSED:
            symbol = payload["symbol"]
            self.positions.pop(symbol, None)
            self.closed.add(symbol)
        elif kind == ORDER_UPDATED:
            self.orders[payload["orderId"]] = payload
        elif kind == ACCOUNT_UPDATED:
            self.account = payload
        channel = CHANNEL_OF.get(kind)
        if channel is not None:
            self.counts[channel] = self.counts.get(channel, 0) + 1
        if self.oldest_emit is None or event.emitted_at < self.oldest_emit:
            self.oldest_emit = event.emitted_at
        if not event.quiet:
            self.loud = True

    def merge(self, other: Batch, channels: frozenset[str] | set[str]) -> None:
        """Fold ``other`` (restricted to ``channels``) into this batch; newest wins."""
        if POSITIONS in channels:
            for symbol, payload in other.positions.items():
                self.positions[symbol] = payload
                self.closed.discard(symbol)
            for symbol in other.closed:
                self.positions.pop(symbol, None)
                self.closed.add(symbol)
        if ORDERS in channels:
            self.orders.update(other.orders)
        if ACCOUNT in channels and other.account is not None:
            self.account = other.account
        for channel, count in other.counts.items():
            if channel in channels:
                self.counts[channel] = self.counts.get(channel, 0) + count
        if other.oldest_emit is not None and (
            self.oldest_emit is None or other.oldest_emit < self.oldest_emit
        ):
            self.oldest_emit = other.oldest_emit

    def event_count(self, channels: frozenset[str] | set[str]) -> int:
        return sum(count for channel, count in self.counts.items() if channel in channels)

    def is_empty(self) -> bool:
        return not self.counts

    def body(self, channels: frozenset[str] | set[str], ts: str) -> dict[str, Any] | None:
        """The ``batch`` fields for a connection on ``channels``; None if nothing applies."""
        count = self.event_count(channels)
        if count == 0:
            return None
        body: dict[str, Any] = {}
        if POSITIONS in channels:
            body[POSITIONS] = [public_payload(p) for p in self.positions.values()]
            body["closedPositions"] = sorted(self.closed)
        if ORDERS in channels:
            body[ORDERS] = [public_payload(o) for o in self.orders.values()]
        if ACCOUNT in channels and self.account is not None:
            body[ACCOUNT] = public_payload(self.account)
        body["eventCount"] = count
        body["ts"] = ts
        return body

    def summary(self) -> tuple[int, int, int]:
        """(position updates, order updates, total events) for the Batch flushed line."""
        return (
            len(self.positions) + len(self.closed),
            len(self.orders),
            sum(self.counts.values()),
        )
