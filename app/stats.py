"""Stream statistics and the runbook's health arithmetic (pure, injectable clock).

Formulas (SPEC §5):
- batch efficiency = 1 - batch messages ÷ event deliveries they carried (one event reaching one
  connection is one delivery); 1.0 before anything was delivered (nothing was wasted);
- disconnect rate = disconnects in the last 5 minutes ÷ 5;
- average connection duration = connection-seconds of closed and open connections ÷ connections;
- a new connection from a user whose connection closed within the reconnect window is a reconnect;
- status ``degraded``: disconnects within a window over a share of the active connections, or
  batch efficiency under a minimum once enough deliveries were made (``StatsRules``, Settings).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from config.settings import Settings

Status = Literal["healthy", "degraded", "offline", "disabled"]

# Not a setting: ``disconnectRatePerMinute`` is defined over the last 5 minutes (SPEC §5, the
# runbook), and docs/alerts.yml's rate(...[5m]) alert reads the same window.
DISCONNECT_RATE_WINDOW_S: Final = 300.0
# Users remembered for reconnect detection before the expired entries are dropped; pruning on
# every close would cost a pass over all users each time.
RECENT_CLOSES_PRUNE_AT: Final = 1024


@dataclass(frozen=True, slots=True)
class StatsRules:
    """What counts as a reconnect, and when the status is ``degraded`` (from Settings)."""

    reconnect_window_s: float
    degraded_disconnect_ratio: float
    degraded_disconnect_window_s: float
    degraded_min_batch_efficiency: float
    degraded_min_deliveries: int

    @classmethod
    def from_settings(cls, settings: Settings) -> StatsRules:
        return cls(
            reconnect_window_s=settings.reconnect_window_s,
            degraded_disconnect_ratio=settings.degraded_disconnect_ratio,
            degraded_disconnect_window_s=settings.degraded_disconnect_window_s,
            degraded_min_batch_efficiency=settings.degraded_min_batch_efficiency,
            degraded_min_deliveries=settings.degraded_min_deliveries,
        )


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

    def __init__(self, rules: StatsRules, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rules = rules
        self._reconnect_window = rules.reconnect_window_s
        # Disconnect times are kept as long as the longer of the two windows reading them needs.
        self._disconnect_horizon_s = max(
            DISCONNECT_RATE_WINDOW_S, rules.degraded_disconnect_window_s
        )
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
        horizon = now - self._disconnect_horizon_s
        times = self._disconnect_times
        while times and times[0] < horizon:
            times.popleft()
        if len(self._last_close_by_user) > RECENT_CLOSES_PRUNE_AT:
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
        return self.totals(0).performance()

    def status(self, *, enabled: bool, active: int) -> Status:
        return self.totals(active).status(enabled=enabled, rules=self._rules)

    def totals(self, active: int) -> StatsTotals:
        """The counters every formula reads, summable across the nodes of a cluster."""
        now = self._clock()
        self._prune(now)
        open_seconds = self._open_count * now - self._open_start_sum
        return StatsTotals(
            active=active,
            messages_delivered=self.messages_delivered,
            batch_messages=self.batch_messages,
            event_deliveries=self.event_deliveries,
            disconnects=self.disconnects,
            reconnects=self.reconnects,
            recent_disconnects=self.disconnects_within(self._rules.degraded_disconnect_window_s),
            rate_disconnects=self.disconnects_within(DISCONNECT_RATE_WINDOW_S),
            connection_seconds=self._closed_seconds + open_seconds,
            connections_seen=self._closed_count + self._open_count,
            uptime_s=self.uptime_s,
        )

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
        return self.totals(active).report(
            rules=self._rules,
            enabled=enabled,
            by_user=by_user,
            events_emitted=events_emitted,
            max_per_user=max_per_user,
            max_total=max_total,
            timestamp=timestamp,
        )


@dataclass(frozen=True, slots=True)
class StatsTotals:
    """One node's counters, or a cluster's (``sum``): the runbook's figures are computed from
    these the same way for both."""

    active: int
    messages_delivered: int
    batch_messages: int
    event_deliveries: int
    disconnects: int
    reconnects: int
    recent_disconnects: int  # within the degraded-status window
    rate_disconnects: int  # within DISCONNECT_RATE_WINDOW_S
    connection_seconds: float
    connections_seen: int
    uptime_s: float
    events_emitted: int = 0

    @classmethod
    def sum(cls, parts: list[StatsTotals]) -> StatsTotals:
        """A cluster's totals; its uptime is its oldest node's."""
        return cls(
            active=sum(p.active for p in parts),
            messages_delivered=sum(p.messages_delivered for p in parts),
            batch_messages=sum(p.batch_messages for p in parts),
            event_deliveries=sum(p.event_deliveries for p in parts),
            disconnects=sum(p.disconnects for p in parts),
            reconnects=sum(p.reconnects for p in parts),
            recent_disconnects=sum(p.recent_disconnects for p in parts),
            rate_disconnects=sum(p.rate_disconnects for p in parts),
            connection_seconds=sum(p.connection_seconds for p in parts),
            connections_seen=sum(p.connections_seen for p in parts),
            uptime_s=max((p.uptime_s for p in parts), default=0.0),
            events_emitted=sum(p.events_emitted for p in parts),
        )

    def batch_efficiency(self) -> float:
        if self.event_deliveries == 0:
            return 1.0
        return max(0.0, 1.0 - self.batch_messages / self.event_deliveries)

    def performance(self) -> Performance:
        seen = self.connections_seen
        average = self.connection_seconds / seen if seen else 0.0
        rate = self.rate_disconnects / (DISCONNECT_RATE_WINDOW_S / 60)
        return Performance(self.batch_efficiency(), round(average), rate)

    def status(self, *, enabled: bool, rules: StatsRules) -> Status:
        if not enabled:
            return "disabled"
        if self.active == 0:
            return "offline"
        if self.recent_disconnects > rules.degraded_disconnect_ratio * self.active:
            return "degraded"
        if (
            self.event_deliveries >= rules.degraded_min_deliveries
            and self.batch_efficiency() < rules.degraded_min_batch_efficiency
        ):
            return "degraded"
        return "healthy"

    def report(
        self,
        *,
        rules: StatsRules,
        enabled: bool,
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
            "status": self.status(enabled=enabled, rules=rules),
            "enabled": enabled,
            "activeConnections": self.active,
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
