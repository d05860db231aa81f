"""The cluster's price relay on a real Redis: every node's held symbols add up to what the one
market-data connection follows, and its ticks reach every node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from alpaca_bridge.service import BrokerBridge
from alpaca_bridge.simulator import SimulatedBroker
from app.bus import InProcessBus
from app.cluster.client import command_client, pubsub_pool
from app.cluster.price_relay import (
    BadBatch,
    RedisPriceRelay,
    decode_batch,
    encode_batch,
    price_relay_for,
)
from app.events import Event
from config.settings import Settings
from tests.cluster.support import cluster_settings, eventually


class Node:
    """One node's relay and what it was handed: tick batches, and how often the union moved."""

    def __init__(self, relay: RedisPriceRelay) -> None:
        self.relay = relay
        self.batches: list[dict[str, Decimal]] = []
        self.union_changes = 0
        relay.subscribe(self._on_prices, self._on_wanted)

    def _on_prices(self, prices: Mapping[str, Decimal]) -> None:
        self.batches.append(dict(prices))

    def _on_wanted(self) -> None:
        self.union_changes += 1

    def latest(self) -> dict[str, Decimal]:
        seen: dict[str, Decimal] = {}
        for batch in self.batches:
            seen.update(batch)
        return seen


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    async with AsyncExitStack() as stack:
        flush = command_client(cluster_settings(redis_url), "flush")
        await flush.flushall()
        await flush.aclose()

        async def make(node_id: str, **overrides: Any) -> Node:
            settings = cluster_settings(
                redis_url, node_id=node_id, lease_ttl_s=5.0, lease_renew_s=1.0, **overrides
            )
            redis = command_client(settings, node_id)
            stack.push_async_callback(redis.aclose)
            node = Node(price_relay_for(settings, redis, node_id))
            await node.relay.start()
            stack.push_async_callback(node.relay.stop)
            return node

        yield make


def test_a_batch_keeps_the_exact_decimals() -> None:
    prices = {"AAPL": Decimal("187.4200"), "BRK.B": Decimal("1E+3"), "X": Decimal("0.000001")}
    node, epoch, decoded = decode_batch(encode_batch("node-a", 7, prices))
    assert (node, epoch) == ("node-a", 7)
    assert {s: str(p) for s, p in decoded.items()} == {s: str(p) for s, p in prices.items()}
    for bad in (
        b"nope",
        b"[]",
        b'{"n":"a","e":1,"p":{"A":1.5}}',
        b'{"n":"a","e":1,"p":{"A":"NaN"}}',
    ):
        with pytest.raises(BadBatch):
            decode_batch(bad)


async def test_the_union_adds_up_every_nodes_symbols(nodes: Callable[..., Any]) -> None:
    a, b, c = await nodes("node-a"), await nodes("node-b"), await nodes("node-c")
    a.relay.want({"AAPL": 2, "MSFT": 1})
    b.relay.want({"AAPL": 1, "NVDA": 1})
    c.relay.want({})
    expected = {"AAPL": 3, "MSFT": 1, "NVDA": 1}
    for node in (a, b, c):
        await eventually(lambda n=node: n.relay.wanted() == expected, what="the union")
    assert a.union_changes >= 1
    assert a.relay.status()["nodes"] == 3

    # A change is seen on the next read, well before the periodic one (hinted on a channel).
    b.relay.want({"NVDA": 1, "KO": 4})
    await eventually(
        lambda: a.relay.wanted() == {"AAPL": 2, "MSFT": 1, "NVDA": 1, "KO": 4},
        timeout_s=0.8,
        what="the hinted change",
    )

    # A graceful stop withdraws the node's symbols at once.
    await b.relay.stop()
    await eventually(lambda: c.relay.wanted() == {"AAPL": 2, "MSFT": 1}, what="b withdrawn")


async def test_a_node_that_stops_writing_lapses_with_its_ttl(
    nodes: Callable[..., Any], redis_url: str
) -> None:
    watcher = await nodes("node-w")
    settings = cluster_settings(redis_url, node_id="node-q")
    redis = command_client(settings, "node-q")
    # Its set lives 0.5 s and is rewritten only every 30 s: after the first write the node is,
    # to the others, one that died without stopping.
    quiet = RedisPriceRelay(
        redis,
        pubsub_pool(settings, "node-q"),
        node_id="node-q",
        entry_ttl_s=0.5,
        refresh_s=30,
        timeout_s=1,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    quiet.subscribe(lambda _: None, lambda: None)
    quiet.want({"AAPL": 1})
    await quiet.start()
    try:
        await eventually(lambda: watcher.relay.wanted() == {"AAPL": 1}, what="the quiet set")
        await eventually(lambda: watcher.relay.wanted() == {}, what="the quiet set lapsed")
    finally:
        await quiet.stop()
        await redis.aclose()


async def test_ticks_reach_every_node_and_an_older_epoch_is_dropped(
    nodes: Callable[..., Any],
) -> None:
    holder, other, old = await nodes("node-a"), await nodes("node-b"), await nodes("node-c")
    await eventually(lambda: all(n.relay.status()["connected"] for n in (holder, other, old)))
    holder.relay.publish({"AAPL": Decimal("187.42")}, 2)
    # The holder's own accounts get it at once, without a round trip through Redis.
    assert holder.batches == [{"AAPL": Decimal("187.42")}]
    await eventually(lambda: other.latest() == {"AAPL": Decimal("187.42")}, what="relayed tick")
    await eventually(lambda: old.latest() == {"AAPL": Decimal("187.42")})

    # A holder that lost the lease (epoch 1) and still sends: nobody takes it.
    old.relay.publish({"AAPL": Decimal("1.00")}, 1)
    holder.relay.publish({"MSFT": Decimal("401.5")}, 2)
    await eventually(lambda: other.latest().get("MSFT") == Decimal("401.5"))
    await eventually(lambda: holder.relay.status()["staleBatches"] == 1)
    assert other.latest()["AAPL"] == Decimal("187.42")
    assert holder.batches[-1] == {"MSFT": Decimal("401.5")}
    assert other.relay.status()["staleBatches"] == 1
    assert holder.batches.count({"MSFT": Decimal("401.5")}) == 1  # its own, once


def _accounts_file(tmp_path: Path, name: str, *accounts: tuple[str, str, str]) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        "\n".join(
            f'[[accounts]]\nusername = "{user}"\napi_key = "{key}"\nsecret_key = "{secret}"\n'
            for user, key, secret in accounts
        )
    )
    return path


async def test_two_nodes_get_the_prices_of_their_symbols_from_one_feed(
    redis_url: str, tmp_path: Path
) -> None:
    """Node A consumes alice's account (AAPL) and runs the feed; node B consumes bob's (MSFT)
    and has no market-data connection: B's symbol is followed all the same, and its ticks
    reach B through Redis."""
    alice, bob = ("alice", "PKALICE", "alice-secret"), ("bob", "PKBOB", "bob-secret")
    users = {"alice": "user-alice", "bob": "user-bob"}

    async def lookup(username: str) -> str | None:
        return users.get(username)

    async with AsyncExitStack() as stack:
        sim = SimulatedBroker(tick_interval_s=0, order_interval_s=0, seed=3)
        sim.add_account(alice[1], alice[2], label="alice")
        sim.add_account(bob[1], bob[2], label="bob")
        await sim.start()
        stack.push_async_callback(sim.stop)
        flush = command_client(cluster_settings(redis_url), "flush")
        await flush.flushall()
        await flush.aclose()

        bridges: dict[str, BrokerBridge] = {}
        events: dict[str, list[Event]] = {}
        for node_id, account in (("node-a", alice), ("node-b", bob)):
            settings: Settings = cluster_settings(
                redis_url,
                node_id=node_id,
                lease_ttl_s=5.0,
                lease_renew_s=1.0,
                broker="alpaca",
                accounts_file=_accounts_file(tmp_path, node_id, account),
                alpaca_api_url=sim.base_url,
                alpaca_stream_url=sim.trading_stream_url,
                alpaca_data_stream_url=sim.data_stream_url,
                alpaca_backoff_initial_s=0.05,
                alpaca_backoff_max_s=0.2,
                price_coalesce_ms=10,
            )
            bus = InProcessBus()
            await bus.start()
            stack.push_async_callback(bus.close)
            seen: list[Event] = []
            bus.subscribe("position:updated", seen.append)
            redis = command_client(settings, node_id)
            stack.push_async_callback(redis.aclose)
            bridge = BrokerBridge(
                settings, bus, lookup, price_relay=price_relay_for(settings, redis, node_id)
            )
            await bridge.start()
            stack.push_async_callback(bridge.stop)
            await asyncio.wait_for(bridge.wait_ready(), 10)
            bridges[node_id], events[node_id] = bridge, seen

        a, b = bridges["node-a"], bridges["node-b"]
        await a.place_order("alice", "AAPL", "buy", Decimal(1))
        await b.place_order("bob", "MSFT", "buy", Decimal(2))

        # Without the prices lease neither node has a connection: both say so.
        assert a.price_stream_status()["status"] == "relayed"
        a.start_prices(1)
        await asyncio.wait_for(sim.wait_data_subscription("AAPL"), 10)
        await asyncio.wait_for(sim.wait_data_subscription("MSFT"), 10)
        assert sim.data_connections(alice[1]) == 1
        assert sim.data_connections(bob[1]) == 0
        assert b.price_stream_status()["status"] == "relayed"

        def price_at(node: str, symbol: str, price: str) -> Callable[[], bool]:
            return lambda: any(
                e.payload.get("symbol") == symbol and e.payload.get("currentPrice") == price
                for e in events[node]
            )

        sim.set_price("AAPL", Decimal("201.50"))
        sim.set_price("MSFT", Decimal("401.25"))
        await eventually(price_at("node-a", "AAPL", "201.5"), what="AAPL on node A")
        await eventually(price_at("node-b", "MSFT", "401.25"), what="MSFT on node B")
        status = a.price_stream_status()
        assert (status["status"], status["symbols"], status["epoch"]) == (
            "running",
            ["AAPL", "MSFT"],
            1,
        )
        assert b.price_stream_status()["relay"]["batchesReceived"] >= 1

        # The lease goes to node B: A closes its connection cleanly, B opens the one slot.
        await a.stop_prices("lease released")
        b.start_prices(2)
        await asyncio.wait_for(sim.wait_data_subscription("AAPL"), 10)
        assert (sim.data_connections(alice[1]), sim.data_connections(bob[1])) == (0, 1)
        assert a.price_stream_status()["status"] == "relayed"
        sim.set_price("AAPL", Decimal("202.75"))
        await eventually(price_at("node-a", "AAPL", "202.75"), what="AAPL on A from B's feed")
