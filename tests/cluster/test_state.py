"""The write script and the snapshot read, against a real redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from app.bus import InProcessBus
from app.cluster.keys import UserKeys, user_channel
from app.cluster.notices import decode_notice
from app.cluster.state import SharedPortfolio
from app.events import (
    ACCOUNT_UPDATED,
    ORDER_UPDATED,
    POSITION_CLOSED,
    POSITION_UPDATED,
    TRADE_EXECUTED,
)
from app.portfolio import PortfolioStore
from tests.cluster.support import REDIS_TIMEOUT_S, account, closed, event, order, position, trade

ALL = frozenset({"positions", "orders", "account"})


@pytest.fixture
def shared(redis: Redis) -> SharedPortfolio:
    return SharedPortfolio(redis, recent_orders_limit=3, timeout_s=REDIS_TIMEOUT_S)


async def subscribed(redis: Redis, user: str) -> PubSub:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(user_channel(user))
    return pubsub


async def next_notice(pubsub: PubSub, timeout_s: float = 2.0) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            message = await pubsub.get_message(timeout=timeout_s)
            if message is not None:
                return message["data"]


async def test_an_applied_event_is_in_the_state_and_its_notice_published(
    shared: SharedPortfolio, redis: Redis
) -> None:
    pubsub = await subscribed(redis, "user-1")
    payload = position("user-1", "AAPL", pnl="550.10")
    result = await shared.apply(event(POSITION_UPDATED, payload), epoch=1)

    assert result.applied and result.offset == 1 and result.epoch
    data = await next_notice(pubsub)
    notice = decode_notice(data, "user-1")
    assert (notice.epoch, notice.offset) == (result.epoch, 1)
    assert notice.event.type == POSITION_UPDATED and notice.event.payload == payload
    state = await shared.read("user-1")
    assert (state.epoch, state.offset) == (result.epoch, 1)
    assert state.portfolio.positions["AAPL"] == payload
    # Exact decimal strings travel untouched, byte for byte.
    assert orjson.dumps(payload) in data
    await pubsub.aclose()


async def test_an_older_epoch_is_refused_and_nothing_is_published(
    shared: SharedPortfolio, redis: Redis
) -> None:
    pubsub = await subscribed(redis, "user-1")
    await shared.apply(event(POSITION_UPDATED, position("user-1", "AAPL", pnl="1.00")), epoch=5)
    await next_notice(pubsub)

    stale = await shared.apply(
        event(POSITION_UPDATED, position("user-1", "AAPL", pnl="9.99")), epoch=4
    )

    assert not stale.applied and stale.fencing_epoch == 5
    await redis.publish(user_channel("user-1"), "sentinel")
    assert await next_notice(pubsub) == b"sentinel"  # nothing came before it
    state = await shared.read("user-1")
    assert state.offset == 1 and state.fencing_epoch == 5
    assert state.portfolio.positions["AAPL"]["unrealizedPnl"] == "1.00"
    await pubsub.aclose()


async def test_a_newer_epoch_takes_over_and_fences_the_older_writer(
    shared: SharedPortfolio,
) -> None:
    first = await shared.apply(event(ACCOUNT_UPDATED, account("user-1", "1.00")), epoch=1)
    takeover = await shared.apply(event(ACCOUNT_UPDATED, account("user-1", "2.00")), epoch=2)
    old_writer = await shared.apply(event(ACCOUNT_UPDATED, account("user-1", "3.00")), epoch=1)

    assert takeover.applied and takeover.offset == 2 and takeover.epoch == first.epoch
    assert not old_writer.applied and old_writer.fencing_epoch == 2
    state = await shared.read("user-1")
    assert state.fencing_epoch == 2 and state.portfolio.account is not None
    assert state.portfolio.account["equity"] == "2.00"


async def test_offsets_increase_by_one_per_event_of_any_type(
    shared: SharedPortfolio, redis: Redis
) -> None:
    pubsub = await subscribed(redis, "user-1")
    events = [
        event(POSITION_UPDATED, position("user-1", "AAPL")),
        event(ORDER_UPDATED, order("user-1", "o-1")),
        event(TRADE_EXECUTED, trade("user-1")),
        event(ACCOUNT_UPDATED, account("user-1")),
        event(POSITION_CLOSED, closed("user-1", "AAPL")),
    ]
    one = await shared.apply(events[0], epoch=1)
    rest = await shared.apply_many(events[1:], epoch=1)

    assert [r.offset for r in [one, *rest]] == [1, 2, 3, 4, 5]
    notices = [decode_notice(await next_notice(pubsub), "user-1") for _ in events]
    assert [n.offset for n in notices] == [1, 2, 3, 4, 5]
    assert [n.event.type for n in notices] == [e.type for e in events]
    state = await shared.read("user-1")
    assert state.offset == 5 and state.portfolio.positions == {}
    assert list(state.portfolio.orders) == ["o-1"]
    await pubsub.aclose()


async def test_users_have_separate_offsets_and_state(shared: SharedPortfolio) -> None:
    await shared.apply(event(POSITION_UPDATED, position("user-1", "AAPL")), epoch=1)
    other = await shared.apply(event(POSITION_UPDATED, position("user-2", "MSFT")), epoch=1)

    assert other.offset == 1
    assert list((await shared.read("user-1")).portfolio.positions) == ["AAPL"]
    assert list((await shared.read("user-2")).portfolio.positions) == ["MSFT"]


async def test_orders_match_the_in_process_store_bounds_and_order(
    shared: SharedPortfolio,
) -> None:
    """Open orders always kept, only the most recent closed ones, newest first: the same
    snapshot as app.portfolio builds from the same events."""
    events = [event(ORDER_UPDATED, order("user-1", "open-1"))]
    events += [event(ORDER_UPDATED, order("user-1", f"done-{n}", "filled")) for n in range(5)]
    # An order that reopens is no longer a closed one to evict; an update moves it up.
    events.append(event(ORDER_UPDATED, order("user-1", "done-4", "new")))
    events.append(event(ORDER_UPDATED, order("user-1", "open-1", "partially_filled")))
    local = PortfolioStore(recent_orders_limit=3)
    bus = InProcessBus()
    await bus.start()
    local.attach(bus)
    for item in events:
        bus.publish(item.type, item.payload)
    await bus.close()

    await shared.apply_many(events, epoch=1)

    snapshot = (await shared.read("user-1")).snapshot(ALL)
    assert snapshot == local.snapshot("user-1", ALL)
    assert [o["orderId"] for o in snapshot["orders"]] == ["open-1", "done-4", "done-3", "done-2"]
    assert "userId" not in snapshot["orders"][0]


async def test_the_snapshot_has_the_in_process_stores_shape(shared: SharedPortfolio) -> None:
    await shared.apply(event(POSITION_UPDATED, position("user-1", "MSFT")), epoch=1)
    await shared.apply(event(POSITION_UPDATED, position("user-1", "AAPL")), epoch=1)
    await shared.apply(event(ACCOUNT_UPDATED, account("user-1", "104550.00")), epoch=1)

    snapshot = (await shared.read("user-1")).snapshot({"positions", "account"})

    assert [p["symbol"] for p in snapshot["positions"]] == ["AAPL", "MSFT"]
    assert snapshot["account"]["equity"] == "104550.00"
    assert "orders" not in snapshot


async def test_a_user_without_state_reads_empty_with_no_epoch(shared: SharedPortfolio) -> None:
    state = await shared.read("nobody")

    assert (state.epoch, state.offset, state.fencing_epoch) == (None, 0, 0)
    assert state.snapshot(ALL) == {"positions": [], "orders": [], "account": None}


async def test_state_lost_by_redis_starts_a_new_epoch(
    shared: SharedPortfolio, redis: Redis
) -> None:
    before = await shared.apply(event(POSITION_UPDATED, position("user-1", "AAPL")), epoch=1)
    await redis.flushall()

    after = await shared.apply(event(POSITION_UPDATED, position("user-1", "AAPL")), epoch=1)

    assert after.offset == 1 and after.epoch != before.epoch


async def test_a_read_after_subscribing_agrees_with_the_notices_that_follow(
    shared: SharedPortfolio, redis: Redis
) -> None:
    """Subscribe first, then read: notices at or below the read's offset are already in it,
    and the ones above it continue it without a hole."""
    pubsub = await subscribed(redis, "user-1")

    halfway = asyncio.Event()

    async def write(count: int) -> None:
        for n in range(count):
            await shared.apply(
                event(POSITION_UPDATED, position("user-1", "AAPL", qty=str(n))), epoch=1
            )
            if n == count // 2:
                halfway.set()

    writer = asyncio.create_task(write(200))
    await halfway.wait()
    state = await shared.read("user-1")  # while the writer goes on
    await writer
    notices = [decode_notice(await next_notice(pubsub), "user-1") for _ in range(200)]

    newer = [n for n in notices if n.offset > state.offset]
    assert [n.offset for n in newer] == list(range(state.offset + 1, 201))
    at_read = next(n for n in notices if n.offset == state.offset)
    assert state.portfolio.positions["AAPL"] == at_read.event.payload
    await pubsub.aclose()


async def test_a_script_forgotten_by_redis_is_loaded_again(
    shared: SharedPortfolio, redis: Redis
) -> None:
    await shared.apply(event(POSITION_UPDATED, position("user-1", "AAPL")), epoch=1)
    await redis.script_flush()

    single = await shared.apply(event(POSITION_UPDATED, position("user-1", "MSFT")), epoch=1)
    await redis.script_flush()
    batch = await shared.apply_many(
        [event(POSITION_UPDATED, position("user-1", s)) for s in ("A", "B")], epoch=1
    )

    assert single.offset == 2 and [r.offset for r in batch] == [3, 4]
    assert (await shared.read("user-1")).offset == 4


async def test_events_are_validated_before_they_reach_redis(
    shared: SharedPortfolio, redis: Redis
) -> None:
    with pytest.raises(ValueError, match="missing"):
        await shared.apply(event(POSITION_UPDATED, {"userId": "user-1"}), epoch=1)
    assert await redis.exists(*UserKeys.of("user-1").state_keys) == 0
