"""Reconnect and retry delays: capped exponential backoff with full jitter.

Full jitter (a uniform draw below the cap, rather than alpaca-py's "equal jitter") spreads the
reconnects of many accounts after a broker-wide blip, so they do not return in lockstep and trip
Alpaca's one-connection-per-key limit (HTTP 429) together (alpaca-py issue #740); and the nodes
that lost Redis together, so they do not all resubscribe in the same instant.
"""

from __future__ import annotations

import random

# 2**30 times any initial delay is far above any cap; a larger exponent would only risk a float
# overflow after some thousand attempts of a long outage.
MAX_DOUBLINGS = 30


class Backoff:
    """Capped exponential backoff with full jitter: uniform(0, min(max, initial * 2**n))."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        self.attempt += 1
        cap = min(self.max_s, self.initial_s * 2 ** min(self.attempt - 1, MAX_DOUBLINGS))
        return self._rng.uniform(0, cap)

    def reset(self) -> None:
        self.attempt = 0
