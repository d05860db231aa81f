"""Login throttling across nodes: two throttles, as two nodes hold them, sharing one Redis."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from app.cluster.keys import counter_key, held_key
from app.cluster.login_throttle import ClusterLoginThrottle, login_throttle_for
from app.cluster.node import ClusterNode
from app.login_throttle import LoginThrottle, LoginThrottling, Throttled
from tests.cluster.redis_server import RedisServer
from tests.cluster.support import Recorder, cluster_settings, eventually

FALLBACK_LINE = "ERROR [Auth] Login throttling by this node's limits only: Redis unavailable"
BACK_LINE = "[Auth] Login throttling cluster-wide again"


@pytest.fixture
def url(redis: Redis, redis_url: str) -> str:
    """The shared server, its database emptied for this test (by the ``redis`` fixture)."""
    return redis_url


@asynccontextmanager
async def nodes(url: str, count: int = 2, **overrides: Any) -> AsyncIterator[list[LoginThrottling]]:
    """``count`` started nodes on one Redis, and the login throttle the app builds for each."""
    values: dict[str, Any] = {
        "login_max_failures": 3,
        "login_max_failures_per_address": 5,
        "login_lockout_s": 120.0,
    }
    values.update(overrides)
    async with AsyncExitStack() as stack:
        throttles = []
        for index in range(count):
            settings, recorder = (
                cluster_settings(url, node_id=f"node-{index}", **values),
                Recorder(),
            )
            node = ClusterNode(settings, on_event=recorder.on_event, on_resync=recorder.on_resync)
            await node.start()
            stack.push_async_callback(node.close)
            throttles.append(login_throttle_for(settings, node))
        yield throttles


async def fail(throttle: LoginThrottling, username: str, address: str | None) -> None:
    await (await throttle.reserve(username, address)).failed()


async def succeed(throttle: LoginThrottling, username: str, address: str | None) -> None:
    await (await throttle.reserve(username, address)).succeeded()


async def refused(throttle: LoginThrottling, username: str, address: str | None) -> float:
    """The wait a refused attempt is told; fails the test if the attempt is let through."""
    with pytest.raises(Throttled) as refusal:
        await throttle.reserve(username, address)
    return refusal.value.retry_after


async def admitted(throttle: LoginThrottling, username: str, address: str | None) -> bool:
    try:
        async with await throttle.reserve(username, address):
            return True  # released uncounted
    except Throttled:
        return False


def test_the_app_gets_the_in_process_throttle_without_a_node() -> None:
    assert isinstance(
        login_throttle_for(cluster_settings("redis://127.0.0.1:1"), None), LoginThrottle
    )


async def test_failures_on_one_node_lock_the_username_on_the_other(url: str, redis: Redis) -> None:
    async with nodes(url) as (node_a, node_b):
        assert isinstance(node_a, ClusterLoginThrottle)
        for _ in range(3):
            await fail(node_a, "alice", "10.0.0.1")

        wait = await refused(node_b, "ALICE ", "10.0.0.2")  # case- and space-blind, any address

        assert 110 < wait <= 120  # the rest of the window opened by the first failure
        assert await admitted(node_b, "bob", "10.0.0.2")
        assert await redis.get(counter_key("login:user", "alice")) == b"3"


async def test_the_address_limit_holds_across_nodes(url: str) -> None:
    async with nodes(url) as (node_a, node_b):
        for name in ("alice", "bob"):
            await fail(node_a, name, "10.0.0.1")
            await fail(node_b, name, "10.0.0.1")
        await fail(node_a, "carol", "10.0.0.1")  # the address's fifth failure

        assert await refused(node_b, "dave", "10.0.0.1") > 100
        assert await admitted(node_b, "dave", "10.0.0.2")


async def test_a_refused_attempt_holds_nothing_on_the_other_limit(url: str) -> None:
    """alice is locked: her refused attempts must not eat the address's budget for others."""
    async with nodes(url) as (node_a, node_b):
        for _ in range(3):
            await fail(node_a, "alice", "10.0.0.1")
        for _ in range(5):
            await refused(node_b, "alice", "10.0.0.1")

        await fail(node_b, "bob", "10.0.0.1")  # the address's fourth failure: still let in
        assert await admitted(node_a, "carol", "10.0.0.1")


async def test_attempts_in_flight_on_one_node_count_on_the_other(url: str) -> None:
    async with nodes(url) as (node_a, node_b):
        held = [await node_a.reserve("alice", "10.0.0.1") for _ in range(3)]

        # Nothing has failed yet: come back soon, not after a full lockout.
        assert await refused(node_b, "alice", "10.0.0.2") == 1.0
        await held[0].succeeded()
        assert await admitted(node_b, "alice", "10.0.0.2")
        for attempt in held[1:]:
            await attempt.failed()
            await attempt.failed()  # settling twice counts once
        await fail(node_b, "alice", "10.0.0.2")  # the success cleared the count: 2 + 1
        assert await refused(node_a, "alice", "10.0.0.3") > 100


async def test_a_success_clears_the_username_on_every_node_but_not_the_address(
    url: str, redis: Redis
) -> None:
    async with nodes(url, login_max_failures=2, login_max_failures_per_address=3) as (
        node_a,
        node_b,
    ):
        await fail(node_a, "alice", "10.0.0.1")
        await succeed(node_b, "alice", "10.0.0.1")
        await fail(node_a, "alice", "10.0.0.1")  # alice's count restarted at zero
        await fail(node_b, "bob", "10.0.0.1")  # the address's third failure

        await refused(node_a, "carol", "10.0.0.1")
        await succeed(node_b, "carol", "10.0.0.2")


async def test_counts_end_with_their_window(url: str, redis: Redis) -> None:
    async with nodes(url, login_lockout_s=0.5) as (node_a, node_b):
        for _ in range(3):
            await fail(node_a, "alice", "10.0.0.1")
        await refused(node_b, "alice", "10.0.0.1")

        await eventually(lambda: admitted(node_b, "alice", "10.0.0.1"), what="the window's end")

        assert await redis.exists(counter_key("login:user", "alice")) == 0


async def test_an_attempt_a_dead_node_left_in_flight_expires(url: str, redis: Redis) -> None:
    """A node that dies mid-check never settles: its holds go after CLUSTER_ENTRY_TTL_S."""
    short = {"cluster_entry_ttl_s": 1, "heartbeat_interval_ms": 200, "heartbeat_timeout_ms": 400}
    async with nodes(url, **short) as (node_a, node_b):
        for _ in range(3):
            await node_a.reserve("alice", "10.0.0.1")  # never settled
        await refused(node_b, "alice", "10.0.0.2")

        await eventually(lambda: admitted(node_b, "alice", "10.0.0.2"), what="a hold's expiry")
        await eventually(lambda: nothing_held(redis, "alice"), what="every hold's expiry")


async def nothing_held(redis: Redis, username: str) -> bool:
    return int(await redis.exists(held_key("login:user", username))) == 0


async def test_without_redis_a_node_throttles_by_its_own_limits(
    redis_server: RedisServer, log_lines: io.StringIO
) -> None:
    backoff = {"redis_backoff_initial_s": 0.01, "redis_backoff_max_s": 0.05}
    async with nodes(redis_server.url, count=1, **backoff) as (node,):
        await fail(node, "alice", "10.0.0.1")  # counted in Redis
        redis_server.stop()

        for _ in range(3):
            await fail(node, "alice", "10.0.0.1")  # no error: counted here
        assert await refused(node, "alice", "10.0.0.1") > 100  # never everyone let in
        assert await admitted(node, "bob", "10.0.0.1")  # never everyone locked out
        assert log_lines.getvalue().count(FALLBACK_LINE) == 1

        redis_server.start()
        # Back on Redis (empty after its restart): its count rules again, not this node's.
        await eventually(lambda: admitted(node, "alice", "10.0.0.1"), what="Redis again")
        await eventually(lambda: BACK_LINE in log_lines.getvalue(), what="the recovery line")
