"""CONSUME_BROKER_STREAMS=false: a node that leaves every account's streams to another node of
the cluster, yet places test trades through each account's REST client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from bridge_support import KEY, SECRET, AlpacaBridgeFor, is_, started

from alpaca_bridge.simulator import SimulatedBroker


@pytest.fixture
async def broker() -> AsyncIterator[SimulatedBroker]:
    sim = SimulatedBroker(tick_interval_s=0.05, order_interval_s=0, seed=5)
    sim.add_account(KEY, SECRET, label="alice")
    await sim.start()
    yield sim
    await sim.stop()


async def test_a_standby_node_streams_nothing_and_still_trades(
    broker: SimulatedBroker, alpaca_bridge_for: AlpacaBridgeFor, collected: Any, log_lines: Any
) -> None:
    bridge = alpaca_bridge_for(consume_broker_streams=False)
    await bridge.start()
    await asyncio.wait_for(bridge.wait_ready(), 5)
    assert bridge.ready
    [status] = bridge.accounts_status()
    assert status["userId"] is not None
    assert status == {
        "username": "alice",
        "userId": status["userId"],
        "status": "standby",
        "lastEventAt": None,
        "lastReconciledAt": None,
        "reconnects": 0,
        "mode": "alpaca",
        "paper": True,
        "health": "ok",
        "lastError": None,
    }
    assert bridge.broker_health() == {"ready": True, "accounts": {"alice": "ok"}}
    assert bridge.price_stream_status()["status"] == "idle"
    assert log_lines.matching(
        "INFO [AlpacaStream] This node consumes no broker streams (CONSUME_BROKER_STREAMS=false)"
    )

    order = await bridge.place_order("alice", "AAPL", "buy", Decimal(2))
    assert order["userId"] == status["userId"]
    [fill] = await broker.wait_trade_updates(KEY, 1, event="fill")
    assert fill["data"]["order"]["id"] == order["orderId"]
    # The fill went out on the broker's trade_updates, but nobody here listens: no stream
    # socket, no price subscription, and nothing (not even a reconciliation) on the bus.
    assert broker.trading_connections(KEY) == 0
    assert bridge.price_stream_status()["symbols"] == []
    assert collected.events == []


async def test_the_consuming_node_delivers_a_standby_nodes_trade(
    broker: SimulatedBroker, alpaca_bridge_for: AlpacaBridgeFor, collected: Any
) -> None:
    consumer = alpaca_bridge_for()
    await started(consumer, collected)
    standby = alpaca_bridge_for(consume_broker_streams=False)
    await standby.start()
    await asyncio.wait_for(standby.wait_ready(), 5)

    order = await standby.place_order("alice", "MSFT", "buy", Decimal(1))
    trade = await collected.wait_for(is_("trade:executed", orderId=order["orderId"]))
    assert trade.payload["positionQty"] == "1"
    assert broker.trading_connections(KEY) == 1
    assert [a["status"] for a in consumer.accounts_status()] == ["connected"]
    assert [a["status"] for a in standby.accounts_status()] == ["standby"]
