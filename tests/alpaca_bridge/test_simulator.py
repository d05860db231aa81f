"""The simulated broker against the real alpaca-py clients, over real loopback sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest
from alpaca.common.exceptions import APIError
from alpaca.data.live import StockDataStream
from alpaca.data.models import Trade
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.models import TradeUpdate
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest
from alpaca.trading.stream import TradingStream

from alpaca_bridge.simulator import SimulatedBroker

KEY, SECRET = "PKTESTKEY1", "secret-one"
D = Decimal


@pytest.fixture
async def sim_broker() -> AsyncIterator[SimulatedBroker]:
    broker = SimulatedBroker(tick_interval_s=0, order_interval_s=0, seed=11, fill_delay_s=0.01)
    broker.add_account(KEY, SECRET, label="alice")
    await broker.start()
    yield broker
    await broker.stop()


@pytest.fixture
def sim_client(sim_broker: SimulatedBroker) -> TradingClient:
    return TradingClient(KEY, SECRET, paper=True, url_override=sim_broker.base_url)


async def call(fn: Any, *args: Any) -> Any:
    """alpaca-py's REST client is synchronous; keep it off the loop the broker runs on."""
    return await asyncio.to_thread(fn, *args)


@asynccontextmanager
async def running(stream: TradingStream | StockDataStream) -> AsyncIterator[None]:
    """Run an alpaca-py stream as a task, then stop it the way the bridge must."""
    task = asyncio.create_task(stream._run_forever())
    try:
        yield
    finally:
        await stream.stop_ws()
        _, pending = await asyncio.wait({task}, timeout=0.3)
        if pending:  # alpaca-py only notices a stop after its next frame or a 5 s recv timeout
            task.cancel()
            await asyncio.wait({task})
        await stream.close()


@asynccontextmanager
async def trade_updates(broker: SimulatedBroker) -> AsyncIterator[asyncio.Queue[Any]]:
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def on_update(message: Any) -> None:
        await received.put(message)

    stream = TradingStream(KEY, SECRET, raw_data=True, url_override=broker.trading_stream_url)
    stream.subscribe_trade_updates(on_update)
    async with running(stream):
        await asyncio.wait_for(broker.wait_trading_listener(KEY), 5)
        yield received


async def next_data(queue: asyncio.Queue[Any]) -> dict[str, Any]:
    message = await asyncio.wait_for(queue.get(), 5)
    assert message["stream"] == "trade_updates"
    TradeUpdate(**message["data"])  # alpaca-py's own strict model accepts every payload
    data: dict[str, Any] = message["data"]
    return data


def buy(symbol: str, qty: float) -> MarketOrderRequest:
    return MarketOrderRequest(
        symbol=symbol, qty=qty, side=OrderSide.BUY, time_in_force=TimeInForce.DAY
    )


async def test_market_order_streams_new_then_fill_and_rest_agrees(
    sim_broker: SimulatedBroker, sim_client: TradingClient
) -> None:
    sim_broker.set_price("AAPL", D("200.00"))
    async with trade_updates(sim_broker) as updates:
        order = await call(sim_client.submit_order, buy("AAPL", 3))
        new, filled = await next_data(updates), await next_data(updates)
    assert new["event"] == "new" and new["order"]["id"] == str(order.id)
    assert new["order"]["status"] == "new" and new["order"]["order_class"] == ""
    assert filled["event"] == "fill" and filled["order"]["id"] == str(order.id)
    assert (filled["price"], filled["qty"], filled["position_qty"]) == ("200", "3", "3")
    assert filled["order"]["filled_avg_price"] == "200" and filled["order"]["status"] == "filled"

    account = await call(sim_client.get_account)
    assert (account.cash, account.equity) == ("99400.00", "100000.00")
    [position] = await call(sim_client.get_all_positions)
    assert (position.symbol, position.qty, position.avg_entry_price) == ("AAPL", "3", "200")
    assert (position.cost_basis, position.market_value) == ("600.00", "600.00")
    [rest_order] = await call(sim_client.get_orders, GetOrdersRequest(status=QueryOrderStatus.ALL))
    assert rest_order.filled_qty == "3" and rest_order.status == "filled"
    [activity] = await call(sim_client.get, "/account/activities/FILL", {"direction": "asc"})
    assert activity["id"].endswith("::" + filled["execution_id"])
    assert activity["order_id"] == str(order.id) and activity["qty"] == "3"

    sim_broker.set_price("AAPL", D("210.00"))
    position = await call(sim_client.get_open_position, "AAPL")
    assert (position.market_value, position.unrealized_pl) == ("630.00", "30.00")


async def test_partial_fills_carry_per_execution_qty_and_signed_position(
    sim_broker: SimulatedBroker, sim_client: TradingClient
) -> None:
    sim_broker.set_partial_fills(True)
    sim_broker.set_price("MSFT", D("400.00"))
    async with trade_updates(sim_broker) as updates:
        await call(sim_client.submit_order, buy("MSFT", 5))
        events = [await next_data(updates) for _ in range(3)]
    assert [e["event"] for e in events] == ["new", "partial_fill", "fill"]
    partial, final = events[1], events[2]
    assert (partial["qty"], partial["position_qty"], partial["order"]["filled_qty"]) == (
        "2",
        "2",
        "2",
    )
    assert partial["order"]["status"] == "partially_filled"
    assert (final["qty"], final["position_qty"], final["order"]["filled_qty"]) == ("3", "5", "5")
    assert partial["execution_id"] != final["execution_id"]


async def test_limit_orders_rest_until_the_price_crosses_and_can_be_canceled(
    sim_broker: SimulatedBroker, sim_client: TradingClient
) -> None:
    sim_broker.set_price("NVDA", D("130.00"))
    limit = LimitOrderRequest(
        symbol="NVDA", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=120
    )
    async with trade_updates(sim_broker) as updates:
        resting = await call(sim_client.submit_order, limit)
        assert (await next_data(updates))["event"] == "new"
        assert (await call(sim_client.get_account)).buying_power == "99760.00"
        await call(sim_client.cancel_order_by_id, resting.id)
        canceled = await next_data(updates)
        assert canceled["event"] == "canceled" and canceled["order"]["canceled_at"]

        crossing = await call(sim_client.submit_order, limit)
        assert (await next_data(updates))["event"] == "new"
        sim_broker.set_price("NVDA", D("119.50"))
        filled = await next_data(updates)
    assert filled["event"] == "fill" and filled["order"]["id"] == str(crossing.id)
    assert filled["price"] == "119.5"
    closed = await call(sim_client.get_orders, GetOrdersRequest(status=QueryOrderStatus.CLOSED))
    assert {o.status.value for o in closed} == {"canceled", "filled"}
    assert await call(sim_client.get_orders) == []


async def test_alpaca_py_reconnects_after_a_drop_and_hears_only_new_events(
    sim_broker: SimulatedBroker, sim_client: TradingClient
) -> None:
    async with trade_updates(sim_broker) as updates:
        sim_broker.drop_trading_streams(KEY, how="abort")
        await asyncio.wait_for(sim_broker.wait_trading_disconnected(KEY), 5)
        missed = await sim_broker.submit_order(KEY, "AAPL", "buy", D(1))
        await asyncio.wait_for(sim_broker.wait_trade_updates(KEY, 2), 5)
        await asyncio.wait_for(sim_broker.wait_trading_listener(KEY), 5)  # alpaca-py's backoff
        heard = await call(sim_client.submit_order, buy("MSFT", 1))
        first = await next_data(updates)
    assert first["order"]["id"] == str(heard.id) != missed["id"]
    assert (await call(sim_client.get_order_by_id, missed["id"])).status.value == "filled"


async def test_bad_orders_and_bad_credentials_get_alpaca_error_bodies(
    sim_broker: SimulatedBroker, sim_client: TradingClient
) -> None:
    with pytest.raises(APIError) as broke:
        await call(sim_client.submit_order, buy("AAPL", 10_000))
    assert (broke.value.status_code, broke.value.code) == (403, 40310000)
    sell = MarketOrderRequest(
        symbol="TSLA", qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY
    )
    with pytest.raises(APIError, match="insufficient qty available"):
        await call(sim_client.submit_order, sell)
    with pytest.raises(APIError) as unknown:
        await call(sim_client.submit_order, buy("NOPE", 1))
    assert (unknown.value.status_code, unknown.value.code) == (422, 40010001)
    with pytest.raises(APIError) as missing:
        await call(sim_client.get_open_position, "AAPL")
    assert (missing.value.status_code, missing.value.code) == (404, 40410000)
    intruder = TradingClient(KEY, "wrong", paper=True, url_override=sim_broker.base_url)
    with pytest.raises(APIError) as denied:
        await call(intruder.get_account)
    assert (denied.value.status_code, denied.value.code) == (401, 40110000)
    assert (await call(sim_client.get_clock)).is_open


async def test_stock_data_stream_gets_trade_ticks_for_subscribed_symbols(
    sim_broker: SimulatedBroker,
) -> None:
    ticks: asyncio.Queue[Trade] = asyncio.Queue()

    async def on_trade(trade: Trade) -> None:
        await ticks.put(trade)

    stream = StockDataStream(KEY, SECRET, url_override=sim_broker.data_stream_url)
    stream.subscribe_trades(on_trade, "AAPL")
    async with running(stream):
        await asyncio.wait_for(sim_broker.wait_data_subscription("AAPL"), 5)
        sim_broker.set_price("MSFT", D("401.00"))  # not subscribed: never delivered
        sim_broker.set_price("AAPL", D("231.45"))
        trade = await asyncio.wait_for(ticks.get(), 5)
    assert (trade.symbol, trade.price, trade.exchange) == ("AAPL", 231.45, "V")
    assert trade.timestamp.tzinfo is not None and abs(trade.timestamp.timestamp() - time.time()) < 5
    assert ticks.empty()


async def test_random_orders_keep_every_account_plausible_and_consistent() -> None:
    broker = SimulatedBroker(
        tick_interval_s=0.01, order_interval_s=0.01, seed=5, fill_delay_s=0.001
    )
    keys = [f"PKRANDOM{n}" for n in range(3)]
    for key in keys:
        broker.add_account(key, "s", cash=D("25000"))
    await broker.start()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(broker.wait_trade_updates(key, 25, event="fill") for key in keys)), 10
        )
    finally:
        await broker.stop()
    for key in keys:
        account = broker.account(key)
        assert D(account["cash"]) >= 0
        positions = broker.positions(key)
        assert all(D(p["qty"]) > 0 and p["side"] == "long" for p in positions)
        market_value = sum((D(p["market_value"]) for p in positions), D(0))
        assert D(account["equity"]) == D(account["cash"]) + market_value
        fills = [u["data"] for u in broker.trade_updates(key) if u["data"]["event"] == "fill"]
        held: dict[str, Decimal] = {}
        for data in fills:
            sign = 1 if data["order"]["side"] == "buy" else -1
            held[data["order"]["symbol"]] = held.get(data["order"]["symbol"], D(0)) + sign * D(
                data["qty"]
            )
            assert D(data["position_qty"]) == held[data["order"]["symbol"]]
        assert {p["symbol"]: D(p["qty"]) for p in positions} == {s: q for s, q in held.items() if q}
