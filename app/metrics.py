"""Prometheus metrics (`GET /metrics`), one registry per application.

Counters that the stats route also reports are read at scrape time from their single source
(StreamStats, the bus, the broker bridge) by a custom collector, so the two views never disagree.
Histograms are observed as things happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.protocol import CloseCode

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Close codes exported from the first scrape on, so rate() over them starts at zero instead of
# missing the first disconnects.
KNOWN_CLOSE_CODES = (
    CloseCode.NORMAL,
    CloseCode.GOING_AWAY,
    CloseCode.PROTOCOL_ERROR,
    CloseCode.ABNORMAL,
    CloseCode.POLICY_VIOLATION,
    CloseCode.MESSAGE_TOO_BIG,
    CloseCode.INTERNAL_ERROR,
    CloseCode.TRY_AGAIN_LATER,
    CloseCode.HEARTBEAT_TIMEOUT,
    CloseCode.SESSION_ENDED,
)

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.05,
    1.1,
    1.25,
    1.5,
    2.0,
    3.0,
    5.0,
)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600)


@dataclass
class Sources:
    """Callables the collector reads at scrape time."""

    active_connections: Callable[[], int] = lambda: 0
    messages_delivered: Callable[[], int] = lambda: 0
    events_emitted: Callable[[], int] = lambda: 0
    event_deliveries: Callable[[], int] = lambda: 0
    batch_messages: Callable[[], int] = lambda: 0
    reconnects: Callable[[], int] = lambda: 0
    batch_efficiency: Callable[[], float] = lambda: 1.0
    bus_queue_depth: Callable[[], int] = lambda: 0
    enabled: Callable[[], bool] = lambda: True
    draining: Callable[[], bool] = lambda: False
    max_total_connections: Callable[[], int] = lambda: 0
    max_connections_per_user: Callable[[], int] = lambda: 0
    connections_shed: Callable[[], int] = lambda: 0
    log_lines_dropped: Callable[[], int] = lambda: 0
    # (account username, mode, up?) per broker account
    broker_streams: Callable[[], Iterable[tuple[str, str, bool]]] = field(default=lambda: ())
    # With REDIS_URL only: this node's link to the cluster (None: not a cluster node)
    cluster: Callable[[], ClusterGauges | None] = lambda: None


@dataclass(frozen=True, slots=True)
class ClusterGauges:
    """A cluster node's Redis figures, read at scrape time."""

    redis_up: bool
    pubsub_lag_s: float | None
    write_queue: int
    resyncs: int
    gaps: int
    rebuilds: int


class _SnapshotCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self._s = sources

    def collect(self) -> Iterator[Metric]:
        s = self._s
        yield GaugeMetricFamily(
            "websocket_active_connections",
            "Open /ws/portfolio connections on this node",
            value=s.active_connections(),
        )
        yield CounterMetricFamily(
            "websocket_messages_delivered",
            "Snapshot and batch messages sent to clients",
            value=s.messages_delivered(),
        )
        yield CounterMetricFamily(
            "websocket_event_deliveries",
            "Events carried to connections (one event to one connection)",
            value=s.event_deliveries(),
        )
        yield CounterMetricFamily(
            "websocket_batch_messages",
            "Batch messages sent (snapshots excluded); with event "
            "deliveries this gives batch efficiency over any window",
            value=s.batch_messages(),
        )
        yield CounterMetricFamily(
            "portfolio_events_emitted", "Events published on the bus", value=s.events_emitted()
        )
        yield CounterMetricFamily(
            "websocket_reconnects",
            "Connections from users who disconnected within 60 s",
            value=s.reconnects(),
        )
        yield GaugeMetricFamily(
            "websocket_batch_efficiency",
            "1 - batch messages / event deliveries, since start",
            value=s.batch_efficiency(),
        )
        yield GaugeMetricFamily(
            "portfolio_bus_queue_depth", "Events queued on the bus", value=s.bus_queue_depth()
        )
        yield GaugeMetricFamily(
            "portfolio_realtime_enabled",
            "ENABLE_REALTIME_PORTFOLIO (1 on, 0 off)",
            value=1 if s.enabled() else 0,
        )
        yield GaugeMetricFamily(
            "portfolio_draining",
            "1 while a graceful shutdown drains connections",
            value=1 if s.draining() else 0,
        )
        limits = GaugeMetricFamily(
            "websocket_connections_limit",
            "MAX_TOTAL_CONNECTIONS (scope=total) and MAX_CONNECTIONS_PER_USER (scope=user)",
            labels=["scope"],
        )
        limits.add_metric(["total"], s.max_total_connections())
        limits.add_metric(["user"], s.max_connections_per_user())
        yield limits
        yield CounterMetricFamily(
            "portfolio_connections_shed",
            "Client connections closed to keep the open-file reserve (idle ones evicted, "
            "new ones refused with 503)",
            value=s.connections_shed(),
        )
        yield CounterMetricFamily(
            "portfolio_log_lines_dropped",
            "Log lines dropped because stdout or LOG_FILE was not being read",
            value=s.log_lines_dropped(),
        )
        up = GaugeMetricFamily(
            "alpaca_stream_up", "Broker trade_updates stream connected", labels=["account", "mode"]
        )
        for account, mode, is_up in s.broker_streams():
            up.add_metric([account, mode], 1 if is_up else 0)
        yield up
        cluster = s.cluster()
        if cluster is not None:
            yield from _cluster_metrics(cluster)


def _cluster_metrics(c: ClusterGauges) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "portfolio_redis_up",
        "1 while this node's Redis link works end to end (pub/sub probe, admission, writes)",
        value=1 if c.redis_up else 0,
    )
    if c.pubsub_lag_s is not None:
        yield GaugeMetricFamily(
            "portfolio_redis_pubsub_lag_seconds",
            "Round trip of this node's last answered pub/sub probe",
            value=c.pubsub_lag_s,
        )
    yield GaugeMetricFamily(
        "portfolio_redis_write_queue",
        "Events published here and not yet written to Redis",
        value=c.write_queue,
    )
    yield CounterMetricFamily(
        "portfolio_redis_resyncs",
        "Users' states read again after a gap, a new epoch or a lost pub/sub connection",
        value=c.resyncs,
    )
    yield CounterMetricFamily(
        "portfolio_redis_notice_gaps",
        "Gaps and epoch changes seen in users' change notices",
        value=c.gaps,
    )
    yield CounterMetricFamily(
        "portfolio_redis_state_rebuilds",
        "Times this node rebuilt the shared state after Redis lost it",
        value=c.rebuilds,
    )


class Metrics:
    """The application's metrics registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sources = Sources()
        self.registry.register(_SnapshotCollector(self.sources))
        self.disconnects = Counter(
            "websocket_disconnects",
            "Closed connections by close code",
            ["code"],
            registry=self.registry,
        )
        for code in KNOWN_CLOSE_CODES:
            self.disconnects.labels(code=str(code))
        self.connection_duration = Histogram(
            "websocket_connection_duration_seconds",
            "Lifetime of closed connections",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.delivery_latency = Histogram(
            "websocket_delivery_latency_seconds",
            "From bus emit of the oldest event in a message to its send",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.gc_pause = Histogram(
            "python_gc_pause_seconds",
            "Garbage-collector pauses by generation (the event loop stands still meanwhile)",
            ["generation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        for generation in ("0", "1", "2"):  # exported from the start, at zero
            self.gc_pause.labels(generation=generation)
        self.connections_opened = Counter(
            "websocket_connections_opened", "Accepted connections", registry=self.registry
        )

    def connection_opened(self) -> None:
        self.connections_opened.inc()

    def connection_closed(self, code: int | None, duration_s: float) -> None:
        self.disconnects.labels(code=str(code if code is not None else CloseCode.ABNORMAL)).inc()
        self.connection_duration.observe(duration_s)

    def observe_gc_pause(self, generation: int, seconds: float) -> None:
        self.gc_pause.labels(generation=str(generation)).observe(seconds)

    def observe_latency(self, seconds: float) -> None:
        self.delivery_latency.observe(max(seconds, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
