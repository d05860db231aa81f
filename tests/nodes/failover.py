"""What the failover tests watch: who holds each account's lease, what the broker saw.

Three views of one account's consumption, each read from outside the nodes:

- the lease in Redis (``pf:lease:{account:<username>}``: holder node and epoch), which says who
  *may* consume;
- the simulated broker's ``trade_updates`` connection history (``SimControl``), which says who
  *did*: a takeover is a new authenticated connection opened after the holder died;
- the user's state in Redis (``pf:{<userId>}:meta`` field ``fe``): the epoch of the newest
  writer the fenced write script let through.

Times from the broker are Unix seconds; the broker runs on this machine, so they compare with
``time.time()`` here.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from alpaca_bridge.simulator.control_client import SimControl, StreamConnection
from app.cluster.keys import UserKeys, lease_key
from app.cluster.leases import PRICES_LEASE, account_lease
from tests.nodes.browser import Admin, Tab, broker_qty, eventually
from tests.nodes.harness import Account, Cluster, Node

# The lease settings of these tests: small, so that every bound is reached quickly.
LEASE_TTL_S = 3.0
LEASE_RENEW_S = 1.0
# How long after a holder dies another node must consume its account (the TTL + 5 s).
TAKEOVER_BOUND_S = LEASE_TTL_S + 5.0
# The longest two authenticated streams of one account may overlap: the takeover handshake.
OVERLAP_BOUND_S = 2.0

# Every node may consume; the simulator lets a second stream of one key in, so that two
# consumers of one account would show as an overlap instead of being refused.
FAILOVER_SETTINGS: dict[str, Any] = {
    "consume_broker_streams": "true",
    "lease_ttl_s": LEASE_TTL_S,
    "lease_renew_s": LEASE_RENEW_S,
}


@dataclass(frozen=True, slots=True)
class Holder:
    node: str
    epoch: int


def redis_client(cluster: Cluster) -> Redis:
    return Redis.from_url(cluster.redis.url, socket_timeout=2, decode_responses=True)


def lease_holder(redis: Redis, username: str) -> Holder | None:
    """The account's lease as Redis has it now (None: free, or Redis down)."""
    try:
        node, epoch = redis.hmget(lease_key(account_lease(username)), ["node", "epoch"])
    except (RedisError, OSError):
        return None
    if not node:
        return None
    return Holder(str(node), int(epoch or 0))


def prices_holder(redis: Redis) -> Holder | None:
    """The market-data stream's lease as Redis has it now."""
    try:
        node, epoch = redis.hmget(lease_key(PRICES_LEASE), ["node", "epoch"])
    except (RedisError, OSError):
        return None
    return Holder(str(node), int(epoch or 0)) if node else None


def holders(redis: Redis, usernames: Iterable[str]) -> dict[str, Holder | None]:
    return {name: lease_holder(redis, name) for name in usernames}


def fencing_epoch(redis: Redis, user_id: str) -> int | None:
    """``fe`` of the user's state: the account epoch of the newest write that landed."""
    value = redis.hget(UserKeys.of(user_id).meta, "fe")
    return None if value is None else int(value)


def trading(sim: SimControl, account: Account) -> list[StreamConnection]:
    return sim.trading_streams(account.api_key).connections


def authenticated_since(
    connections: Iterable[StreamConnection], since: float
) -> list[StreamConnection]:
    """The connections authenticated after ``since`` (Unix seconds), oldest first."""
    found = [c for c in connections if c.authenticated_at is not None]
    return sorted(
        (c for c in found if c.authenticated_at is not None and c.authenticated_at > since),
        key=lambda c: c.authenticated_at or 0.0,
    )


async def wait_taken_over(
    cluster: Cluster,
    redis: Redis,
    account: Account,
    *,
    dead: str,
    since: float,
    timeout_s: float,
) -> tuple[Holder, StreamConnection]:
    """Until a live node other than ``dead`` holds the account's lease and the broker has a
    ``trade_updates`` connection of its key authenticated after ``since``: the new holder and
    that connection."""
    sim = cluster.simulator.control

    async def taken() -> tuple[Holder, StreamConnection] | None:
        holder = lease_holder(redis, account.username)
        live = {node.id for node in cluster.alive}
        if holder is None or holder.node == dead or holder.node not in live:
            return None
        fresh = authenticated_since(await asyncio.to_thread(trading, sim, account), since)
        if not fresh:
            return None
        return holder, fresh[0]

    found: tuple[Holder, StreamConnection] = await eventually(
        taken, f"{account.username}'s account consumed by a node other than {dead}", timeout_s
    )
    return found


async def wait_one_consumer_each(
    cluster: Cluster,
    redis: Redis,
    accounts: Iterable[Account],
    timeout_s: float,
    *,
    spread: bool = True,
) -> dict[str, Holder]:
    """Until every account's lease is held by a live node and the broker sees exactly one
    authenticated ``trade_updates`` connection of each key open; with ``spread``, also until
    every live node holds its fair share of the leases (theirs and the market data's, over the
    nodes, rounded down or up): no node takes every account while others idle, and no
    rebalancing is still under way."""
    sim = cluster.simulator.control
    accounts = list(accounts)

    async def settled() -> dict[str, Holder] | None:
        live = {node.id for node in cluster.alive}
        found: dict[str, Holder] = {}
        for account in accounts:
            holder = lease_holder(redis, account.username)
            if holder is None or holder.node not in live:
                return None
            state = await asyncio.to_thread(sim.trading_streams, account.api_key)
            if state.open != 1:
                return None
            found[account.username] = holder
        if spread:
            # The market-data lease is spread with the accounts' (one lease among them).
            prices = prices_holder(redis)
            if prices is None or prices.node not in live:
                return None
            leases = [*found.values(), prices]
            floor, extra = divmod(len(leases), len(live))
            counts = Counter(holder.node for holder in leases)
            if any(not floor <= counts[node] <= floor + bool(extra) for node in live):
                return None
        return found

    result: dict[str, Holder] = await eventually(
        settled, "every account consumed by exactly one live node", timeout_s, interval=0.1
    )
    return result


def node_by_id(cluster: Cluster, node_id: str) -> Node:
    return next(node for node in cluster.nodes if node.id == node_id and node.alive)


async def settled_truth(cluster: Cluster, accounts: Iterable[Account]) -> dict[str, Any]:
    """Per user, the broker's positions once none of its orders is open (flow stopped)."""
    sim = cluster.simulator.control
    truth: dict[str, Any] = {}
    for account in accounts:

        async def no_open(a: Account = account) -> bool:
            return not await asyncio.to_thread(_open_orders, cluster, a)

        await eventually(no_open, f"{account.username}'s orders all filled", 20)
        positions = await asyncio.to_thread(sim.positions, account.api_key)
        truth[account.username] = broker_qty({p["symbol"]: p["qty"] for p in positions})
    return truth


def _open_orders(cluster: Cluster, account: Account) -> list[Any]:
    import json
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - the test's own loopback broker
        f"{cluster.simulator.urls.api_url}/v2/orders?status=open",
        headers=account.rest_headers,
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        rows: list[Any] = json.loads(response.read())
    return rows


def order_fills(sim: SimControl, account: Account) -> dict[str, Decimal]:
    """order id -> the quantity the broker filled of it (sum of its executions)."""
    filled: dict[str, Decimal] = {}
    for fill in sim.fills(account.api_key):
        filled[fill.order_id] = filled.get(fill.order_id, Decimal(0)) + fill.qty
    return filled


def fill_mismatches(tab: Tab, filled: dict[str, Decimal]) -> list[str]:
    """The orders a tab shows whose filled quantity is not the sum of the broker's executions
    of them (a fill counted twice, or lost)."""
    wrong = []
    for order_id, order in tab.orders.items():
        if order_id not in filled:
            continue
        shown = Decimal(str(order.get("filledQty") or 0))
        if shown != filled[order_id]:
            wrong.append(f"{order_id}: shows {shown}, broker filled {filled[order_id]}")
    return wrong


@dataclass
class Takeovers:
    """Each takeover's time, from the holder's death to the new authenticated stream."""

    seconds: list[float] = field(default_factory=list)

    def add(self, died_at: float, connection: StreamConnection) -> float:
        assert connection.authenticated_at is not None
        took = connection.authenticated_at - died_at
        self.seconds.append(took)
        return took

    def summary(self) -> dict[str, float]:
        if not self.seconds:
            return {"count": 0}
        return {
            "count": len(self.seconds),
            "median_s": round(statistics.median(self.seconds), 3),
            "max_s": round(max(self.seconds), 3),
            "min_s": round(min(self.seconds), 3),
        }


def wall() -> float:
    return time.time()


async def wait_stats_agree(
    admin: Admin, cluster: Cluster, held: dict[str, Holder], timeout_s: float
) -> None:
    """Until every live node's stats (``broker.accounts[]``) name each account's lease holder
    as its consumer, with the lease's epoch, and report its stream connected."""

    async def agreed() -> bool:
        for node in cluster.alive:
            rows = {
                row["username"]: row
                for row in ((await admin.stats(node.url)).get("broker") or {}).get("accounts", [])
            }
            for username, holder in held.items():
                row = rows.get(username, {})
                if (row.get("consumer"), row.get("epoch"), row.get("status")) != (
                    holder.node,
                    holder.epoch,
                    "connected",
                ):
                    return False
        return True

    await eventually(agreed, f"every node's stats naming the consumers {held}", timeout_s)
