"""The live endpoint fuzzed through a real server process while another user's batches flow.

Each generated frame (text, binary, junk, deep nesting, huge numbers, oversized) must get the
answer the protocol documents — the error code the parser gives, a pong, a subscribed reply,
or close 1009 — and the neighbour, another user watching a portfolio whose prices tick, must
keep receiving batches at the window's cadence: its largest gap between batches stays within
two windows, measured on the server's own ``ts`` so the fuzzer's CPU does not blur it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings

from tests.faults import strategies as s
from tests.faults.clients import OP_BINARY, Closed, Watcher
from tests.faults.fuzzing import Frame, FuzzSession, live_frames, text
from tests.faults.harness import Live, live_service

pytestmark = pytest.mark.slow

WINDOW_MS = 500
LIVE = settings(
    parent=settings.get_profile("faults"),
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp_path: Path = tmp_path_factory.mktemp("live-fuzz")
    with live_service(tmp_path, ["nina"], others=["fuzz"], BATCH_WINDOW_MS=WINDOW_MS) as running:
        # Two held symbols whose prices tick: the neighbour gets a batch every window.
        for symbol, qty in (("AAPL", 10), ("MSFT", 5)):
            running.broker.submit("nina", symbol, "buy", qty)
        yield running


def test_every_fuzzed_frame_gets_its_documented_answer_and_the_neighbour_keeps_receiving(
    live: Live,
) -> None:
    mark = live.server.log_mark()
    fuzz = FuzzSession(live)
    with Watcher(live.server.base_url, live.sessions["nina"].cookie) as neighbour:
        neighbour.wait(lambda seen: len(seen.batches) >= 2, 10, "the neighbour's first batches")

        @LIVE
        @given(live_frames)
        @example(text('{"type": "subscribe", "channels": ["positions", "trades"]}'))
        @example(text("[" * 2000))
        @example(text('{"type": 1e400}'))
        @example(Frame(OP_BINARY, b"\x00\xff"))
        @example(text(b"\xc3\x28"))
        def fuzz_one(frame: Frame) -> None:
            fuzz.exchange(frame)

        try:
            fuzz_one()
        finally:
            fuzz.close()
        neighbour.wait(lambda seen: len(seen.batches) >= 8, 15, "batches after the fuzz")
        seen = neighbour.stop()
    window_s = WINDOW_MS / 1000
    assert not seen.errors and seen.close_code is None, seen
    assert seen.seq_contiguous(), seen.seqs
    assert seen.largest_gap_s() <= 2 * window_s, (
        f"neighbour's largest gap {seen.largest_gap_s():.3f}s over {len(seen.batches)} batches"
    )
    assert fuzz.tried >= 100 and fuzz.connections >= 5
    live.server.assert_no_traceback(mark)


hostile_types = s.json_values.filter(lambda v: not isinstance(v, str))


def test_a_non_string_type_is_answered_unknown_type_without_a_traceback(live: Live) -> None:
    mark = live.server.log_mark()
    fuzz = FuzzSession(live)

    @settings(LIVE, max_examples=40, phases=[Phase.explicit, Phase.generate])
    @given(hostile_types)
    @example({})
    @example([])
    def fuzz_one(kind: Any) -> None:
        ws = fuzz._connection()
        fuzz.exchanges += 1
        ws.send_text(s.dumps({"type": kind}))
        try:
            answer = ws.message()
        except (Closed, TimeoutError) as exc:
            fuzz.close()
            raise AssertionError(f"type {kind!r}: no answer ({exc!r})") from None
        assert answer == {**answer, "type": "error", "code": "unknown_type"}, answer

    try:
        fuzz_one()
    finally:
        fuzz.close()
    live.server.assert_no_traceback(mark)
