"""The subscriber when Redis fails: stopped and restarted, connections killed, a connection
that stays open but delivers nothing, and Redis absent at start."""

from __future__ import annotations

from redis.asyncio import Redis

from app.cluster.client import command_client
from app.cluster.state import SharedPortfolio
from app.cluster.subscriber import NoticeSubscriber
from app.events import POSITION_UPDATED
from tests.cluster.proxy import DeafeningProxy
from tests.cluster.redis_server import RedisServer
from tests.cluster.support import (
    REDIS_TIMEOUT_S,
    Recorder,
    cluster_settings,
    event,
    eventually,
    position,
    running_subscriber,
)


async def follow(subscriber: NoticeSubscriber, shared: SharedPortfolio, user: str) -> None:
    assert await subscriber.acquire(user, timeout_s=2)
    state = await shared.read(user)
    subscriber.set_position(user, state.epoch, state.offset)


async def resync(subscriber: NoticeSubscriber, shared: SharedPortfolio, users: list[str]) -> None:
    for user in users:
        state = await shared.read(user)
        subscriber.set_position(user, state.epoch, state.offset)


async def test_a_restarted_redis_is_reconnected_and_every_user_resynced(
    redis_server: RedisServer,
) -> None:
    recorder = Recorder()
    settings = cluster_settings(redis_server.url)
    # The node's own command client: it must come back with Redis, too.
    redis = command_client(settings, "node-a")
    shared = SharedPortfolio(redis, recent_orders_limit=50, timeout_s=REDIS_TIMEOUT_S)
    async with running_subscriber(settings, recorder, redis) as subscriber:
        await eventually(lambda: subscriber.status.connected, what="connected")
        for user in ("user-1", "user-2"):
            await follow(subscriber, shared, user)

        redis_server.stop()
        await eventually(lambda: not subscriber.status.connected, what="disconnected")
        answered = subscriber.status.probes_answered
        redis_server.start()  # empty: no persistence

        await recorder.wait(lambda: sorted(recorder.resyncs) == ["user-1", "user-2"])
        status = subscriber.status
        assert status.connected and status.subscribed_users == 2 and status.reconnects == 1
        assert subscriber.position("user-1") is None
        await resync(subscriber, shared, ["user-1", "user-2"])
        await shared.apply(event(POSITION_UPDATED, position("user-2", "MSFT")), epoch=1)
        await recorder.wait(lambda: len(recorder.events) == 1)
        assert recorder.events[0].payload["userId"] == "user-2"
        # Delivery itself is proven again, not only the connection.
        await eventually(lambda: subscriber.status.probes_answered > answered, what="probe")
    await redis.aclose()


async def test_a_killed_pubsub_connection_is_replaced_and_users_resynced(
    redis_url: str, redis: Redis
) -> None:
    recorder = Recorder()
    shared = SharedPortfolio(redis, recent_orders_limit=50, timeout_s=REDIS_TIMEOUT_S)
    async with running_subscriber(cluster_settings(redis_url), recorder, redis) as subscriber:
        await eventually(lambda: subscriber.status.connected, what="connected")
        await follow(subscriber, shared, "user-1")

        await redis.client_kill_filter(_type="pubsub")

        await recorder.wait(lambda: recorder.resyncs == ["user-1"])
        assert subscriber.status.reconnects == 1 and subscriber.is_subscribed("user-1")


async def test_a_connection_that_delivers_nothing_is_replaced_after_two_probes(
    shared_redis_server: RedisServer, redis: Redis
) -> None:
    proxy = DeafeningProxy(shared_redis_server.port)
    await proxy.start()
    recorder = Recorder()
    settings = cluster_settings(proxy.url, redis_probe_interval_s=0.1)
    try:
        async with running_subscriber(settings, recorder, redis) as subscriber:
            await eventually(lambda: subscriber.status.probes_answered > 0, what="a probe")
            shared = SharedPortfolio(redis, recent_orders_limit=50, timeout_s=REDIS_TIMEOUT_S)
            await follow(subscriber, shared, "user-1")

            # Commands still go through (a PING would be answered... into the void); nothing
            # published comes back.
            proxy.deafen_open_connections()

            await recorder.wait(lambda: recorder.resyncs == ["user-1"], timeout_s=5)
            assert subscriber.status.reconnects == 1 and subscriber.status.connected
    finally:
        await proxy.close()


async def test_a_user_acquired_while_redis_is_away_is_resynced_when_it_returns(
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    recorder = Recorder()
    redis = Redis.from_url(redis_server.url)
    async with running_subscriber(
        cluster_settings(redis_server.url), recorder, redis
    ) as subscriber:
        assert not await subscriber.acquire("user-1", timeout_s=0.2)
        assert not subscriber.status.connected and subscriber.status.wanted_users == 1

        redis_server.start()

        await recorder.wait(lambda: recorder.resyncs == ["user-1"])
        assert subscriber.is_subscribed("user-1")
    await redis.aclose()
