"""The broker bridge end to end: real alpaca-py clients and our consumer against the simulated
broker over real sockets, observed through the bus and the log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from bridge_support import (
    KEY,
    SECRET,
    AlpacaBridgeFor,
    bus_state,
    buy,
    is_,
    keep_stream_down,
    rest_state,
    started,
    users_in,
)

from alpaca_bridge.service import BrokerBridge
from alpaca_bridge.simulator import SimulatedBroker
from app.broker import DemoLogin, OrderRejected, UnknownAccount
from app.bus import InProcessBus
from app.store import Store
from config.settings import Settings


@pytest.fixture
async def broker() -> AsyncIterator[SimulatedBroker]:
    sim = SimulatedBroker(tick_interval_s=0, order_interval_s=0, seed=3)
    sim.add_account(KEY, SECRET, label="alice")
    sim.add_account("PKBOB", "bob-secret", label="bob")
    await sim.start()
    yield sim
    await sim.stop()


async def test_start_connects_reconciles_and_reports_status(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
    log_lines: Any,
) -> None:
    bridge = alpaca_bridge_for()
    user_id = await started(bridge, collected)
    await asyncio.wait_for(bridge.wait_ready(), 5)
    assert bridge.ready
    [status] = bridge.accounts_status()
    assert status["lastReconciledAt"].endswith("Z")
    assert status == {
        "username": "alice",
        "userId": user_id,
        "status": "connected",
        "lastEventAt": None,
        "lastReconciledAt": status["lastReconciledAt"],
        "reconnects": 0,
        "mode": "alpaca",
        "paper": True,
        "health": "ok",
        "lastError": None,
    }
    assert bridge.broker_health() == {"ready": True, "accounts": {"alice": "ok"}}
    assert bridge.simulator is None
    assert bridge.demo_logins == ()
    assert bridge.price_stream_status()["status"] == "idle"
    assert log_lines.matching("INFO [AlpacaStream] Bridge started: mode=alpaca, accounts=1")
    assert log_lines.matching("[AlpacaStream] Connected to trade_updates stream: account=alice")
    account = collected.of_type("account:updated")[0].payload
    assert account["cash"] == "100000.00"
    assert account["equity"] == "100000.00"


async def test_place_order_round_trip_emits_the_trade(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
    log_lines: Any,
) -> None:
    bridge = alpaca_bridge_for()
    user_id = await started(bridge, collected)
    order = await bridge.place_order("Alice", "aapl", "buy", Decimal("3"))
    assert (order["symbol"], order["side"], order["qty"], order["userId"]) == (
        "AAPL",
        "buy",
        "3",
        user_id,
    )
    trade = await collected.wait_for(is_("trade:executed", orderId=order["orderId"]))
    assert trade.payload["qty"] == "3"
    assert trade.payload["positionQty"] == "3"
    assert trade.payload["event"] == "fill"
    position = await collected.wait_for(is_("position:updated", symbol="AAPL"))
    assert position.payload["qty"] == "3"
    assert position.payload["avgEntryPrice"] == trade.payload["price"]
    statuses = [e.payload["status"] for e in collected.of_type("order:updated")]
    assert statuses[-2:] == ["new", "filled"]
    assert log_lines.matching(
        "INFO [AlpacaStream] Emitted trade:executed event: "
        f"tradeId={trade.payload['tradeId']}, symbol=AAPL"
    )
    assert all(e.user_id == user_id for e in collected.events)
    assert bridge.accounts_status()[0]["lastEventAt"] is not None


async def test_place_order_errors_are_clear(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
) -> None:
    bridge = alpaca_bridge_for()
    await started(bridge, collected)
    with pytest.raises(UnknownAccount, match="nobody"):
        await bridge.place_order("nobody", "AAPL", "buy", Decimal(1))
    with pytest.raises(OrderRejected, match="buying power"):
        await bridge.place_order("alice", "AAPL", "buy", Decimal(1_000_000))
    with pytest.raises(OrderRejected, match="side"):
        await bridge.place_order("alice", "AAPL", "hold", Decimal(1))
    with pytest.raises(OrderRejected, match="positive"):
        await bridge.place_order("alice", "AAPL", "buy", Decimal(0))


async def test_price_ticks_move_unrealized_pnl_and_equity(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
    log_lines: Any,
) -> None:
    bridge = alpaca_bridge_for()
    await started(bridge, collected)
    trade = await buy(bridge, collected, "AAPL", 10)
    target = (Decimal(trade.payload["price"]) + Decimal("5.25")).quantize(Decimal("0.01"))
    await asyncio.wait_for(broker.wait_data_subscription("AAPL"), 5)
    broker.set_price("AAPL", target)
    tick = await collected.wait_for(
        lambda e: e.quiet and is_("position:updated", currentPrice=str(target))(e)
    )
    assert tick.payload["unrealizedPnl"] == "52.50"
    assert tick.payload["marketValue"] == str(target * 10)
    account = await collected.wait_for(lambda e: e.quiet and e.type == "account:updated")
    assert Decimal(account.payload["equity"]) == Decimal(broker.account(KEY)["equity"])
    assert log_lines.matching('DEBUG [EventBus] eventBus.emit("position:updated")')
    prices = bridge.price_stream_status()
    assert (prices["status"], prices["symbols"]) == ("running", ["AAPL"])
    assert prices["ticks"] >= 1
    # Closing the position ends the subscription.
    await bridge.place_order("alice", "AAPL", "sell", Decimal(10))
    await asyncio.wait_for(broker.wait_data_subscription("AAPL", subscribed=False), 5)


async def test_duplicate_executions_and_heartbeats_are_ignored(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
) -> None:
    bridge = alpaca_bridge_for()
    user_id = await started(bridge, collected)
    first = await buy(bridge, collected, "AAPL", 2)
    broker.send_trading_heartbeat(KEY)
    assert broker.resend_last_fill(KEY) is not None
    await buy(bridge, collected, "AAPL", 1)  # everything sent before it has been consumed
    trades = [e.payload["tradeId"] for e in collected.of_type("trade:executed")]
    assert trades.count(first.payload["tradeId"]) == 1
    assert bus_state(collected.events, user_id) == rest_state(broker, KEY)


async def test_reconciliation_after_a_gap_restores_the_broker_truth(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
    log_lines: Any,
) -> None:
    bridge = alpaca_bridge_for(alpaca_auth_timeout_s=0.3)
    user_id = await started(bridge, collected)
    await buy(bridge, collected, "AAPL", 5)
    await buy(bridge, collected, "TSLA", 2)

    await keep_stream_down(broker)  # while orders fill
    fills_before = sum(u["data"]["event"] == "fill" for u in broker.trade_updates(KEY))
    gap_orders = [
        await broker.submit_order(KEY, symbol, side, Decimal(qty))
        for symbol, side, qty in [
            ("MSFT", "buy", 2),
            ("AAPL", "sell", 5),
            ("TSLA", "buy", 1),
            ("NVDA", "buy", 1),
        ]
    ]
    await asyncio.wait_for(broker.wait_trade_updates(KEY, fills_before + 4, event="fill"), 5)
    broker.set_auth_behaviour(KEY, "ok")

    last = gap_orders[-1]["id"]
    await collected.wait_for(is_("order:updated", orderId=last, event="reconciled"), within=10)
    assert bus_state(collected.events, user_id) == rest_state(broker, KEY)
    await collected.wait_for(is_("position:closed", symbol="AAPL"))
    assert not [
        e
        for e in collected.of_type("trade:executed")
        if e.payload["orderId"] in {o["id"] for o in gap_orders}
    ]
    assert log_lines.matching(
        "[AlpacaStream] Disconnected from trade_updates stream: "
        "account=alice, reason=connection lost"
    )
    assert log_lines.matching("[AlpacaStream] Reconnecting in", "ms: account=alice, attempt=1")
    assert len(log_lines.matching("[AlpacaStream] Reconciled account: account=alice")) >= 2
    assert bridge.accounts_status()[0]["reconnects"] >= 1

    # And the stream carries on from there.
    after = await buy(bridge, collected, "AAPL", 1)
    assert after.payload["positionQty"] == "1"
    assert bus_state(collected.events, user_id) == rest_state(broker, KEY)


async def test_bad_credentials_are_reported_at_once(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    log_lines: Any,
) -> None:
    bridge = alpaca_bridge_for(alpaca_secret_key="wrong")
    await bridge.start()
    await asyncio.wait_for(bridge.wait_ready(), 5)
    [status] = bridge.accounts_status()
    assert status["status"] == "unauthorized"
    [line] = log_lines.matching("[AlpacaStream] Authentication failed")
    assert " ERROR [AlpacaStream] Authentication failed: account=alice, reason=" in line
    assert "wrong" not in "\n".join(log_lines.all())


async def test_an_account_without_a_user_is_reported(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    log_lines: Any,
) -> None:
    bridge = alpaca_bridge_for(alpaca_username="carol")
    await bridge.start()
    assert bridge.ready
    [status] = bridge.accounts_status()
    assert (status["username"], status["userId"], status["status"]) == (
        "carol",
        None,
        "unknown_user",
    )
    assert log_lines.matching("ERROR [AlpacaStream] No user for broker account", "account=carol")
    with pytest.raises(UnknownAccount, match="no user"):
        await bridge.place_order("carol", "AAPL", "buy", Decimal(1))


async def test_stop_closes_everything_within_a_second(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
    log_lines: Any,
) -> None:
    bridge = alpaca_bridge_for()
    await started(bridge, collected)
    await buy(bridge, collected, "AAPL", 1)  # so the price stream is running too
    loop = asyncio.get_running_loop()
    begun = loop.time()
    await bridge.stop()
    assert loop.time() - begun < 1.0
    assert [s["status"] for s in bridge.accounts_status()] == ["stopped"]
    assert bridge.price_stream_status()["status"] == "stopped"
    assert not bridge.ready
    assert log_lines.matching("INFO [AlpacaStream] Bridge stopped: mode=alpaca, accounts=1")
    await asyncio.wait_for(broker.wait_trading_disconnected(KEY), 5)


DEMO = (
    DemoLogin("admin", "admin-demo", is_admin=True),
    DemoLogin("alice", "alice-demo"),
    DemoLogin("bob", "bob-demo"),
)


def simulated_settings(tmp_path: Path, **values: Any) -> Settings:
    defaults: dict[str, Any] = {
        "broker": "simulated",
        "sim_order_interval_s": 0,
        "sim_tick_interval_ms": 60_000,
        "database_url": f"sqlite:///{tmp_path}/u.db",
    }
    return Settings(_env_file=None, **(defaults | values))


async def test_simulated_mode_gives_demo_users_accounts_and_leaves_the_users_to_the_app(
    tmp_path: Path,
    store: Store,
    bridge_for: Callable[[Settings], BrokerBridge],
    collected: Any,
) -> None:
    bridge = bridge_for(simulated_settings(tmp_path))
    assert bridge.demo_logins == DEMO
    await store.ensure_user("bob", "bob-demo")  # alice exists already; admin is left out
    await bridge.start()
    await asyncio.wait_for(bridge.wait_ready(), 5)
    assert bridge.mode == "simulated"
    assert bridge.simulator is not None
    assert await store.get_user_by_username("admin") is None  # the bridge never writes users
    statuses = {s["username"]: s for s in bridge.accounts_status()}
    assert {name: s["status"] for name, s in statuses.items()} == {
        "admin": "unknown_user",
        "alice": "connected",
        "bob": "connected",
    }
    order = await bridge.place_order("bob", "MSFT", "buy", Decimal(1))
    trade = await collected.wait_for(is_("trade:executed", orderId=order["orderId"]))
    assert trade.user_id == statuses["bob"]["userId"]
    assert all(
        e.user_id == statuses["bob"]["userId"]
        for e in collected.events
        if e.payload.get("symbol") == "MSFT"
    )


def test_demo_logins_leave_out_configured_accounts_and_other_modes(
    tmp_path: Path, bus: InProcessBus, store: Store
) -> None:
    def demo(**values: Any) -> tuple[str, ...]:
        bridge = BrokerBridge(simulated_settings(tmp_path, **values), bus, users_in(store))
        return tuple(login.username for login in bridge.demo_logins)

    assert demo() == ("admin", "alice", "bob")
    assert demo(alpaca_api_key=KEY, alpaca_secret_key=SECRET, alpaca_username="Alice") == (
        "admin",
        "bob",
    )
    assert demo(sim_demo_users=False) == ()
    assert demo(broker="alpaca", alpaca_api_key=KEY, alpaca_secret_key=SECRET) == ()
