"""Duplicate detection for trade updates, in bounded memory.

Alpaca may deliver an update twice (around reconnects, or a resend); each is recognised by
``TradeUpdate.dedup_key``: the ``execution_id`` for fills, and (order id, event, order
``updated_at``) for everything else. Only the newest keys are remembered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

# Far more updates than can be in flight across a reconnect.
DEDUP_WINDOW = 10_000


class RecentKeys:
    """A bounded set remembering the newest keys (LRU eviction)."""

    def __init__(self, capacity: int = DEDUP_WINDOW) -> None:
        self._keys: OrderedDict[Hashable, None] = OrderedDict()
        self._capacity = capacity

    def add(self, key: Hashable) -> bool:
        """Remember ``key``; False if it was already there."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
        return True
