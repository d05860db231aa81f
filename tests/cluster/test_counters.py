"""Expiring counters shared by nodes (the login throttle's primitive)."""

from __future__ import annotations

from redis.asyncio import Redis

from app.cluster.counters import ExpiringCounters
from tests.cluster.support import REDIS_TIMEOUT_S, eventually


def counters_in(redis: Redis, namespace: str) -> ExpiringCounters:
    return ExpiringCounters(redis, namespace, timeout_s=REDIS_TIMEOUT_S)


async def test_hits_count_within_one_window_that_starts_at_the_first(redis: Redis) -> None:
    node_a, node_b = (
        ExpiringCounters(redis, "login:user", timeout_s=REDIS_TIMEOUT_S),
        ExpiringCounters(redis, "login:user", timeout_s=REDIS_TIMEOUT_S),
    )
    first = await node_a.add("alice", window_s=300)
    second = await node_b.add("alice", window_s=300)

    assert (first.count, second.count) == (1, 2)
    assert 299 < second.resets_in_s <= 300
    [alice, bob] = await node_a.peek("alice", "bob")
    assert alice.count == 2 and (bob.count, bob.resets_in_s) == (0, 0.0)


async def test_reserve_grants_up_to_the_limit_then_refuses_with_the_wait(redis: Redis) -> None:
    counters = ExpiringCounters(redis, "budget", timeout_s=REDIS_TIMEOUT_S)
    grants = [await counters.reserve("k", limit=2, window_s=60) for _ in range(3)]

    assert [g.granted for g in grants] == [True, True, False]
    assert grants[2].count == 2 and 59 < grants[2].retry_after_s <= 60
    assert grants[0].retry_after_s == 0.0


async def test_a_window_ends_and_counting_starts_over(redis: Redis) -> None:
    counters = ExpiringCounters(redis, "short", timeout_s=REDIS_TIMEOUT_S)
    await counters.add("k", window_s=0.2)
    await counters.add("k", window_s=0.2)

    await eventually(lambda: gone(counters), timeout_s=2, what="window end")

    assert (await counters.add("k", window_s=0.2)).count == 1


async def gone(counters: ExpiringCounters) -> bool:
    [count] = await counters.peek("k")
    return count.count == 0


async def test_reset_clears_one_key_and_namespaces_are_apart(redis: Redis) -> None:
    users, addresses = (
        ExpiringCounters(redis, "login:user", timeout_s=REDIS_TIMEOUT_S),
        ExpiringCounters(redis, "login:addr", timeout_s=REDIS_TIMEOUT_S),
    )
    await users.add("alice", 60)
    await addresses.add("alice", 60)

    await users.reset("alice")

    assert (await users.peek("alice"))[0].count == 0
    assert (await addresses.peek("alice"))[0].count == 1


async def test_holds_count_against_the_limit_until_settled(redis: Redis) -> None:
    counters = ExpiringCounters(redis, "login:user", timeout_s=REDIS_TIMEOUT_S)
    first = await counters.hold("alice", "h1", limit=2, ttl_s=60)
    again = await counters.hold("alice", "h1", limit=2, ttl_s=60)  # a retried call
    second = await counters.hold("alice", "h2", limit=2, ttl_s=60)
    third = await counters.hold("alice", "h3", limit=2, ttl_s=60)

    assert [h.granted for h in (first, again, second, third)] == [True, True, True, False]
    assert (third.count, third.held) == (0, 2)
    assert await counters.settle("alice", "h1", "add", window_s=60) == 1
    assert await counters.settle("alice", "h2", "release", window_s=60) == 1
    refused = await counters.hold("alice", "h4", limit=1, ttl_s=60)
    assert not refused.granted and 59 < refused.resets_in_s <= 60
    assert await counters.settle("alice", "h4", "reset", window_s=60) == 0
    assert (await counters.hold("alice", "h5", limit=1, ttl_s=60)).granted
