"""Cluster-wide connection limits over expiring slots, with two nodes on one real Redis."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from app.cluster.admission import ClusterAdmission, Slot
from app.cluster.keys import CONN_ALL, conn_node_key, conn_user_key
from tests.cluster.support import REDIS_TIMEOUT_S, eventually


def node(
    redis: Redis, node_id: str, *, ttl_s: float = 30, per_user: int = 5, total: int = 100
) -> ClusterAdmission:
    return ClusterAdmission(
        redis,
        node_id=node_id,
        ttl_s=ttl_s,
        max_per_user=per_user,
        max_total=total,
        timeout_s=REDIS_TIMEOUT_S,
    )


async def test_the_per_user_limit_holds_across_nodes(redis: Redis) -> None:
    a, b = node(redis, "a", per_user=5), node(redis, "b", per_user=5)
    for n in range(3):
        assert (await a.admit(Slot(f"conn_a{n}", "user-1"))).admitted
    for n in range(2):
        assert (await b.admit(Slot(f"conn_b{n}", "user-1"))).admitted

    sixth = await a.admit(Slot("conn_a9", "user-1"))
    also_sixth = await b.admit(Slot("conn_b9", "user-1"))

    assert not sixth.admitted and sixth.refused == "user" and sixth.user_connections == 5
    assert also_sixth.refused == "user"
    assert (await b.admit(Slot("conn_b9", "user-2"))).admitted  # another user is not affected


async def test_the_total_limit_holds_across_nodes(redis: Redis) -> None:
    a, b = node(redis, "a", per_user=5, total=4), node(redis, "b", per_user=5, total=4)
    for n in range(2):
        assert (await a.admit(Slot(f"conn_a{n}", f"user-{n}"))).admitted
        assert (await b.admit(Slot(f"conn_b{n}", f"user-b{n}"))).admitted

    refused = await b.admit(Slot("conn_b5", "user-new"))

    assert (refused.admitted, refused.refused, refused.total_connections) == (False, "total", 4)


async def test_admitting_the_same_connection_twice_holds_one_slot(redis: Redis) -> None:
    a = node(redis, "a", per_user=2)
    await a.admit(Slot("conn_1", "user-1"))
    again = await a.admit(Slot("conn_1", "user-1"))

    assert again.admitted and again.user_connections == 1
    assert (await a.census()) == {"user-1": 1}


async def test_a_released_slot_is_free_again(redis: Redis) -> None:
    a, b = node(redis, "a", per_user=1), node(redis, "b", per_user=1)
    slot = Slot("conn_1", "user-1")
    await a.admit(slot)
    assert not (await b.admit(Slot("conn_2", "user-1"))).admitted

    assert await a.release([slot]) == 1

    assert (await b.admit(Slot("conn_2", "user-1"))).admitted
    assert await a.release([slot]) == 0  # already gone


async def test_a_dead_nodes_slots_expire_within_the_ttl(redis: Redis) -> None:
    """A node killed with SIGKILL stops refreshing; its slots lapse on their own."""
    dead = node(redis, "dead", ttl_s=1, per_user=2)
    live = node(redis, "live", ttl_s=1, per_user=2)
    await dead.admit(Slot("conn_d1", "user-1"))
    await dead.admit(Slot("conn_d2", "user-1"))
    assert not (await live.admit(Slot("conn_l1", "user-1"))).admitted

    await eventually(
        lambda: zcard_is(redis, conn_user_key("user-1"), 0), timeout_s=3, what="expiry"
    )

    assert (await live.admit(Slot("conn_l1", "user-1"))).admitted
    assert await live.census() == {"user-1": 1}


async def zcard_is(redis: Redis, key: str, expected: int) -> bool:
    return int(await redis.zcard(key)) == expected


async def test_refresh_extends_live_slots_and_reports_lapsed_ones(redis: Redis) -> None:
    a = node(redis, "a", ttl_s=1)
    kept, lapsed = Slot("conn_1", "user-1"), Slot("conn_2", "user-2")
    await a.admit(kept)
    await a.admit(lapsed)
    await redis.zrem(CONN_ALL, lapsed.member)  # as if it had expired and been swept
    before = await redis.zscore(CONN_ALL, kept.member)

    missing = await a.refresh([kept, lapsed])

    assert missing == [lapsed]
    after = await redis.zscore(CONN_ALL, kept.member)
    assert before is not None and after is not None and after >= before


async def test_refresh_does_not_revive_an_expired_slot(redis: Redis) -> None:
    a = node(redis, "a", ttl_s=1)
    slot = Slot("conn_1", "user-1")
    await a.admit(slot)
    await eventually(lambda: zcard_is(redis, CONN_ALL, 0), timeout_s=3, what="expiry")

    assert await a.refresh([slot]) == [slot]
    assert await a.census() == {}


async def test_restore_registers_an_open_connection_beyond_the_limits(redis: Redis) -> None:
    """After Redis lost its data, a node puts back what it holds; those sockets are open."""
    a = node(redis, "a", per_user=1)
    await a.admit(Slot("conn_1", "user-1"))

    restored = await a.restore(Slot("conn_2", "user-1"))

    assert restored.admitted and restored.user_connections == 2
    assert not (await a.admit(Slot("conn_3", "user-1"))).admitted


async def test_release_node_frees_that_nodes_slots_only(redis: Redis) -> None:
    a, b = node(redis, "a"), node(redis, "b")
    for n in range(3):
        await a.admit(Slot(f"conn_a{n}", f"user-{n}"))
    await b.admit(Slot("conn_b0", "user-0"))

    assert await a.release_node() == 3

    assert await a.census() == {"user-0": 1}
    assert await redis.exists(conn_node_key("a")) == 0
    assert [s.connection_id for s in await b.node_slots()] == ["conn_b0"]


async def test_the_census_counts_live_connections_per_user(redis: Redis) -> None:
    a, b = node(redis, "a"), node(redis, "b")
    await a.admit(Slot("conn_1", "user-1"))
    await b.admit(Slot("conn_2", "user-1"))
    await b.admit(Slot("conn_3", "user with spaces"))

    assert await a.census() == {"user-1": 2, "user with spaces": 1}


def test_a_connection_id_with_a_space_is_rejected() -> None:
    with pytest.raises(ValueError, match="space"):
        Slot("conn 1", "user-1")
