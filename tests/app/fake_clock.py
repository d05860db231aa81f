"""A fake event-loop clock: ``call_later``/``call_soon`` that run only when the test says so."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class FakeHandle:
    when: float
    order: int
    callback: Callable[[str], None] = field(compare=False)
    arg: str = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Time stands still until ``advance``; ``call_soon`` callbacks run at ``next_turn``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.delays: list[float] = []  # every call_later delay, in order
        self._timers: list[FakeHandle] = []
        self._soon: list[FakeHandle] = []
        self._order = itertools.count()

    def call_later(self, delay: float, callback: Callable[[str], None], arg: str, /) -> FakeHandle:
        self.delays.append(delay)
        handle = FakeHandle(self.now + delay, next(self._order), callback, arg)
        heapq.heappush(self._timers, handle)
        return handle

    def call_soon(self, callback: Callable[[str], None], arg: str, /) -> FakeHandle:
        handle = FakeHandle(self.now, next(self._order), callback, arg)
        self._soon.append(handle)
        return handle

    def next_turn(self) -> None:
        """Run what ``call_soon`` scheduled before this turn began."""
        due, self._soon = self._soon, []
        for handle in due:
            if not handle.cancelled:
                handle.callback(handle.arg)

    def advance(self, seconds: float) -> None:
        """Move time forward, running each timer that falls due at its own time."""
        until = self.now + seconds
        while self._timers and self._timers[0].when <= until:
            handle = heapq.heappop(self._timers)
            self.now = handle.when
            if not handle.cancelled:
                handle.callback(handle.arg)
        self.now = until

    def armed(self) -> int:
        return sum(1 for h in self._timers if not h.cancelled)
