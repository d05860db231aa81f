"""The bridge against a misbehaving broker: updates out of order, poison records, REST that
fails or hangs. Real alpaca-py REST and our consumer against the simulated broker on loopback;
the portfolio the bus describes must end equal to what the broker's REST says."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from bridge_support import (
    KEY,
    AlpacaBridgeFor,
    alpaca_settings,
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
from app.broker import BrokerUnavailable, OrderRejected
from app.events import Event
from app.factory import create_app
from app.keys import BROKER_KEY, STORE_KEY
from app.store import Store


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
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
    log_lines: Any,
) -> None:
    bridge = alpaca_bridge_for()
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


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_partial_fills_scrambled_and_repeated_still_match_rest(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
    seed: int,
) -> None:
    bridge = alpaca_bridge_for()
    user_id = await started(bridge, collected)
    broker.set_partial_fills(True)
    broker.withhold_trade_updates(KEY)
    plan = [("AAPL", "buy", 4, "100"), ("AAPL", "buy", 6, "103"), ("MSFT", "buy", 3, "50")]
    plan += [("AAPL", "sell", 5, "101.5"), ("MSFT", "sell", 1, "49")]
    for done, (symbol, side, qty, price) in enumerate(plan, start=1):
        broker.set_price(symbol, Decimal(price))
        await broker.submit_order(KEY, symbol, side, Decimal(qty))
        await asyncio.wait_for(broker.wait_trade_updates(KEY, done, event="fill"), 5)
    rng = random.Random(seed)

    def scramble(kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
        scrambled = kept + rng.sample(kept, 4)
        rng.shuffle(scrambled)
        return scrambled

    sent = broker.release_trade_updates(KEY, scramble)
    for execution in {u["data"]["execution_id"] for u in sent if "fill" in u["data"]["event"]}:
        await collected.wait_for(is_("trade:executed", tradeId=execution))
    await buy(bridge, collected, "TSLA", 1)  # in order again, and everything before it is in
    shown, truth = bus_state(collected.events, user_id), rest_state(broker, KEY)
    # Buying power is an estimate between snapshots (a snapshot taken while the TSLA order was
    # open holds its reservation); everything else must be exact.
    del shown["buyingPower"], truth["buyingPower"]
    assert shown == truth


async def test_an_order_placed_long_before_a_gap_and_filled_in_it_is_read_again(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
) -> None:
    bridge = alpaca_bridge_for(alpaca_auth_timeout_s=0.3)
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


def new_order_update(order_id: str) -> dict[str, Any]:
    """A ``new`` event exactly as Alpaca sends it, but for an order id of our choosing."""
    stamp = "2026-01-05T15:00:00.123456789Z"
    return {
        "stream": "trade_updates",
        "data": {
            "event": "new",
            "timestamp": stamp,
            "order": {
                "id": order_id,
                "client_order_id": "cid-poison",
                "created_at": stamp,
                "updated_at": stamp,
                "submitted_at": stamp,
                "symbol": "AAPL",
                "asset_class": "us_equity",
                "qty": "1",
                "filled_qty": "0",
                "type": "limit",
                "order_type": "limit",
                "limit_price": "1",
                "side": "buy",
                "time_in_force": "day",
                "status": "new",
                "extended_hours": False,
            },
        },
    }


async def test_an_order_id_that_is_not_a_uuid_is_skipped_once_and_gaps_still_heal(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
    log_lines: Any,
) -> None:
    bridge = alpaca_bridge_for(alpaca_auth_timeout_s=0.3)
    user_id = await started(bridge, collected)
    broker.send_trading_frame(KEY, new_order_update("not-a-uuid"))
    await collected.wait_for(is_("order:updated", orderId="not-a-uuid", status="new"))
    for gap in (1, 2):
        await keep_stream_down(broker)
        missed = await broker.submit_order(KEY, "MSFT", "buy", Decimal(1))
        await asyncio.wait_for(broker.wait_trade_updates(KEY, gap, event="fill"), 5)
        broker.set_auth_behaviour(KEY, "ok")
        await collected.wait_for(
            is_("order:updated", orderId=missed["id"], status="filled"), within=10
        )
    [warning] = log_lines.matching("[AlpacaStream] Skipped a broker record")
    assert " WARNING " in warning
    assert "record=order, id=not-a-uuid, reason=" in warning
    assert not log_lines.matching("Reconciliation failed")
    shown, truth = bus_state(collected.events, user_id), rest_state(broker, KEY)
    assert (shown["positions"], shown["cash"]) == (truth["positions"], truth["cash"])


def with_rows(*extra: Any) -> Callable[[Any], Any]:
    """A REST rewrite adding rows to list answers (single-object answers pass unchanged)."""
    return lambda body: [*body, *extra] if isinstance(body, list) else body


async def test_poison_rest_records_are_skipped_with_one_warning_each(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
    log_lines: Any,
) -> None:
    bridge = alpaca_bridge_for()
    user_id = await started(bridge, collected)
    await buy(bridge, collected, "TSLA", 2)
    poison_orders = with_rows(
        {
            "id": "0b7c5a4e-5d1f-4c3e-9a8b-7f6e5d4c3b2a",
            "symbol": "AAPL",
            "side": "buy",
            "status": "new",
            "filled_qty": "lots",
        },
        {"symbol": "AAPL", "side": "buy", "status": "new"},
    )
    broker.rewrite_rest(poison_orders, path="/v2/orders")

    def poison_positions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [row | {"qty": "two"} if row["symbol"] == "TSLA" else row for row in rows]

    broker.rewrite_rest(poison_positions, path="/v2/positions")
    broker.rewrite_rest(lambda account: account | {"cash": "NaN"}, path="/v2/account")
    for reconnect in (1, 2):
        broker.drop_trading_streams(KEY, how="abort")
        await asyncio.wait_for(
            log_lines.wait_for("[AlpacaStream] Reconciled account", count=1 + reconnect), 10
        )
    skipped = log_lines.matching("WARNING [AlpacaStream] Skipped a broker record")
    assert sorted(line.split("record=")[1].split(",")[0] for line in skipped) == [
        "account",
        "order",
        "order",
        "position",
    ], skipped
    assert not log_lines.matching("Reconciliation failed")
    assert not log_lines.matching("Reconciliation crashed")
    # What could not be read is left as it was, not taken for "gone".
    assert not collected.of_type("position:closed")
    broker.clear_rest_faults()
    await buy(bridge, collected, "TSLA", 1)
    assert bus_state(collected.events, user_id) == rest_state(broker, KEY)


async def test_hung_rest_is_timed_out_logged_and_shown_while_fills_keep_flowing(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
    log_lines: Any,
) -> None:
    bridge = alpaca_bridge_for(broker_rest_timeout_s=0.3)
    user_id = await started(bridge, collected)
    assert bridge.accounts_status()[0]["health"] == "ok"
    broker.hang_rest(api_key=KEY, method="GET")
    broker.drop_trading_streams(KEY, how="abort")  # the reconnect's reconciliation hangs
    await asyncio.wait_for(broker.wait_rest_hanging(1), 5)
    order = await broker.submit_order(KEY, "AAPL", "buy", Decimal(2))
    await collected.wait_for(is_("trade:executed", orderId=order["id"]), within=2)
    failure = await asyncio.wait_for(log_lines.wait_for("Reconciliation failed"), 2)
    assert "error=RestTimeout: no answer within 0.3s: GET /v2/" in failure
    [status] = bridge.accounts_status()
    assert (status["status"], status["health"]) == ("connected", "rest_timeout")
    assert status["lastError"].startswith("RestTimeout: no answer within 0.3s")
    assert bridge.broker_health() == {"ready": False, "accounts": {"alice": "rest_timeout"}}

    broker.clear_rest_faults()
    await asyncio.wait_for(log_lines.wait_for("Reconciled account", count=2), 10)
    assert bridge.accounts_status()[0]["health"] == "ok"
    assert bridge.broker_health()["ready"]
    assert bus_state(collected.events, user_id) == rest_state(broker, KEY)


async def test_a_test_trade_against_hung_rest_is_unavailable_within_the_timeout(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
) -> None:
    bridge = alpaca_bridge_for(broker_rest_timeout_s=0.3)
    await started(bridge, collected)
    broker.hang_rest(method="POST", path="/v2/orders")
    loop = asyncio.get_running_loop()
    begun = loop.time()
    with pytest.raises(BrokerUnavailable, match=r"within 0\.3s.*may still be placed") as failed:
        await asyncio.wait_for(bridge.place_order("alice", "AAPL", "buy", Decimal(1)), 5)
    assert loop.time() - begun < 1.0
    assert "clientOrderId=" in str(failed.value)


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_a_broker_error_on_an_order_is_unavailable_not_a_rejection(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
    status: int,
) -> None:
    bridge = alpaca_bridge_for(broker_rest_timeout_s=2)
    await started(bridge, collected)
    broker.fail_rest(status, method="POST", path="/v2/orders")
    loop = asyncio.get_running_loop()
    begun = loop.time()
    with pytest.raises(BrokerUnavailable, match=f"HTTP {status}"):
        await bridge.place_order("alice", "AAPL", "buy", Decimal(1))
    assert loop.time() - begun < 1.0, "no retry sleeps"
    broker.clear_rest_faults()
    with pytest.raises(OrderRejected, match="buying power"):  # the broker's own refusal (403)
        await bridge.place_order("alice", "AAPL", "buy", Decimal(1_000_000))


async def test_health_reports_bad_credentials_and_failing_reconciliation(
    broker: SimulatedBroker,
    alpaca_bridge_for: AlpacaBridgeFor,
    collected: Any,
    log_lines: Any,
) -> None:
    unauthorized = alpaca_bridge_for(alpaca_secret_key="wrong")
    await unauthorized.start()
    await asyncio.wait_for(unauthorized.wait_ready(), 5)
    assert unauthorized.accounts_status()[0]["health"] == "unauthorized"
    assert unauthorized.broker_health() == {"ready": False, "accounts": {"alice": "unauthorized"}}
    await unauthorized.stop()

    broker.fail_rest(500, path="/v2/account")
    failing = alpaca_bridge_for()
    await failing.start()
    # Settled (a node serving browsers stays in rotation), but the broker is not ready.
    await asyncio.wait_for(failing.wait_ready(), 5)
    [status] = failing.accounts_status()
    assert status["health"] == "reconcile_failed"
    assert "HTTP 500" in status["lastError"] or "500" in status["lastError"]
    assert failing.broker_health()["ready"] is False


async def test_the_service_answers_503_for_broker_faults_and_readyz_reports_the_broker(
    aiohttp_client: Any,
    broker: SimulatedBroker,
    tmp_path: Path,
    users_db: Path,
    log_lines: Any,
) -> None:
    shutil.copy(users_db, tmp_path / "users.db")
    app = create_app(alpaca_settings(broker, tmp_path, broker_rest_timeout_s=0.3))
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[BROKER_KEY].wait_ready(), 5)
    store = app[STORE_KEY]
    admin = await store.ensure_user("root", "root-password", is_admin=True)
    headers = {
        "Cookie": f"session={await store.create_session(admin.id, 600)}",
        "Origin": str(client.make_url("")).rstrip("/"),
        "Sec-Fetch-Site": "same-origin",
    }
    trade = {"username": "alice", "symbol": "AAPL", "side": "buy", "qty": 1}

    broker.fail_rest(500, method="POST", path="/v2/orders")
    failed = await client.post("/api/admin/test-trade", json=trade, headers=headers)
    assert failed.status == 503
    assert (await failed.json())["error"] == "broker_unavailable"

    broker.clear_rest_faults()
    broker.hang_rest(method="POST", path="/v2/orders")
    loop = asyncio.get_running_loop()
    begun = loop.time()
    hung = await client.post("/api/admin/test-trade", json=trade, headers=headers)
    assert loop.time() - begun < 1.0
    assert hung.status == 503
    assert "may still be placed" in (await hung.json())["message"]

    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["broker"] == {"ready": True, "accounts": {"alice": "ok"}}
    broker.clear_rest_faults()
    broker.fail_rest(500, method="GET")
    broker.drop_trading_streams(KEY, how="abort")
    await asyncio.wait_for(log_lines.wait_for("Reconciliation failed"), 5)
    # Browsers are still served: the node stays in rotation, and says what is wrong.
    degraded = await client.get("/readyz")
    assert degraded.status == 200
    body = await degraded.json()
    assert body["ready"] is True
    assert body["broker"] == {"ready": False, "accounts": {"alice": "reconcile_failed"}}


MANY = 120  # past aiohttp's default pool of 100 connections per session


@pytest.fixture(scope="session")
def many_users_db(tmp_path_factory: pytest.TempPathFactory, users_db: Path) -> Path:
    """``MANY`` traders; their rows reuse alice's password hash (argon2 is slow on purpose)."""
    path = tmp_path_factory.mktemp("many") / "users.db"
    shutil.copy(users_db, path)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for n in range(MANY):
            db.execute(
                "INSERT INTO users (id, username, password_hash, is_admin, created_at) "
                "SELECT ?, ?, password_hash, 0, created_at FROM users WHERE username = 'alice'",
                (f"user-t{n}", f"trader{n:03d}"),
            )
    return path


async def test_more_than_a_hundred_accounts_all_connect_and_reconcile(
    tmp_path: Path,
    many_users_db: Path,
    bus: Any,
    collected: Any,
) -> None:
    async with SimulatedBroker(tick_interval_s=0, order_interval_s=0, seed=9) as sim:
        bridge, store = await many_accounts_bridge(sim, tmp_path, many_users_db, bus, MANY)
        try:
            await asyncio.wait_for(bridge.wait_ready(), 30)
            statuses = bridge.accounts_status()
            assert len(statuses) == MANY
            assert {(s["status"], s["health"]) for s in statuses} == {("connected", "ok")}
            assert bridge.broker_health()["ready"]
            last = await sim.submit_order(f"PKT{MANY - 1:03d}", "AAPL", "buy", Decimal(1))
            trade = await collected.wait_for(is_("trade:executed", orderId=last["id"]))
            assert trade.user_id == f"user-t{MANY - 1}"
        finally:
            await bridge.stop()
            await store.close()


async def many_accounts_bridge(
    sim: SimulatedBroker,
    tmp_path: Path,
    many_users_db: Path,
    bus: Any,
    count: int,
    **values: Any,
) -> tuple[BrokerBridge, Store]:
    """A started bridge on ``count`` simulated accounts of traders from ``many_users_db``."""
    entries = []
    for n in range(count):
        sim.add_account(f"PKT{n:03d}", f"secret-{n}", label=f"trader{n:03d}")
        entries.append(
            f'[[accounts]]\nusername = "trader{n:03d}"\n'
            f'api_key = "PKT{n:03d}"\nsecret_key = "secret-{n}"\n'
        )
    accounts_file = tmp_path / "accounts.toml"
    accounts_file.write_text("\n".join(entries))
    shutil.copy(many_users_db, tmp_path / "users.db")
    settings = alpaca_settings(
        sim,
        tmp_path,
        **(
            {"alpaca_api_key": None, "alpaca_secret_key": None, "accounts_file": accounts_file}
            | values
        ),
    )
    store = Store(tmp_path / "users.db")
    await store.open()
    bridge = BrokerBridge(settings, bus, users_in(store))
    await bridge.start()
    return bridge, store


async def test_a_test_trade_is_not_queued_behind_reconciliations_hung_on_rest(
    tmp_path: Path, many_users_db: Path, bus: Any, log_lines: Any
) -> None:
    count = 40  # more hung reconciliations than any default worker pool has threads
    async with SimulatedBroker(tick_interval_s=0, order_interval_s=0, seed=9) as sim:
        bridge, store = await many_accounts_bridge(
            sim, tmp_path, many_users_db, bus, count, broker_rest_timeout_s=0.5
        )
        try:
            await asyncio.wait_for(bridge.wait_ready(), 30)
            sim.hang_rest(method="GET")  # every account's reconciliation hangs...
            sim.drop_trading_streams(how="abort")
            await asyncio.wait_for(sim.wait_rest_hanging(count), 10)
            loop = asyncio.get_running_loop()
            begun = loop.time()
            order = await bridge.place_order("trader007", "AAPL", "buy", Decimal(1))
            assert loop.time() - begun < 0.5, "...but placing an order does not"
            assert order["status"] in ("accepted", "new")
        finally:
            await bridge.stop()
            await store.close()
