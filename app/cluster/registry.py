"""The live nodes and their figures, for the cluster-wide stats.

Every node writes its row every few seconds; a row not rewritten within its TTL (three report
intervals) belongs to a dead node and disappears from every reader's view. Last-seen times are
Redis's clock, so nodes' clocks never need to agree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.cluster.client import bounded
from app.cluster.keys import NODES_INDEX, NODES_ROWS, NODES_SEEN
from app.cluster.scripts import script
from app.stats import StatsTotals
from config.logging import get_logger

log = get_logger()

_KEYS = [NODES_INDEX, NODES_ROWS, NODES_SEEN]
# Report intervals a row lives without being rewritten.
ROW_LIFETIME_INTERVALS = 3


@dataclass(frozen=True, slots=True)
class NodeFigures:
    """What a node reports about itself."""

    node_id: str
    connections: int
    users: int
    accounts: int
    uptime_s: float
    redis_rtt_ms: float | None
    pubsub_lag_ms: float | None
    degraded: bool = False
    # The node's stream counters, which the cluster's stats add up.
    totals: StatsTotals | None = None
    # The status of every broker account this node consumes (the stats' broker.accounts).
    consumed: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "totals": None if self.totals is None else dataclasses.asdict(self.totals),
                "consumedAccounts": list(self.consumed),
                "id": self.node_id,
                "connections": self.connections,
                "users": self.users,
                "accountsConsumed": self.accounts,
                "uptimeSeconds": round(self.uptime_s, 3),
                "redisRttMs": self.redis_rtt_ms,
                "pubsubLagMs": self.pubsub_lag_ms,
                "degraded": self.degraded,
            }
        )


@dataclass(frozen=True, slots=True)
class NodeRow:
    """A live node's last report; ``last_seen_s`` is how long ago it was written."""

    figures: NodeFigures
    last_seen_ms: int
    last_seen_s: float


class NodeRegistry:
    def __init__(self, redis: Redis, *, report_interval_s: float, timeout_s: float) -> None:
        self._redis = redis
        self._timeout = timeout_s
        self.report_interval_s = report_interval_s
        self._ttl_ms = max(1, round(report_interval_s * ROW_LIFETIME_INTERVALS * 1000))

    async def report(self, figures: NodeFigures) -> float:
        """Write this node's row; returns the call's round trip in seconds (the Redis RTT)."""
        started = time.perf_counter()
        async with bounded(self._timeout):
            await script("node_report").run(
                self._redis, _KEYS, [figures.node_id, figures.to_json(), self._ttl_ms]
            )
        return time.perf_counter() - started

    async def live(self) -> list[NodeRow]:
        """Every live node's row, ordered by node id."""
        async with bounded(self._timeout):
            now, ids, rows, seen = await script("node_rows").run(self._redis, _KEYS, [])
        result = []
        for node_id, row, seen_ms in zip(ids, rows, seen, strict=True):
            if row is None or seen_ms is None:
                continue
            body = orjson.loads(row)
            figures = NodeFigures(
                node_id=node_id.decode(),
                connections=int(body["connections"]),
                users=int(body["users"]),
                accounts=int(body["accountsConsumed"]),
                uptime_s=float(body["uptimeSeconds"]),
                redis_rtt_ms=body.get("redisRttMs"),
                pubsub_lag_ms=body.get("pubsubLagMs"),
                degraded=bool(body.get("degraded", False)),
                totals=_totals(body.get("totals")),
                consumed=tuple(
                    a for a in body.get("consumedAccounts") or () if isinstance(a, dict)
                ),
            )
            age = max(0, int(now) - int(seen_ms)) / 1000
            result.append(NodeRow(figures, int(seen_ms), age))
        return sorted(result, key=lambda row: row.figures.node_id)

    async def remove(self, node_id: str) -> None:
        """Drop this node's row at once (graceful stop) instead of letting it lapse."""
        async with bounded(self._timeout), self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(NODES_INDEX, node_id)
            pipe.hdel(NODES_ROWS, node_id)
            pipe.hdel(NODES_SEEN, node_id)
            await pipe.execute()

    async def run(self, collect: Callable[[float | None], NodeFigures]) -> None:
        """Report every interval until cancelled. ``collect`` gets the last measured Redis round
        trip (seconds, None before the first) and returns the figures to write."""
        rtt: float | None = None
        failing = False
        while True:
            try:
                rtt = await self.report(collect(rtt))
                failing = False
            except (RedisError, OSError) as error:
                rtt = None
                if not failing:
                    log.warning(
                        "[Cluster] Could not write this node's stats row", error=repr(error)
                    )
                failing = True
            await asyncio.sleep(self.report_interval_s)


def _totals(value: object) -> StatsTotals | None:
    """A row's counters; a row of another version without them counts as none."""
    if not isinstance(value, dict):
        return None
    try:
        return StatsTotals(**value)
    except TypeError:
        return None
