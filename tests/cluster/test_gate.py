"""The per-user notice gate: order, stale drops, gaps and epochs, the snapshot buffer."""

from __future__ import annotations

from app.cluster.gate import BUFFER_LIMIT, NoticeGate, Verdict
from app.cluster.notices import Notice
from app.events import POSITION_UPDATED
from tests.cluster.support import event, position


def notice(offset: int, epoch: str = "e1", qty: str = "1") -> Notice:
    return Notice(epoch, offset, event(POSITION_UPDATED, position("u", "AAPL", qty=qty)))


def positioned(epoch: str | None = "e1", offset: int = 10) -> NoticeGate:
    gate = NoticeGate()
    gate.track("u")
    assert gate.set_position("u", epoch, offset) == ([], False)
    return gate


def test_the_next_offset_is_delivered_and_advances_the_position() -> None:
    gate = positioned()
    assert gate.offer("u", notice(11)) is Verdict.DELIVER
    assert gate.offer("u", notice(12)) is Verdict.DELIVER
    assert gate.position("u") == ("e1", 12)


def test_notices_at_or_below_the_position_are_dropped() -> None:
    gate = positioned()
    assert gate.offer("u", notice(10)) is Verdict.DROP
    assert gate.offer("u", notice(3)) is Verdict.DROP
    assert gate.position("u") == ("e1", 10) and gate.stale == 2


def test_a_skipped_offset_calls_for_a_resync_once_and_then_waits() -> None:
    gate = positioned()
    assert gate.offer("u", notice(12)) is Verdict.RESYNC
    assert gate.position("u") is None and gate.gaps == 1
    # Further notices wait for the re-read instead of calling again.
    assert gate.offer("u", notice(13)) is Verdict.BUFFER


def test_a_new_epoch_calls_for_a_resync() -> None:
    gate = positioned()
    assert gate.offer("u", notice(1, epoch="e2")) is Verdict.RESYNC
    assert gate.epoch_changes == 1


def test_after_a_resync_the_buffer_continues_the_new_snapshot() -> None:
    gate = positioned()
    gate.offer("u", notice(13))  # 11 and 12 were lost
    gate.offer("u", notice(14))
    gate.offer("u", notice(15))

    deliver, resync = gate.set_position("u", "e1", 14)

    assert [n.offset for n in deliver] == [15] and not resync
    assert gate.position("u") == ("e1", 15)


def test_a_snapshot_older_than_the_buffer_is_a_gap_again() -> None:
    gate = NoticeGate()
    gate.track("u")
    gate.offer("u", notice(20))
    gate.offer("u", notice(21))

    deliver, resync = gate.set_position("u", "e1", 18)

    assert deliver == [] and resync and gate.position("u") is None
    # The buffered notices are kept for the next snapshot.
    deliver, resync = gate.set_position("u", "e1", 19)
    assert [n.offset for n in deliver] == [20, 21] and not resync


def test_notices_of_the_replaced_epoch_are_dropped_not_resynced() -> None:
    gate = positioned(epoch="old", offset=50)
    gate.offer("u", notice(1, epoch="new"))
    gate.set_position("u", "new", 1)

    assert gate.offer("u", notice(51, epoch="old")) is Verdict.DROP
    assert gate.offer("u", notice(2, epoch="new")) is Verdict.DELIVER


def test_a_user_without_state_accepts_the_first_offset_of_any_epoch() -> None:
    gate = positioned(epoch=None, offset=0)
    assert gate.offer("u", notice(1, epoch="fresh")) is Verdict.DELIVER
    assert gate.position("u") == ("fresh", 1)


def test_a_user_without_state_resyncs_when_the_first_notice_is_missing() -> None:
    gate = positioned(epoch=None, offset=0)
    assert gate.offer("u", notice(2, epoch="fresh")) is Verdict.RESYNC


def test_a_positioned_user_keeps_its_position_when_a_newer_snapshot_is_set() -> None:
    """Another connection's snapshot must not skip notices the flowing ones still need."""
    gate = positioned(offset=10)
    assert gate.set_position("u", "e1", 15) == ([], False)
    assert gate.position("u") == ("e1", 10)
    assert gate.offer("u", notice(11)) is Verdict.DELIVER


def test_the_wait_buffer_is_bounded_and_keeps_the_newest() -> None:
    gate = NoticeGate()
    gate.track("u")
    for offset in range(1, BUFFER_LIMIT + 11):
        assert gate.offer("u", notice(offset)) is Verdict.BUFFER

    deliver, resync = gate.set_position("u", "e1", 10)

    assert [n.offset for n in deliver] == list(range(11, BUFFER_LIMIT + 11)) and not resync


def test_an_untracked_user_is_neither_delivered_nor_resynced() -> None:
    gate = NoticeGate()
    assert gate.offer("u", notice(1)) is Verdict.UNTRACKED
    gate.track("u")
    gate.forget("u")
    assert gate.offer("u", notice(1)) is Verdict.UNTRACKED
    assert gate.set_position("u", "e1", 0) == ([], False)
