"""The overlap measure of the simulator's stream log: the longest stretch with two or more
authenticated connections of one key at once."""

from __future__ import annotations

from alpaca_bridge.simulator.stream_log import StreamRecord, overlap


def span(start: float | None, end: float | None) -> StreamRecord:
    record = StreamRecord(0, "trading", "127.0.0.1:1", connected_at=0.0, api_key="PK")
    record.authenticated_at, record.closed_at = start, end
    return record


def test_sequential_and_touching_connections_do_not_overlap() -> None:
    result = overlap([span(1, 2), span(2, 3), span(5, 6)], now=10)
    assert (result.max_s, result.count, result.max_concurrent) == (0, 0, 1)
    assert overlap([], now=10).max_concurrent == 0


def test_never_authenticated_connections_do_not_count() -> None:
    assert overlap([span(1, 5), span(None, None)], now=10).max_s == 0


def test_overlapping_stretches_are_counted_and_the_longest_kept() -> None:
    # 1-4, 3-6 and 5-8: two at once over 3-4 and again over 5-6, with one alone in between.
    result = overlap([span(1, 4), span(3, 6), span(5, 8)], now=10)
    assert (result.max_s, result.count, result.max_concurrent) == (1, 2, 2)
    # Three at once inside a longer stretch of two.
    result = overlap([span(0, 10), span(2, 8), span(4, 6)], now=20)
    assert (result.max_s, result.count, result.max_concurrent) == (6, 1, 3)


def test_an_overlap_still_open_runs_to_now() -> None:
    result = overlap([span(1, None), span(3, None)], now=7.5)
    assert (result.max_s, result.count, result.max_concurrent) == (4.5, 1, 2)
