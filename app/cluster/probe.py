"""The end-to-end pub/sub probe's bookkeeping (a pure core; times passed in).

A node publishes a numbered probe on its own channel every interval and expects it back through
its own subscription. A PING answer proves only that Redis reads the socket, not that it still
delivers (centrifugo issue #1189, python-socketio #1581, kombu #2590): an answered probe does.
"""

from __future__ import annotations

# Consecutive intervals a probe may stay unanswered before the connection is replaced.
MISSED_LIMIT = 2


class ProbeTracker:
    def __init__(self, missed_limit: int = MISSED_LIMIT) -> None:
        self._limit = missed_limit
        self._outstanding: dict[int, float] = {}
        self._missed = 0
        self.rtt_s: float | None = None
        self.answered = 0

    def tick(self) -> bool:
        """Called once per interval before the next probe; True: too many went unanswered."""
        self._missed = self._missed + 1 if self._outstanding else 0
        return self._missed >= self._limit

    def sent(self, seq: int, now: float) -> None:
        self._outstanding[seq] = now

    def received(self, seq: int, now: float) -> float | None:
        """The round trip of an answered probe; None for one this session did not send."""
        sent_at = self._outstanding.get(seq)
        if sent_at is None:
            return None
        self._outstanding = {s: t for s, t in self._outstanding.items() if s > seq}
        self._missed = 0
        self.answered += 1
        self.rtt_s = now - sent_at
        return self.rtt_s

    def lag_s(self, now: float) -> float | None:
        """How far behind delivery is: the oldest unanswered probe's age, else the last RTT."""
        oldest = min(self._outstanding.values(), default=None)
        waiting = None if oldest is None else now - oldest
        if waiting is None or (self.rtt_s is not None and self.rtt_s > waiting):
            return self.rtt_s
        return waiting

    def reset(self) -> None:
        """A new connection: probes sent on the old one will never come back."""
        self._outstanding.clear()
        self._missed = 0
