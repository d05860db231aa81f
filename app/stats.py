"""Stream statistics and the runbook's health arithmetic (pure, injectable clock).

Formulas (SPEC §5):
- batch efficiency = 1 - batch messages ÷ event deliveries they carried (one event reaching one
  connection is one delivery); 1.0 before anything was delivered (nothing was wasted);
- disconnect rate = disconnects in the last 5 minutes ÷ 5;
- average connection duration = connection-seconds of closed and open connections ÷ connections;
- a new connection from a user whose connection closed within the reconnect window is a reconnect.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["healthy", "degraded", "offline", "disabled"]

DISCONNECT_RATE_WINDOW_S = 300.0
DEGRADED_WINDOW_S = 60.0
MIN_DELIVERIES_FOR_EFFICIENCY = 100


@dataclass(frozen=True, slots=True)
class Performance:
    batch_efficiency: float
    avg_connection_duration_s: int
    disconnect_rate_per_minute: float


def format_uptime(seconds: float) -> str:
    """``24h 0m`` style, as in the runbook."""
    total_minutes = int(seconds) // 60
    return f"{total_minutes // 60}h {total_minutes % 60}m"


class StreamStats:
    """Counters and windows behind the admin stats route and the metrics."""

    def __init__(
        self, reconnect_window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._reconnect_window = reconnect_window_s
        self.started_at = clock()
        self.messages_delivered = 0
        self.batch_messages = 0
        self.event_deliveries = 0
        self.disconnects = 0
        self.reconnects = 0
        self.connections_total = 0
        self._disconnect_times: deque[float] = deque()
        self._closed_seconds = 0.0
        self._closed_count = 0
        self._open_count = 0
        self._open_start_sum = 0.0
        self._last_close_by_user: dict[str, float] = {}

    def now(self) -> float:
        return self._clock()

    # Recording

    def connection_opened(self, user_id: str) -> tuple[float, bool]:
        """Record an accepted connection; returns (its start time, whether it is a reconnect)."""
        now = self._clock()
        self.connections_total += 1
        self._open_count += 1
        self._open_start_sum += now
        last_close = self._last_close_by_user.get(user_id)
        reconnect = last_close is not None and now - last_close <= self._reconnect_window
        if reconnect:
            self.reconnects += 1
        return now, reconnect

    def connection_closed(self, user_id: str, started_at: float) -> float:
        """Record a closed connection; returns its duration in seconds."""
        now = self._clock()
        duration = max(now - started_at, 0.0)
        self._open_count -= 1
        self._open_start_sum -= started_at
        self._closed_seconds += duration
        self._closed_count += 1
        self.disconnects += 1
        self._disconnect_times.append(now)
        self._last_close_by_user[user_id] = now
        self._prune(now)
        return duration

    def message_sent(self, deliveries: int) -> None:
        """A snapshot (``deliveries == 0``) or batch message reached one connection."""
        self.messages_delivered += 1
        if deliveries:
            self.batch_messages += 1
            self.event_deliveries += deliveries

    def _prune(self, now: float) -> None:
        horizon = now - DISCONNECT_RATE_WINDOW_S
        times = self._disconnect_times
        while times and times[0] < horizon:
            times.popleft()
        if len(self._last_close_by_user) > 1024:
            cutoff = now - self._reconnect_window
            self._last_close_by_user = {
                user: at for user, at in self._last_close_by_user.items() if at >= cutoff
            }

    # Reading

    @property
    def uptime_s(self) -> float:
        return self._clock() - self.started_at

    def batch_efficiency(self) -> float:
        if self.event_deliveries == 0:
            return 1.0
        return max(0.0, 1.0 - self.batch_messages / self.event_deliveries)

    def disconnects_within(self, seconds: float) -> int:
        now = self._clock()
        self._prune(now)
        horizon = now - seconds
        return sum(1 for at in self._disconnect_times if at >= horizon)

    def performance(self) -> Performance:
        now = self._clock()
        open_seconds = self._open_count * now - self._open_start_sum
        connections = self._closed_count + self._open_count
        average = (self._closed_seconds + open_seconds) / connections if connections else 0.0
        rate = self.disconnects_within(DISCONNECT_RATE_WINDOW_S) / (DISCONNECT_RATE_WINDOW_S / 60)
        return Performance(self.batch_efficiency(), round(average), rate)

    def status(self, *, enabled: bool, active: int) -> Status:
        if not enabled:
            return "disabled"
        if active == 0:
            return "offline"
        if self.disconnects_within(DEGRADED_WINDOW_S) > 0.10 * active:
            return "degraded"
        if self.event_deliveries >= MIN_DELIVERIES_FOR_EFFICIENCY and self.batch_efficiency() < 0.5:
            return "degraded"
        return "healthy"

    def report(
        self,
        *,
        enabled: bool,
        active: int,
        by_user: dict[str, int],
        events_emitted: int,
        max_per_user: int,
        max_total: int,
        timestamp: str,
    ) -> dict[str, Any]:
        """The runbook's stats document (every field, same names and types)."""
        perf = self.performance()
        uptime = self.uptime_s
        return {
            "status": self.status(enabled=enabled, active=active),
            "enabled": enabled,
            "activeConnections": active,
            "connectionsByUser": by_user,
            "totalMessagesDelivered": self.messages_delivered,
            "totalEventsEmitted": events_emitted,
            "totalDisconnects": self.disconnects,
            "totalReconnects": self.reconnects,
            "performance": {
                "batchEfficiency": f"{perf.batch_efficiency * 100:.1f}%",
                "batchEfficiencyRaw": round(perf.batch_efficiency, 4),
                "avgConnectionDurationSeconds": perf.avg_connection_duration_s,
                "disconnectRatePerMinute": f"{perf.disconnect_rate_per_minute:.2f}",
            },
            "uptime": {"seconds": int(uptime), "formatted": format_uptime(uptime)},
            "limits": {"maxConnectionsPerUser": max_per_user, "maxTotalConnections": max_total},
            "timestamp": timestamp,
        }
