"""The node registry: rows written with a short life, read back while live."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from app.cluster.registry import NodeFigures, NodeRegistry
from tests.cluster.support import REDIS_TIMEOUT_S, eventually


def figures(node_id: str, connections: int = 3) -> NodeFigures:
    return NodeFigures(
        node_id=node_id,
        connections=connections,
        users=2,
        accounts=1,
        uptime_s=12.5,
        redis_rtt_ms=0.4,
        pubsub_lag_ms=1.2,
    )


def registry_on(redis: Redis, report_interval_s: float) -> NodeRegistry:
    return NodeRegistry(redis, report_interval_s=report_interval_s, timeout_s=REDIS_TIMEOUT_S)


async def test_every_live_nodes_row_is_read_back(redis: Redis) -> None:
    a, b = (
        registry_on(redis, 3),
        registry_on(redis, 3),
    )
    rtt = await a.report(figures("node-b", connections=7))
    await b.report(figures("node-a"))

    rows = await a.live()

    assert [row.figures.node_id for row in rows] == ["node-a", "node-b"]
    assert rows[1].figures == figures("node-b", connections=7)
    assert 0 <= rows[0].last_seen_s < 1 and rows[0].last_seen_ms > 0
    assert 0 < rtt < 1


async def test_a_row_not_rewritten_in_time_disappears(redis: Redis) -> None:
    quick = registry_on(redis, 0.1)  # rows live 0.3 s
    steady = registry_on(redis, 30)
    await quick.report(figures("dead"))
    await steady.report(figures("alive"))

    await eventually(lambda: ids_are(steady, ["alive"]), timeout_s=3, what="expiry")


async def ids_are(registry: NodeRegistry, expected: list[str]) -> bool:
    return [row.figures.node_id for row in await registry.live()] == expected


async def test_a_removed_node_is_gone_at_once(redis: Redis) -> None:
    registry = registry_on(redis, 3)
    await registry.report(figures("node-a"))

    await registry.remove("node-a")

    assert await registry.live() == []


async def test_the_report_loop_feeds_back_the_measured_round_trip(redis: Redis) -> None:
    registry = registry_on(redis, 0.05)
    seen: list[float | None] = []

    def collect(rtt_s: float | None) -> NodeFigures:
        seen.append(rtt_s)
        ms = None if rtt_s is None else rtt_s * 1000
        return NodeFigures("node-a", 0, 0, 0, 1.0, redis_rtt_ms=ms, pubsub_lag_ms=None)

    task = asyncio.create_task(registry.run(collect))
    try:
        await eventually(lambda: len(seen) >= 3, what="three reports")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert seen[0] is None and all(s is not None and s > 0 for s in seen[1:])
    [row] = await registry.live()
    assert row.figures.redis_rtt_ms is not None
