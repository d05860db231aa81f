"""Stream statistics and health arithmetic (SPEC §5), driven by an injected clock."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.stats import StatsRules, StreamStats, format_uptime
from config.settings import Settings
from tests.conftest import make_settings


class Clock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def stats(clock: Clock, settings: Settings) -> StreamStats:
    """The default rules: the runbook's 60 s reconnect window, 10%/minute, 50% after 100."""
    return StreamStats(StatsRules.from_settings(settings), clock=clock)


def report(stats: StreamStats, *, enabled: bool = True, active: int = 1) -> dict[str, object]:
    return stats.report(
        enabled=enabled,
        active=active,
        by_user={"user-1": active},
        events_emitted=7,
        max_per_user=5,
        max_total=100,
        timestamp="2026-01-04T10:30:00.000Z",
    )


def test_batch_efficiency_is_one_minus_messages_over_the_deliveries_they_carried(
    stats: StreamStats,
) -> None:
    assert stats.batch_efficiency() == 1.0  # nothing delivered, nothing wasted
    stats.message_sent(0)  # a snapshot: a delivered message that carries no event
    assert stats.batch_efficiency() == 1.0
    for _ in range(5):
        stats.message_sent(20)
    assert stats.messages_delivered == 6
    assert stats.event_deliveries == 100
    assert stats.batch_efficiency() == pytest.approx(1 - 5 / 100)
    perf = report(stats)["performance"]
    assert perf == {
        "batchEfficiency": "95.0%",
        "batchEfficiencyRaw": 0.95,
        "avgConnectionDurationSeconds": 0,
        "disconnectRatePerMinute": "0.00",
    }


def test_batch_efficiency_formats_like_the_runbook(stats: StreamStats) -> None:
    for _ in range(48):
        stats.message_sent(1)
    stats.message_sent(952)  # 49 messages carried 1000 deliveries
    perf = report(stats)["performance"]
    assert perf["batchEfficiency"] == "95.1%"  # type: ignore[index]
    assert perf["batchEfficiencyRaw"] == 0.951  # type: ignore[index]


def test_unbatched_delivery_has_zero_efficiency(stats: StreamStats) -> None:
    for _ in range(10):
        stats.message_sent(1)
    assert stats.batch_efficiency() == 0.0
    assert report(stats)["performance"]["batchEfficiency"] == "0.0%"  # type: ignore[index]


def test_disconnect_rate_counts_the_last_five_minutes_per_minute(
    stats: StreamStats, clock: Clock
) -> None:
    for _ in range(3):
        started, _ = stats.connection_opened("user-1")
        stats.connection_closed("user-1", started)
    assert report(stats)["performance"]["disconnectRatePerMinute"] == "0.60"  # type: ignore[index]
    clock.advance(299)
    started, _ = stats.connection_opened("user-2")
    stats.connection_closed("user-2", started)
    assert stats.performance().disconnect_rate_per_minute == pytest.approx(4 / 5)
    clock.advance(2)  # the first three are now older than five minutes
    assert stats.performance().disconnect_rate_per_minute == pytest.approx(1 / 5)
    assert stats.disconnects == 4


def test_average_duration_counts_closed_and_open_connections(
    stats: StreamStats, clock: Clock
) -> None:
    first, _ = stats.connection_opened("user-1")
    clock.advance(100)
    stats.connection_closed("user-1", first)  # 100 s, closed
    stats.connection_opened("user-2")
    clock.advance(50)  # user-2 open for 50 s
    assert stats.performance().avg_connection_duration_s == round((100 + 50) / 2)
    perf = report(stats)["performance"]
    assert isinstance(perf["avgConnectionDurationSeconds"], int)  # type: ignore[index]
    clock.advance(100)
    assert stats.performance().avg_connection_duration_s == round((100 + 150) / 2)


def test_a_connection_within_sixty_seconds_of_a_close_is_a_reconnect(
    stats: StreamStats, clock: Clock
) -> None:
    started, reconnect = stats.connection_opened("user-1")
    assert reconnect is False
    stats.connection_closed("user-1", started)
    clock.advance(59)
    started, reconnect = stats.connection_opened("user-1")
    assert reconnect is True
    _, other = stats.connection_opened("user-2")  # another user's close does not count
    assert other is False
    stats.connection_closed("user-1", started)
    clock.advance(61)
    _, reconnect = stats.connection_opened("user-1")
    assert reconnect is False
    assert stats.reconnects == 1


def test_status_disabled_when_the_flag_is_off(stats: StreamStats) -> None:
    document = report(stats, enabled=False, active=3)
    assert document["status"] == "disabled" and document["enabled"] is False


def test_status_offline_without_connections_and_healthy_with(stats: StreamStats) -> None:
    assert stats.status(enabled=True, active=0) == "offline"
    stats.connection_opened("user-1")
    assert stats.status(enabled=True, active=1) == "healthy"


def test_status_degraded_when_recent_disconnects_exceed_ten_percent(
    stats: StreamStats, clock: Clock
) -> None:
    for _ in range(2):
        started, _ = stats.connection_opened("user-1")
        stats.connection_closed("user-1", started)
    assert stats.status(enabled=True, active=20) == "healthy"  # 2 is not over 10% of 20
    assert stats.status(enabled=True, active=19) == "degraded"  # 2 > 1.9
    clock.advance(61)  # the rule looks at the last minute only
    assert stats.status(enabled=True, active=19) == "healthy"


def test_status_degraded_on_low_efficiency_only_after_100_deliveries(stats: StreamStats) -> None:
    for _ in range(99):
        stats.message_sent(1)
    assert stats.status(enabled=True, active=1) == "healthy"
    stats.message_sent(1)
    assert stats.event_deliveries == 100
    assert stats.status(enabled=True, active=1) == "degraded"
    stats.message_sent(500)  # efficiency climbs back over 50%
    assert stats.batch_efficiency() > 0.5
    assert stats.status(enabled=True, active=1) == "healthy"


def test_the_degraded_rules_and_reconnect_window_come_from_the_settings(
    clock: Clock, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path,
        reconnect_window_s=5.0,
        degraded_disconnect_ratio=0.5,
        degraded_disconnect_window_s=10.0,
        degraded_min_batch_efficiency=0.9,
        degraded_min_deliveries=10,
    )
    stats = StreamStats(StatsRules.from_settings(settings), clock=clock)
    started, _ = stats.connection_opened("user-1")
    stats.connection_closed("user-1", started)
    assert stats.status(enabled=True, active=2) == "healthy"  # 1 is not over half of 2
    assert stats.status(enabled=True, active=1) == "degraded"
    clock.advance(11)  # past DEGRADED_DISCONNECT_WINDOW_S
    assert stats.status(enabled=True, active=1) == "healthy"
    assert stats.connection_opened("user-1")[1] is False  # past RECONNECT_WINDOW_S
    for _ in range(9):
        stats.message_sent(2)  # 9 messages, 18 deliveries: efficiency 50%, under 90%
    assert stats.status(enabled=True, active=1) == "degraded"


def test_uptime_is_formatted_like_the_runbook(stats: StreamStats, clock: Clock) -> None:
    assert format_uptime(86_400) == "24h 0m"
    assert format_uptime(3_725) == "1h 2m"
    assert format_uptime(59) == "0h 0m"
    clock.advance(86_400)
    assert report(stats)["uptime"] == {"seconds": 86_400, "formatted": "24h 0m"}


def test_the_report_has_every_runbook_field(stats: StreamStats) -> None:
    document = report(stats, active=2)
    assert list(document) == [
        "status",
        "enabled",
        "activeConnections",
        "connectionsByUser",
        "totalMessagesDelivered",
        "totalEventsEmitted",
        "totalDisconnects",
        "totalReconnects",
        "performance",
        "uptime",
        "limits",
        "timestamp",
    ]
    assert document["limits"] == {"maxConnectionsPerUser": 5, "maxTotalConnections": 100}
    assert document["totalEventsEmitted"] == 7 and document["activeConnections"] == 2
    assert re.fullmatch(r"\d+\.\d\d", document["performance"]["disconnectRatePerMinute"])  # type: ignore[index]
