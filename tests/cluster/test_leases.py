"""Leases on broker accounts and the price stream, against a real redis-server: one holder at a
time, an epoch per grant that fences the state writes, self-fencing before the TTL ends, and
the spreading of leases over the nodes."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from app.cluster.client import command_client
from app.cluster.keys import lease_grants_key
from app.cluster.leases import (
    LOST_OVERDUE,
    PRICES_LEASE,
    RELEASED_SHARE,
    RELEASED_STOP,
    LeaseKeeper,
    LeaseTable,
    account_lease,
)
from app.cluster.state import SharedPortfolio
from app.events import POSITION_UPDATED
from config.settings import Settings
from tests.cluster.redis_server import RedisServer
from tests.cluster.support import REDIS_TIMEOUT_S, cluster_settings, event, eventually, position
from tests.tcp_proxy import TcpProxy

ALICE = account_lease("alice")
FOUR = [account_lease(user) for user in ("alice", "bob", "carol")] + [PRICES_LEASE]


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Ledger:
    """Who consumes which lease, by the keepers' callbacks; records any second consumer."""

    def __init__(self) -> None:
        self.consumers: dict[str, tuple[str, int]] = {}
        self.history: list[tuple[str, str, str, int]] = []  # (what, node, lease, epoch)
        self.reasons: list[str] = []
        self.violations: list[str] = []

    def callbacks(self, node: str) -> dict[str, Callable[..., None]]:
        def on_acquired(name: str, epoch: int) -> None:
            if name in self.consumers:
                self.violations.append(f"{node} started {name} while {self.consumers[name]}")
            self.consumers[name] = (node, epoch)
            self.history.append(("acquired", node, name, epoch))

        def on_lost(name: str, epoch: int, reason: str) -> None:
            if self.consumers.get(name) == (node, epoch):
                del self.consumers[name]
            self.history.append(("lost", node, name, epoch))
            self.reasons.append(reason)

        return {"on_acquired": on_acquired, "on_lost": on_lost}


class SlowTable(LeaseTable):
    """A table whose renewals answer ``delay_s`` of the fake clock after they were sent, and
    that fails every call while ``failing`` (Redis unreachable)."""

    def __init__(self, redis: Redis, clock: FakeClock, **kwargs: Any) -> None:
        super().__init__(redis, **kwargs)
        self.clock = clock
        self.delay_s = 0.0
        self.failing = False

    async def renew_many(
        self, node_id: str, grants: Sequence[tuple[str, int]], *, timeout_s: float | None = None
    ) -> list[bool | Exception]:
        self.clock.now += self.delay_s
        if self.failing:
            raise ConnectionError("Redis unreachable")
        return await super().renew_many(node_id, grants, timeout_s=timeout_s)

    async def join(self, node_id: str, *, timeout_s: float | None = None) -> list[str]:
        if self.failing:
            raise ConnectionError("Redis unreachable")
        return await super().join(node_id, timeout_s=timeout_s)


def table(redis: Redis, ttl_s: float = 15.0) -> LeaseTable:
    return LeaseTable(redis, ttl_s=ttl_s, timeout_s=REDIS_TIMEOUT_S)


def keeper(
    lease_table: LeaseTable,
    node: str,
    ledger: Ledger,
    names: Iterable[str] = (ALICE,),
    *,
    renew_s: float = 5.0,
    clock: Callable[[], float] | None = None,
) -> LeaseKeeper:
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    return LeaseKeeper(lease_table, node, names, renew_s=renew_s, **ledger.callbacks(node), **extra)


@contextlib.asynccontextmanager
async def running(*keepers: LeaseKeeper) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(k.run()) for k in keepers]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for k in keepers:
            await k.close()


async def holder(redis: Redis, name: str) -> str | None:
    [row] = await table(redis).rows([name])
    return row.holder


# --- the table: grants, epochs, renewals and releases ---------------------------------------


async def count_from_zero(redis: Redis, name: str = ALICE) -> None:
    """A lease with a grant on record at epoch 0, so the keeper tests read epochs 1, 2, ...
    (a lease never granted counts from Redis's clock instead)."""
    await redis.hset(lease_grants_key(name), "epoch", 0)


async def test_a_lease_is_granted_once_and_every_grant_takes_a_higher_epoch(redis: Redis) -> None:
    leases = table(redis)
    first = await leases.acquire(ALICE, "node-a")
    assert first is not None and first.previous_holder is None
    # The first grant counts from Redis's clock (ms): above anything granted before a loss.
    assert first.epoch >= first.granted_at_ms
    assert await leases.acquire(ALICE, "node-b") is None

    assert await leases.release(ALICE, "node-a", first.epoch)
    second = await leases.acquire(ALICE, "node-b")
    assert second is not None and second.epoch == first.epoch + 1
    assert (second.previous_holder, second.previous_released) == ("node-a", True)
    # The holder asking again (it lost track of its grant) gets a new epoch.
    third = await leases.acquire(ALICE, "node-b")
    assert third is not None and third.epoch == first.epoch + 2
    # Leases are independent: their own epochs.
    other = await leases.acquire(PRICES_LEASE, "node-a")
    assert other is not None and other.epoch >= other.granted_at_ms


async def test_a_renewal_or_release_by_a_stale_grant_is_refused(redis: Redis) -> None:
    leases = table(redis)
    first = await leases.acquire(ALICE, "node-a")
    assert first is not None
    old = first.epoch
    await leases.release(ALICE, "node-a", old)
    await leases.acquire(ALICE, "node-b")

    assert not await leases.renew(ALICE, "node-a", old)
    assert not await leases.renew(ALICE, "node-b", old)
    assert not await leases.release(ALICE, "node-a", old)
    assert await leases.renew(ALICE, "node-b", old + 1)
    [row] = await leases.rows([ALICE])
    assert (row.holder, row.epoch, row.last_epoch) == ("node-b", old + 1, old + 1)


async def test_the_lease_list_shows_holder_epoch_and_time_left(redis: Redis) -> None:
    leases = table(redis, ttl_s=15.0)
    granted = await leases.acquire(ALICE, "node-a")
    assert granted is not None
    floor = granted.epoch + 10**6  # a floor above the clock's
    await leases.acquire(PRICES_LEASE, "node-b", at_least=floor)

    rows = {row.name: row for row in await leases.rows([ALICE, PRICES_LEASE, "account:nobody"])}

    assert (rows[ALICE].holder, rows[ALICE].epoch) == ("node-a", granted.epoch)
    assert rows[ALICE].ttl_left_s is not None and 0 < rows[ALICE].ttl_left_s <= 15.0
    assert (rows[PRICES_LEASE].holder, rows[PRICES_LEASE].epoch) == ("node-b", floor)
    free = rows["account:nobody"]
    assert (free.holder, free.epoch, free.last_epoch, free.ttl_left_s) == (None, None, 0, None)
    assert rows[ALICE].to_json()["holder"] == "node-a"


async def test_a_lease_nobody_renews_ends_with_its_ttl(redis: Redis) -> None:
    leases = table(redis, ttl_s=0.3)
    first = await leases.acquire(ALICE, "node-a")
    assert first is not None
    await eventually(lambda: _is_free(redis), what="the lease to expire")
    grant = await leases.acquire(ALICE, "node-b")
    assert grant is not None and grant.epoch == first.epoch + 1 and not grant.previous_released


async def _is_free(redis: Redis) -> bool:
    return await holder(redis, ALICE) is None


async def test_a_lease_epoch_fences_the_state_writes_of_the_holder_it_replaced(
    redis: Redis,
) -> None:
    """A holder paused past its TTL wakes up after another took over: its writes, carrying
    its old lease epoch, are refused by the state write script."""
    leases = table(redis, ttl_s=0.3)
    shared = SharedPortfolio(redis, recent_orders_limit=3, timeout_s=REDIS_TIMEOUT_S)
    old = await leases.acquire(ALICE, "node-a")
    assert old is not None
    first = await shared.apply(
        event(POSITION_UPDATED, position("alice", "AAPL", pnl="1.00")), epoch=old.epoch
    )
    assert first.applied

    await eventually(lambda: _is_free(redis), what="node-a's lease to expire")
    new = await leases.acquire(ALICE, "node-b")
    assert new is not None and new.epoch > old.epoch
    taken_over = await shared.apply(
        event(POSITION_UPDATED, position("alice", "AAPL", pnl="2.00")), epoch=new.epoch
    )
    stale = await shared.apply(
        event(POSITION_UPDATED, position("alice", "AAPL", pnl="9.99")), epoch=old.epoch
    )

    assert taken_over.applied
    assert not stale.applied and stale.fencing_epoch == new.epoch
    state = await shared.read("alice")
    assert state.portfolio.positions["AAPL"]["unrealizedPnl"] == "2.00"


# --- the keeper: one holder, hand-over, self-fencing ----------------------------------------


async def test_exactly_one_of_two_keepers_holds_a_lease(redis: Redis) -> None:
    ledger = Ledger()
    a, b = keeper(table(redis), "node-a", ledger), keeper(table(redis), "node-b", ledger)

    await asyncio.gather(a.step(), b.step())
    await asyncio.gather(a.step(), b.step())

    holders = [k.node_id for k in (a, b) if ALICE in k.held()]
    assert len(holders) == 1
    assert await holder(redis, ALICE) == holders[0]
    assert ledger.violations == [] and len(ledger.history) == 1
    await a.close()
    await b.close()


async def test_a_graceful_stop_hands_the_lease_over_at_once(
    redis: Redis, log_lines: io.StringIO
) -> None:
    await count_from_zero(redis)
    ledger = Ledger()
    a, b = keeper(table(redis), "node-a", ledger), keeper(table(redis), "node-b", ledger)
    await a.step()
    await b.step()
    assert a.held() == {ALICE: 1} and b.held() == {}

    await a.close()
    await b.step()

    assert b.held() == {ALICE: 2}
    assert ledger.history == [
        ("acquired", "node-a", ALICE, 1),
        ("lost", "node-a", ALICE, 1),
        ("acquired", "node-b", ALICE, 2),
    ]
    assert ledger.reasons == [RELEASED_STOP] and ledger.violations == []
    text = log_lines.getvalue()
    for line in (
        "[AlpacaStream] Lease acquired",
        "[AlpacaStream] Lease released",
        "[AlpacaStream] Lease taken over",
    ):
        assert line in text
    [status] = b.status()
    assert (status.held, status.epoch, status.acquisitions, status.losses) == (True, 2, 1, 0)
    await b.close()


async def test_a_keeper_that_cannot_renew_stops_consuming_before_the_ttl_ends(
    redis: Redis, log_lines: io.StringIO
) -> None:
    """TTL 15 s, renewals every 5 s: with renewals failing, the holder stops at 10 s after it
    sent its last successful one, 5 s before the lease could go to another node."""
    await count_from_zero(redis)
    clock = FakeClock()
    leases = SlowTable(redis, clock, ttl_s=15.0, timeout_s=REDIS_TIMEOUT_S)
    ledger = Ledger()
    a = keeper(leases, "node-a", ledger, clock=clock)
    start = clock.now
    await a.step()
    assert a.held() == {ALICE: 1}

    leases.failing = True
    clock.now = start + 5
    await a.step()
    [status] = a.status()
    assert status.held and status.renew_failing and status.fences_in_s == 5.0
    assert "[AlpacaStream] Lease renewal failed" in log_lines.getvalue()

    clock.now = start + 9.9
    await a.step()
    assert a.held() == {ALICE: 1} and ledger.consumers

    clock.now = start + 10
    await a.step()
    assert a.held() == {} and ledger.consumers == {}
    assert ledger.reasons == [LOST_OVERDUE]
    assert "[AlpacaStream] Lease renewal overdue: stopped consuming" in log_lines.getvalue()
    [status] = a.status()
    assert (status.held, status.losses, status.last_loss) == (False, 1, LOST_OVERDUE)
    await a.close()


async def test_a_slow_renewal_answer_does_not_extend_the_holders_deadline(redis: Redis) -> None:
    """The deadline counts from when a renewal was sent: an answer 3 s late buys 3 s less."""
    await count_from_zero(redis)
    clock = FakeClock()
    leases = SlowTable(redis, clock, ttl_s=15.0, timeout_s=REDIS_TIMEOUT_S)
    ledger = Ledger()
    a = keeper(leases, "node-a", ledger, clock=clock)
    start = clock.now
    await a.step()

    clock.now = start + 5
    leases.delay_s = 3.0
    await a.step()
    assert clock.now == start + 8
    [status] = a.status()
    assert status.fences_in_s == 7.0  # 5 + 10 - 8, not 10

    leases.delay_s, leases.failing = 0.0, True
    clock.now = start + 14.9
    await a.step()
    assert a.held() == {ALICE: 1}
    clock.now = start + 15
    await a.step()
    assert a.held() == {} and ledger.reasons == [LOST_OVERDUE]
    await a.close()


async def test_a_holder_cut_off_from_redis_stops_before_another_node_starts(
    shared_redis_server: RedisServer, redis: Redis
) -> None:
    """Real time, real sockets: node-a reaches Redis through a relay that is then killed."""
    await count_from_zero(redis)
    proxy = TcpProxy("127.0.0.1", shared_redis_server.port)
    await proxy.start()
    cut_off = command_client(cluster_settings(f"redis://127.0.0.1:{proxy.port}/0"), "node-a")
    ledger = Ledger()
    a = keeper(table(cut_off, ttl_s=3.0), "node-a", ledger, renew_s=1.0)
    b = keeper(table(redis, ttl_s=3.0), "node-b", ledger, renew_s=1.0)
    try:
        async with running(a):
            await eventually(lambda: a.held() == {ALICE: 1}, what="node-a to hold the lease")
            async with running(b):
                await proxy.kill()
                await eventually(
                    lambda: b.held() == {ALICE: 2}, timeout_s=10, what="node-b to take over"
                )
    finally:
        await proxy.close()
        await cut_off.aclose()

    assert ledger.history[:3] == [
        ("acquired", "node-a", ALICE, 1),
        ("lost", "node-a", ALICE, 1),
        ("acquired", "node-b", ALICE, 2),
    ]
    assert ledger.reasons[0] == LOST_OVERDUE and ledger.violations == []


async def test_a_consumer_that_fails_to_start_gives_its_lease_back(
    redis: Redis, log_lines: io.StringIO
) -> None:
    ledger = Ledger()

    def refuse(name: str, epoch: int) -> None:
        raise RuntimeError("no socket")

    a = LeaseKeeper(
        table(redis),
        "node-a",
        [ALICE],
        on_acquired=refuse,
        on_lost=ledger.callbacks("a")["on_lost"],
        renew_s=5.0,
    )
    await a.step()

    assert a.held() == {} and await holder(redis, ALICE) is None
    [status] = a.status()
    assert (status.acquisitions, status.releases) == (1, 1)
    assert "[AlpacaStream] Could not start consuming under a lease" in log_lines.getvalue()
    await a.close()


# --- spreading --------------------------------------------------------------------------


class Census:
    """Checks, while keepers run, that no lease is ever believed held by two keepers, and that
    a keeper that held one grant throughout a Redis read is that grant's holder in Redis."""

    def __init__(self, redis: Redis, keepers: list[LeaseKeeper]) -> None:
        self._table = table(redis)
        self.keepers = keepers
        self.violations: list[str] = []
        self.samples = 0

    def beliefs(self) -> dict[str, tuple[str, int]]:
        held: dict[str, tuple[str, int]] = {}
        for k in self.keepers:
            for name, epoch in k.held().items():
                if name in held:
                    self.violations.append(f"{name}: {held[name]} and {k.node_id}")
                held[name] = (k.node_id, epoch)
        return held

    async def watch(self) -> None:
        while True:
            before = self.beliefs()
            rows = await self._table.rows(FOUR)
            after = self.beliefs()
            for row in rows:
                belief = before.get(row.name)
                held_throughout = belief is not None and after.get(row.name) == belief
                if held_throughout and (row.holder, row.epoch) != belief:
                    self.violations.append(f"{row.name}: believed {belief}, Redis {row}")
            self.samples += 1

    def counts(self) -> list[int]:
        return sorted(len(k.held()) for k in self.keepers)


async def _settled(census: Census, counts: list[int], redis: Redis) -> bool:
    if census.counts() != counts:
        return False
    rows = await table(redis).rows(FOUR)
    return all(row.holder is not None for row in rows)


async def test_leases_spread_over_the_keepers_and_rebalance_when_one_joins(
    redis: Redis,
) -> None:
    ledger = Ledger()

    def make(node: str) -> LeaseKeeper:
        return keeper(table(redis, ttl_s=3.0), node, ledger, FOUR, renew_s=0.2)

    a, b = make("node-a"), make("node-b")
    census = Census(redis, [a, b])
    watcher = asyncio.create_task(census.watch())
    try:
        async with running(a, b):
            await eventually(
                lambda: _settled(census, [2, 2], redis), timeout_s=10, what="a 2/2 split"
            )
            c = make("node-c")
            census.keepers.append(c)
            async with running(c):
                await eventually(
                    lambda: _settled(census, [1, 1, 2], redis), timeout_s=10, what="2/1/1"
                )
                assert {k.node_id for k in (a, b, c)} <= a.live_nodes()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    assert census.samples > 0
    assert census.violations == [] and ledger.violations == []
    assert RELEASED_SHARE in ledger.reasons
    # Everything was handed back on close.
    assert all(row.holder is None for row in await table(redis).rows(FOUR))


async def test_a_lone_keeper_takes_every_lease_and_gives_back_one_per_round(
    redis: Redis,
) -> None:
    ledger = Ledger()
    a = keeper(table(redis), "node-a", ledger, FOUR)
    b = keeper(table(redis), "node-b", ledger, FOUR)
    await a.step()
    assert len(a.held()) == 4

    await b.step()  # node-b joins: a share of 2 each
    assert b.held() == {}
    await a.step()
    assert len(a.held()) == 3
    await b.step()
    await a.step()
    await b.step()
    assert sorted([len(a.held()), len(b.held())]) == [2, 2]
    assert ledger.violations == []
    rows = await a.cluster()
    assert sorted(row.name for row in rows) == sorted(FOUR)
    assert {row.holder for row in rows} == {"node-a", "node-b"}
    await a.close()
    await b.close()


async def test_a_keeper_over_its_share_keeps_the_market_data_lease_to_the_last(
    redis: Redis,
) -> None:
    """Moving the ``prices`` lease restarts the cluster's one price connection: a rebalance
    gives the account leases back first."""
    names = (ALICE, account_lease("bob"), account_lease("carol"), PRICES_LEASE)
    # Each node tries leases in an order of its own: several node ids, so that some would
    # give the market-data lease back first if nothing kept it.
    for first in range(8):
        await redis.flushall()
        ledger = Ledger()
        a = keeper(table(redis), f"node-{first}", ledger, names)
        b = keeper(table(redis), "node-joining", ledger, names)
        await a.step()
        assert set(a.held()) == set(names)
        await b.step()  # node-joining arrives: a share of 2 each
        for _ in range(3):
            await a.step()
            await b.step()
        assert PRICES_LEASE in a.held() and len(a.held()) == 2, (first, a.held())
        assert ledger.violations == []
        await a.close()
        await b.close()


# --- settings ---------------------------------------------------------------------------


def test_the_renew_interval_must_be_under_half_the_ttl() -> None:
    with pytest.raises(ValidationError, match="LEASE_RENEW_S"):
        Settings(_env_file=None, lease_ttl_s=10.0, lease_renew_s=5.0)  # type: ignore[call-arg]
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.lease_ttl_s, settings.lease_renew_s) == (15.0, 5.0)
