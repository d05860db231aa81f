"""The pub/sub probe's bookkeeping: round trips, misses, lag."""

from __future__ import annotations

import pytest

from app.cluster.probe import ProbeTracker


def test_an_answered_probe_gives_its_round_trip() -> None:
    probe = ProbeTracker()
    assert not probe.tick()
    probe.sent(1, now=10.0)
    assert probe.received(1, now=10.004) == pytest.approx(0.004)
    assert probe.rtt_s == pytest.approx(0.004) and probe.lag_s(11.0) == pytest.approx(0.004)


def test_two_unanswered_intervals_call_for_a_new_connection() -> None:
    probe = ProbeTracker()
    probe.sent(1, now=0.0)
    assert not probe.tick()  # one interval without an answer
    probe.sent(2, now=5.0)
    assert probe.tick()


def test_an_answer_clears_the_misses() -> None:
    probe = ProbeTracker()
    probe.sent(1, now=0.0)
    probe.tick()
    probe.sent(2, now=5.0)
    probe.received(2, now=5.1)  # 1 is superseded: delivery works
    assert not probe.tick()


def test_lag_grows_while_a_probe_is_unanswered() -> None:
    probe = ProbeTracker()
    probe.sent(1, now=0.0)
    probe.received(1, now=0.002)
    probe.sent(2, now=5.0)
    assert probe.lag_s(7.5) == pytest.approx(2.5)


def test_answers_from_before_a_reset_are_ignored() -> None:
    probe = ProbeTracker()
    probe.sent(1, now=0.0)
    probe.reset()
    assert probe.received(1, now=1.0) is None and probe.rtt_s is None
    assert not probe.tick()
