"""The node's Redis clients: bounded calls, cancellation that is never lost, node ids."""

from __future__ import annotations

import asyncio
import random

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.cluster.client import command_client, node_id_for
from app.cluster.state import SharedPortfolio
from tests.cluster.proxy import DeafeningProxy
from tests.cluster.redis_server import RedisServer
from tests.cluster.support import REDIS_TIMEOUT_S, cluster_settings


async def test_a_cancelled_task_stops_even_mid_command(redis: Redis) -> None:
    """Python 3.11's wait_for can swallow a cancellation (CPython gh-86296); the node's client
    must not go through it, or a cancelled task runs on and shutdown hangs."""
    shared = SharedPortfolio(redis, recent_orders_limit=50, timeout_s=REDIS_TIMEOUT_S)

    async def reads() -> None:
        while True:
            await shared.read("user-1")

    rng = random.Random(7)
    for _ in range(100):
        task = asyncio.create_task(reads())
        await asyncio.sleep(rng.random() * 0.003)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        assert done and task.cancelled()


async def test_a_redis_that_stops_answering_fails_the_call_within_the_bound(
    shared_redis_server: RedisServer,
) -> None:
    proxy = DeafeningProxy(shared_redis_server.port)
    await proxy.start()
    client = command_client(cluster_settings(proxy.url), "node-a")
    shared = SharedPortfolio(client, recent_orders_limit=50, timeout_s=0.3)
    try:
        await shared.read("user-1")  # the pooled connection now exists
        proxy.deafen_open_connections()
        loop = asyncio.get_running_loop()
        started = loop.time()

        with pytest.raises(RedisError, match=r"within 0\.3 s"):
            await shared.read("user-1")

        assert loop.time() - started < 1.5
    finally:
        await client.aclose()
        await proxy.close()


def test_the_node_id_is_the_setting_else_host_and_port() -> None:
    named = cluster_settings("redis://127.0.0.1:1/0", node_id="edge-1")
    assert node_id_for(named) == "edge-1"
    unnamed = cluster_settings("redis://127.0.0.1:1/0", node_id=None, port=5001)
    assert node_id_for(unnamed).endswith(":5001")
    picked = cluster_settings("redis://127.0.0.1:1/0", node_id=None, port=0)
    assert node_id_for(picked) != node_id_for(picked)  # port 0: a token tells nodes apart
