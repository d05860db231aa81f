"""Reconciliation of one account against the simulator's REST API (real alpaca-py client)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from alpaca_bridge.account_sync import AccountSync
from alpaca_bridge.accounts import BrokerAccount
from alpaca_bridge.reconcile import trading_client
from alpaca_bridge.simulator import SimulatedBroker
from alpaca_bridge.wire_parser import parse_trade_update
from app.backoff import Backoff
from app.bus import InProcessBus

KEY, SECRET = "PKSYNC", "sync-secret"


@pytest.fixture
async def broker() -> AsyncIterator[SimulatedBroker]:
    sim = SimulatedBroker(tick_interval_s=0, order_interval_s=0, seed=11, fill_delay_s=0.005)
    sim.add_account(KEY, SECRET, label="alice")
    await sim.start()
    yield sim
    await sim.stop()


def make_sync(api_url: str, bus: InProcessBus, settled: asyncio.Queue[None]) -> AccountSync:
    account = BrokerAccount("alice", SecretStr(KEY), SecretStr(SECRET))
    return AccountSync(
        account="alice",
        user_id="user-1",
        client=trading_client(account, api_url, timeout_s=5),
        bus=bus,
        backoff=Backoff(0.02, 0.05),
        on_symbols_changed=lambda: None,
        on_settled=lambda: settled.put_nowait(None),
    )


async def test_an_update_held_during_reconciliation_is_counted_once(
    broker: SimulatedBroker,
    bus: InProcessBus,
    collected: Any,
) -> None:
    order = await broker.submit_order(KEY, "AAPL", "buy", Decimal(4))
    [fill] = await asyncio.wait_for(broker.wait_trade_updates(KEY, 1, event="fill"), 5)
    settled: asyncio.Queue[None] = asyncio.Queue()
    sync = make_sync(broker.base_url, bus, settled)
    # The stream reconnects and delivers the fill while the snapshot (which has it) is fetched.
    sync.on_connected(None)
    sync.on_update(parse_trade_update(fill["data"]))
    assert sync.reconciling
    await asyncio.wait_for(settled.get(), 5)
    await collected.wait_for(lambda e: e.type == "trade:executed")
    assert sync.ledger.positions["AAPL"].qty == 4
    assert sync.ledger.cash == Decimal(broker.account(KEY)["cash"])
    assert sync.ledger.orders[order["id"]].status == "filled"
    trades = collected.of_type("trade:executed")
    assert [t.payload["tradeId"] for t in trades] == [fill["data"]["execution_id"]]
    await sync.stop()


async def test_rest_failures_are_logged_retried_and_reported(
    broker: SimulatedBroker,
    bus: InProcessBus,
    collected: Any,
    log_lines: Any,
) -> None:
    settled: asyncio.Queue[None] = asyncio.Queue()
    sync = make_sync("http://127.0.0.1:9", bus, settled)  # nothing listens on port 9
    sync.on_connected(None)
    failure = await asyncio.wait_for(log_lines.wait_for("Reconciliation failed"), 5)
    assert " ERROR [AlpacaStream] Reconciliation failed: account=alice, error=" in failure
    await asyncio.wait_for(settled.get(), 5)  # an attempt that failed settles too
    assert sync.reconciled_at is None
    assert sync.problem == "reconcile_failed"
    assert sync.last_error is not None
    assert "ConnectionError" in sync.last_error
    assert sync.reconciling
    await sync.stop()
    assert not sync.reconciling
    assert collected.events == []


async def test_after_a_first_success_updates_flow_live_while_rest_is_down(
    broker: SimulatedBroker,
    bus: InProcessBus,
    collected: Any,
    log_lines: Any,
) -> None:
    settled: asyncio.Queue[None] = asyncio.Queue()
    sync = make_sync(broker.base_url, bus, settled)
    sync.on_connected(None)
    await asyncio.wait_for(settled.get(), 5)
    await broker.stop()  # REST is gone; the stream (here: our calls) carries on
    sync.on_connected(time.time())
    await asyncio.wait_for(log_lines.wait_for("Reconciliation failed"), 5)
    sync.on_update(
        parse_trade_update(
            {
                "event": "fill",
                "execution_id": "exec-live",
                "price": "100",
                "qty": "2",
                "position_qty": "2",
                "timestamp": "2026-01-04T10:30:00Z",
                "order": {
                    "id": "o-live",
                    "symbol": "AAPL",
                    "side": "buy",
                    "status": "filled",
                    "filled_qty": "2",
                    "updated_at": "2026-01-04T10:30:00Z",
                },
            }
        )
    )
    assert sync.ledger.positions["AAPL"].qty == 2
    assert sync.reconciling
    await collected.wait_for(lambda e: e.type == "trade:executed")
    await sync.stop()


async def test_a_takeover_holds_live_updates_until_its_first_reconciliation_succeeds(
    broker: SimulatedBroker,
    bus: InProcessBus,
    collected: Any,
    log_lines: Any,
) -> None:
    """A new holder of an account (a cluster's takeover) publishes nothing built from an empty
    ledger: while REST fails, the fill it hears waits; once REST answers, the reconciled whole
    state goes out, then the fill, counted once."""
    order = await broker.submit_order(KEY, "AAPL", "buy", Decimal(3))
    [fill] = await asyncio.wait_for(broker.wait_trade_updates(KEY, 1, event="fill"), 5)
    broker.fail_rest(500, api_key=KEY)
    settled: asyncio.Queue[None] = asyncio.Queue()
    account = BrokerAccount("alice", SecretStr(KEY), SecretStr(SECRET))
    sync = AccountSync(
        account="alice",
        user_id="user-1",
        client=trading_client(account, broker.base_url, timeout_s=5),
        bus=bus,
        backoff=Backoff(0.02, 0.05),
        on_symbols_changed=lambda: None,
        on_settled=lambda: settled.put_nowait(None),
        hold_until_reconciled=True,
        gap_started_at=time.time() - 60,
    )
    sync.on_connected(None)
    await asyncio.wait_for(log_lines.wait_for("Reconciliation failed"), 5)
    sync.on_update(parse_trade_update(fill["data"]))
    await asyncio.wait_for(settled.get(), 5)
    assert collected.events == []  # nothing from an empty ledger

    broker.clear_rest_faults()
    await collected.wait_for(lambda e: e.type == "trade:executed")
    assert sync.ledger.positions["AAPL"].qty == 3
    assert sync.ledger.orders[order["id"]].status == "filled"
    kinds = [e.type for e in collected.events]
    assert kinds.index("position:updated") < kinds.index("trade:executed")
    assert len(collected.of_type("trade:executed")) == 1
    await sync.stop()
