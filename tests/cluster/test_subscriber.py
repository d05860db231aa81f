"""The node's subscriber against a real redis-server: delivery, snapshots, gaps, batching,
the unsubscribe grace period, and bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from app.cluster.keys import UserKeys, user_channel
from app.cluster.state import SharedPortfolio
from app.cluster.subscriber import NoticeSubscriber
from app.events import POSITION_UPDATED, Event
from tests.cluster.support import (
    REDIS_TIMEOUT_S,
    Recorder,
    cluster_settings,
    event,
    eventually,
    position,
    running_subscriber,
)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def shared(redis: Redis) -> SharedPortfolio:
    return SharedPortfolio(redis, recent_orders_limit=50, timeout_s=REDIS_TIMEOUT_S)


@pytest.fixture
async def subscriber(
    redis_url: str, redis: Redis, recorder: Recorder
) -> AsyncIterator[NoticeSubscriber]:
    async with running_subscriber(
        cluster_settings(redis_url, redis_unsubscribe_delay_s=0.3), recorder, redis
    ) as subscriber:
        await eventually(lambda: subscriber.status.connected, what="connected")
        yield subscriber


async def numsub(redis: Redis, user: str) -> int:
    [(_, count)] = await redis.pubsub_numsub(user_channel(user))
    return int(count)


async def command_calls(redis: Redis, command: str) -> int:
    stats: dict[str, Any] = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def tick(user: str, qty: int) -> Event:
    return event(POSITION_UPDATED, position(user, "AAPL", qty=str(qty)))


async def follow(subscriber: NoticeSubscriber, shared: SharedPortfolio, user: str) -> int:
    """What a caller does for a new connection: hold the channel, read, set the position."""
    assert await subscriber.acquire(user, timeout_s=2)
    state = await shared.read(user)
    subscriber.set_position(user, state.epoch, state.offset)
    return state.offset


async def test_events_after_the_snapshot_arrive_once_and_in_order(
    subscriber: NoticeSubscriber, shared: SharedPortfolio, redis: Redis, recorder: Recorder
) -> None:
    assert await subscriber.acquire("user-1", timeout_s=2)
    assert await numsub(redis, "user-1") == 1 and subscriber.is_subscribed("user-1")
    for qty in range(3):
        await shared.apply(tick("user-1", qty), epoch=1)
    state = await shared.read("user-1")
    for qty in range(3, 6):
        await shared.apply(tick("user-1", qty), epoch=1)

    subscriber.set_position("user-1", state.epoch, state.offset)
    await shared.apply(tick("user-1", 6), epoch=1)

    await recorder.wait(lambda: len(recorder.events) >= 4)
    assert [e.payload["qty"] for e in recorder.events] == ["3", "4", "5", "6"]
    assert subscriber.position("user-1") == (state.epoch, 7)
    assert recorder.resyncs == []


async def test_a_user_without_state_gets_its_first_events(
    subscriber: NoticeSubscriber, shared: SharedPortfolio, recorder: Recorder
) -> None:
    assert await follow(subscriber, shared, "user-1") == 0
    await shared.apply(tick("user-1", 1), epoch=1)

    await recorder.wait(lambda: len(recorder.events) == 1)
    assert recorder.events[0].payload["qty"] == "1" and recorder.resyncs == []


async def test_a_lost_notice_calls_for_a_resync_and_the_reread_continues(
    subscriber: NoticeSubscriber, shared: SharedPortfolio, redis: Redis, recorder: Recorder
) -> None:
    await follow(subscriber, shared, "user-1")
    await shared.apply(tick("user-1", 1), epoch=1)
    await recorder.wait(lambda: len(recorder.events) == 1)
    # Offset 2 is used up without its notice reaching this node, as if lost on the way.
    await redis.hincrby(UserKeys.of("user-1").meta, "o", 1)
    await shared.apply(tick("user-1", 3), epoch=1)

    await recorder.wait(lambda: recorder.resyncs == ["user-1"])
    assert len(recorder.events) == 1 and subscriber.position("user-1") is None
    assert subscriber.status.gaps == 1
    state = await shared.read("user-1")
    subscriber.set_position("user-1", state.epoch, state.offset)
    assert state.offset == 3 and state.portfolio.positions["AAPL"]["qty"] == "3"
    await shared.apply(tick("user-1", 4), epoch=1)
    await recorder.wait(lambda: len(recorder.events) == 2)
    assert recorder.events[-1].payload["qty"] == "4" and recorder.resyncs == ["user-1"]


async def test_state_lost_by_redis_is_a_new_epoch_and_calls_for_a_resync(
    subscriber: NoticeSubscriber, shared: SharedPortfolio, redis: Redis, recorder: Recorder
) -> None:
    await shared.apply(tick("user-1", 1), epoch=1)
    await follow(subscriber, shared, "user-1")
    await redis.flushall()

    await shared.apply(tick("user-1", 2), epoch=1)

    await recorder.wait(lambda: recorder.resyncs == ["user-1"])
    assert recorder.events == []


async def test_subscribes_of_one_loop_turn_go_out_as_one_command(
    subscriber: NoticeSubscriber, redis: Redis
) -> None:
    before = await command_calls(redis, "subscribe")
    users = [f"user-{n}" for n in range(50)]

    results = await asyncio.gather(*(subscriber.acquire(user, timeout_s=2) for user in users))
    assert all(results)

    assert await command_calls(redis, "subscribe") == before + 1
    [(_, count)] = await redis.pubsub_numsub(user_channel("user-49"))
    assert count == 1 and subscriber.status.subscribed_users == 50


async def test_the_last_release_unsubscribes_after_the_grace_period_only(
    subscriber: NoticeSubscriber, redis: Redis
) -> None:
    await subscriber.acquire("user-1", timeout_s=2)
    await subscriber.acquire("user-1", timeout_s=2)
    subscriber.release("user-1")
    subscriber.release("user-1")
    # A reloading tab: back within the grace period, so the channel never left.
    await subscriber.acquire("user-1", timeout_s=2)
    assert await command_calls(redis, "unsubscribe") == 0
    subscriber.release("user-1")
    assert await numsub(redis, "user-1") == 1

    await eventually(lambda: numsub_is(redis, "user-1", 0), what="unsubscribed")

    assert await command_calls(redis, "unsubscribe") == 1
    assert not subscriber.is_subscribed("user-1") and subscriber.status.wanted_users == 0


async def numsub_is(redis: Redis, user: str, expected: int) -> bool:
    return await numsub(redis, user) == expected


async def test_malformed_notices_and_failing_handlers_do_not_stop_delivery(
    redis_url: str, redis: Redis, shared: SharedPortfolio
) -> None:
    delivered: list[Event] = []

    def fragile(event: Event) -> None:
        delivered.append(event)
        if len(delivered) == 1:
            raise RuntimeError("handler bug")

    recorder = Recorder()
    recorder.on_event = fragile  # type: ignore[method-assign]
    async with running_subscriber(cluster_settings(redis_url), recorder, redis) as subscriber:
        await follow(subscriber, shared, "user-1")
        channel = user_channel("user-1")
        await redis.publish(channel, b"not json")
        await redis.publish(channel, orjson.dumps(["e", 1, "nope:unknown", {}, 0, 0]))
        # Another user's event on this user's channel is never delivered to this user.
        wrong = ["e", 1, POSITION_UPDATED, position("user-2", "AAPL"), 0, 0]
        await redis.publish(channel, orjson.dumps(wrong))
        await shared.apply(tick("user-1", 1), epoch=1)
        await shared.apply(tick("user-1", 2), epoch=1)

        await eventually(lambda: len(delivered) == 2, what="both events")
        assert subscriber.status.bad_notices == 3
        assert [e.payload["userId"] for e in delivered] == ["user-1", "user-1"]


async def test_status_reports_the_probe_round_trip(subscriber: NoticeSubscriber) -> None:
    await eventually(lambda: subscriber.status.probes_answered >= 2, what="probes")

    status = subscriber.status
    assert status.connected and status.probe_rtt_s is not None and status.probe_rtt_s < 1
    assert status.lag_s is not None and status.lag_s < 1 and status.reconnects == 0


async def test_every_node_holding_the_user_gets_every_event(
    redis_url: str, redis: Redis, shared: SharedPortfolio
) -> None:
    recorders = [Recorder(), Recorder()]
    async with (
        running_subscriber(cluster_settings(redis_url, node_id="a"), recorders[0], redis) as a,
        running_subscriber(cluster_settings(redis_url, node_id="b"), recorders[1], redis) as b,
    ):
        await follow(a, shared, "user-1")
        await shared.apply(tick("user-1", 1), epoch=1)
        await follow(b, shared, "user-1")  # joins later: its snapshot already has qty 1
        await shared.apply(tick("user-1", 2), epoch=1)

        await recorders[0].wait(lambda: len(recorders[0].events) == 2)
        await recorders[1].wait(lambda: len(recorders[1].events) == 1)
        assert [e.payload["qty"] for e in recorders[0].events] == ["1", "2"]
        assert [e.payload["qty"] for e in recorders[1].events] == ["2"]
        assert a.position("user-1") == b.position("user-1")
