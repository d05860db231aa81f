"""The shared retry backoff: full jitter under a doubling cap, and no overflow in a long outage."""

from __future__ import annotations

import random

from app.backoff import Backoff


def test_delays_stay_under_a_doubling_cap_and_reset_starts_over() -> None:
    backoff = Backoff(0.5, 4.0, rng=random.Random(7))
    caps = [0.5, 1.0, 2.0, 4.0, 4.0]
    for cap in caps:
        assert 0 <= backoff.next_delay() <= cap
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() <= 0.5


def test_thousands_of_attempts_never_overflow() -> None:
    # 2**1100 * 0.5 is beyond a float: an uncapped exponent raised OverflowError here.
    backoff = Backoff(0.5, 30.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(1100)]
    assert max(delays) <= 30.0
