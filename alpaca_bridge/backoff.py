"""Reconnect and retry delays: capped exponential backoff with full jitter.

Full jitter (a uniform draw below the cap, rather than alpaca-py's "equal jitter") spreads the
reconnects of many accounts after a broker-wide blip, so they do not return in lockstep and trip
Alpaca's one-connection-per-key limit (HTTP 429) together (alpaca-py issue #740).
"""

from __future__ import annotations

import random


class Backoff:
    """Capped exponential backoff with full jitter: uniform(0, min(max, initial * 2**n))."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        self.attempt += 1
        cap = min(self.max_s, self.initial_s * 2 ** (self.attempt - 1))
        return self._rng.uniform(0, cap)

    def reset(self) -> None:
        self.attempt = 0
