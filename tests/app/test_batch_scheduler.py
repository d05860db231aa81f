"""The per-user batch window (SPEC §4) on a fake clock: the first event arms the timer, later
events never re-arm it, each user has their own, and a zero window flushes on the next turn."""

from __future__ import annotations

from app.batch_scheduler import BatchScheduler
from app.batching import Batch
from app.events import Event
from tests.app.fake_clock import FakeClock
from tests.app.support import position

WINDOW_S = 1.0


class Flushed:
    """The flush callback: what left, for whom, at what fake time."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.batches: list[tuple[float, str, Batch]] = []

    def __call__(self, user_id: str, batch: Batch) -> None:
        self.batches.append((self.clock.now, user_id, batch))

    def symbols(self, index: int) -> list[str]:
        return sorted(self.batches[index][2].positions)


def tick(user: str, symbol: str) -> Event:
    return Event("position:updated", position(user, symbol), 0.0)


def scheduler(window_s: float = WINDOW_S) -> tuple[BatchScheduler, FakeClock, Flushed]:
    clock = FakeClock()
    flushed = Flushed(clock)
    return BatchScheduler(window_s, flushed, clock), clock, flushed


def test_the_first_event_arms_the_timer_and_later_ones_do_not_rearm_it() -> None:
    batches, clock, flushed = scheduler()
    batches.add("alice", tick("alice", "S0"))
    for i in range(1, 5):
        clock.advance(0.2)
        batches.add("alice", tick("alice", f"S{i}"))
    assert clock.delays == [WINDOW_S]  # armed once, by the first event
    assert batches.pending() == 1
    clock.advance(0.19)  # 0.99 s after the first event
    assert flushed.batches == []
    clock.advance(0.01)
    assert [(at, user) for at, user, _ in flushed.batches] == [(WINDOW_S, "alice")]
    assert flushed.symbols(0) == ["S0", "S1", "S2", "S3", "S4"]
    assert batches.pending() == 0


def test_a_new_window_starts_with_the_next_event() -> None:
    batches, clock, flushed = scheduler()
    batches.add("alice", tick("alice", "S0"))
    clock.advance(WINDOW_S)
    clock.advance(5.0)  # idle: nothing is armed while nothing is pending
    assert clock.armed() == 0
    batches.add("alice", tick("alice", "S1"))
    clock.advance(WINDOW_S)
    assert [at for at, _, _ in flushed.batches] == [1.0, 7.0]
    assert flushed.symbols(1) == ["S1"]


def test_each_user_has_their_own_timer() -> None:
    batches, clock, flushed = scheduler()
    batches.add("alice", tick("alice", "AAPL"))
    clock.advance(0.5)
    batches.add("bob", tick("bob", "TSLA"))
    batches.add("alice", tick("alice", "MSFT"))
    clock.advance(0.5)
    assert [(at, user) for at, user, _ in flushed.batches] == [(1.0, "alice")]
    clock.advance(0.5)
    assert [(at, user) for at, user, _ in flushed.batches] == [(1.0, "alice"), (1.5, "bob")]
    assert flushed.symbols(0) == ["AAPL", "MSFT"] and flushed.symbols(1) == ["TSLA"]


def test_window_zero_flushes_a_burst_on_the_next_turn_without_a_timer() -> None:
    batches, clock, flushed = scheduler(window_s=0)
    for i in range(20):
        batches.add("alice", tick("alice", f"S{i}"))
    assert clock.delays == [] and flushed.batches == []  # nothing left within the turn
    clock.next_turn()
    assert len(flushed.batches) == 1 and len(flushed.symbols(0)) == 20
    batches.add("alice", tick("alice", "LATE"))
    clock.next_turn()
    assert len(flushed.batches) == 2 and flushed.symbols(1) == ["LATE"]


def test_a_dropped_window_is_never_sent() -> None:
    batches, clock, flushed = scheduler()
    batches.add("alice", tick("alice", "AAPL"))
    batches.drop("alice")
    assert batches.pending() == 0
    clock.advance(2 * WINDOW_S)
    assert flushed.batches == []


def test_flush_all_sends_every_open_window_now_and_disarms_the_timers() -> None:
    batches, clock, flushed = scheduler()
    batches.add("alice", tick("alice", "AAPL"))
    batches.add("bob", tick("bob", "TSLA"))
    clock.advance(0.1)
    batches.flush_all()
    assert sorted(user for _, user, _ in flushed.batches) == ["alice", "bob"]
    assert all(at == 0.1 for at, _, _ in flushed.batches)
    clock.advance(2 * WINDOW_S)
    assert len(flushed.batches) == 2  # the disarmed timers did not fire again
    assert batches.pending() == 0


def test_clear_forgets_everything_without_sending() -> None:
    batches, clock, flushed = scheduler()
    batches.add("alice", tick("alice", "AAPL"))
    batches.add("bob", tick("bob", "TSLA"))
    batches.clear()
    clock.advance(2 * WINDOW_S)
    assert flushed.batches == [] and batches.pending() == 0
