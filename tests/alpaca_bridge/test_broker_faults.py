"""The bridge against a misbehaving broker: updates out of order, poison records, REST that
fails or hangs. Real alpaca-py REST and our consumer against the simulated broker on loopback;
the portfolio the bus describes must end equal to what the broker's REST says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from bridge_support import KEY, alpaca_settings, bus_state, buy, is_, rest_state, started

from alpaca_bridge.service import BrokerBridge
from alpaca_bridge.simulator import SimulatedBroker
from app.events import Event
from config.settings import Settings


@pytest.fixture
async def broker() -> AsyncIterator[SimulatedBroker]:
    sim = SimulatedBroker(tick_interval_s=0, order_interval_s=0, seed=5, fill_delay_s=0.01)
    sim.add_account(KEY, "alice-secret", label="alice")
    await sim.start()
    yield sim
    await sim.stop()


def quantities(events: list[Event], symbol: str) -> list[str]:
    return [
        e.payload["qty"]
        for e in events
        if e.type == "position:updated" and e.payload["symbol"] == symbol
    ]


async def test_fills_delivered_newest_first_converge_on_the_broker_truth(
    broker: SimulatedBroker,
    tmp_path: Path,
    bridge_for: Callable[[Settings], BrokerBridge],
    collected: Any,
    log_lines: Any,
) -> None:
    bridge = bridge_for(alpaca_settings(broker, tmp_path))
    user_id = await started(bridge, collected)
    broker.withhold_trade_updates(KEY)
    broker.set_price("AAPL", Decimal("100"))
    older = await broker.submit_order(KEY, "AAPL", "buy", Decimal(10))
    await asyncio.wait_for(broker.wait_trade_updates(KEY, 1, event="fill"), 5)
    broker.set_price("AAPL", Decimal("110"))
    await broker.submit_order(KEY, "AAPL", "buy", Decimal(5))
    await asyncio.wait_for(broker.wait_trade_updates(KEY, 2, event="fill"), 5)
    broker.release_trade_updates(KEY, lambda kept: kept[::-1])

    await collected.wait_for(is_("trade:executed", orderId=older["id"]))
    [row] = broker.positions(KEY)
    truth = (row["qty"], Decimal(row["avg_entry_price"]))
    await collected.wait_for(
        lambda e: (
            is_("position:updated", symbol="AAPL")(e)
            and (e.payload["qty"], Decimal(e.payload["avgEntryPrice"])) == truth
        )
    )
    shown = quantities(collected.events, "AAPL")
    assert "10" not in shown[shown.index("15") :], "the older fill moved the position back"
    assert log_lines.matching(
        "WARNING [AlpacaStream] Trade update contradicts the ledger; reconciling: account=alice"
    )
    await buy(bridge, collected, "MSFT", 1)  # in order again, and everything before it is in
    assert bus_state(collected.events, user_id) == rest_state(broker, KEY)


async def keep_stream_down(broker: SimulatedBroker) -> None:
    """Cut the account's stream and leave it down (auth goes unanswered) until auth is "ok"."""
    broker.set_auth_behaviour(KEY, "silent")
    broker.drop_trading_streams(KEY, how="abort")
    await asyncio.wait_for(broker.wait_trading_disconnected(KEY), 5)


async def test_an_order_placed_long_before_a_gap_and_filled_in_it_is_read_again(
    broker: SimulatedBroker,
    tmp_path: Path,
    bridge_for: Callable[[Settings], BrokerBridge],
    collected: Any,
) -> None:
    bridge = bridge_for(alpaca_settings(broker, tmp_path, alpaca_auth_timeout_s=0.3))
    user_id = await started(bridge, collected)
    broker.set_price("AAPL", Decimal(100))
    # Submitted "two minutes ago": GET /v2/orders?after=<gap start> does not list it.
    broker.set_clock_offset(-120)
    resting = await broker.submit_order(
        KEY, "AAPL", "buy", Decimal(3), type="limit", limit_price=Decimal(90)
    )
    broker.set_clock_offset(0)
    await collected.wait_for(is_("order:updated", orderId=resting["id"], status="new"))

    await keep_stream_down(broker)
    broker.set_price("AAPL", Decimal(85))
    await asyncio.wait_for(broker.wait_trade_updates(KEY, 1, event="fill"), 5)
    broker.set_auth_behaviour(KEY, "ok")

    filled = await collected.wait_for(
        is_("order:updated", orderId=resting["id"], status="filled"), within=10
    )
    assert filled.payload["event"] == "reconciled"
    assert bus_state(collected.events, user_id) == rest_state(broker, KEY)
