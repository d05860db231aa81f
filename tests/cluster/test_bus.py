"""The Redis bus: publishes land in the shared state in order, each with the account epoch its
publisher held when it published, so a holder that lost its lease changes nothing."""

from __future__ import annotations

from redis.asyncio import Redis

from app.cluster.bus import RedisBus
from app.cluster.client import command_client
from app.cluster.keys import UserKeys
from app.cluster.state import SharedPortfolio
from app.events import POSITION_UPDATED
from tests.app.support import position
from tests.cluster.redis_server import RedisServer
from tests.cluster.support import REDIS_TIMEOUT_S, cluster_settings, eventually


def bus_on(redis: Redis) -> RedisBus:
    state = SharedPortfolio(redis, recent_orders_limit=50, timeout_s=REDIS_TIMEOUT_S)
    return RedisBus(
        state, redis, timeout_s=REDIS_TIMEOUT_S, backoff_initial_s=0.05, backoff_max_s=0.2
    )


async def test_a_write_from_an_older_epoch_is_refused_even_if_queued_before_the_takeover(
    redis: Redis,
) -> None:
    old, new = bus_on(redis), bus_on(redis)
    await old.start()
    await new.start()
    state = SharedPortfolio(redis, recent_orders_limit=50, timeout_s=REDIS_TIMEOUT_S)
    try:
        old.set_epoch("user-1", 7)
        old.publish(POSITION_UPDATED, position("user-1", "AAPL", qty="10"))
        await eventually(lambda: old.queue_depth == 0)

        new.set_epoch("user-1", 8)  # the lease went to another node
        new.publish(POSITION_UPDATED, position("user-1", "AAPL", qty="20"))
        await eventually(lambda: new.queue_depth == 0)
        # The old holder wakes up and publishes what its stream still delivered.
        old.publish(POSITION_UPDATED, position("user-1", "AAPL", qty="99"))
        old.publish(POSITION_UPDATED, position("user-1", "MSFT", qty="1"))
        await eventually(lambda: old.queue_depth == 0)

        read = await state.read("user-1")
        assert {s: p["qty"] for s, p in read.portfolio.positions.items()} == {"AAPL": "20"}
        assert read.fencing_epoch == 8
        assert old.status.refused_writes == 2 and new.status.refused_writes == 0
        assert await redis.hget(UserKeys.of("user-1").meta, "fe") == b"8"
    finally:
        await old.close()
        await new.close()


async def test_events_queued_while_redis_is_away_are_written_in_order_when_it_returns(
    redis_server: RedisServer,
) -> None:
    redis = command_client(cluster_settings(redis_server.url), "node-a")
    bus = bus_on(redis)
    await bus.start()
    state = SharedPortfolio(redis, recent_orders_limit=50, timeout_s=REDIS_TIMEOUT_S)
    try:
        bus.set_epoch("user-1", 1)
        bus.publish(POSITION_UPDATED, position("user-1", "AAPL", qty="1"))
        await eventually(lambda: bus.queue_depth == 0)
        # With data kept: a Redis that comes back with its generation is written to at once.
        await redis.save()
        redis_server.stop()
        for qty in ("2", "3"):
            bus.publish(POSITION_UPDATED, position("user-1", "AAPL", qty=qty))
        await eventually(lambda: not bus.status.available, timeout_s=10)
        assert bus.queue_depth == 2  # kept, not dropped
        redis_server.start()
        await eventually(lambda: bus.queue_depth == 0, timeout_s=10)
        read = await state.read("user-1")
        assert read.portfolio.positions["AAPL"]["qty"] == "3" and read.offset == 3
    finally:
        await bus.close()
        await redis.aclose()
