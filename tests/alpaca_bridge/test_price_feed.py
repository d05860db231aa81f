"""The shared price feed: alpaca-py's StockDataStream inside our loop, against the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from pydantic import SecretStr

from alpaca_bridge.prices import PriceFeed
from alpaca_bridge.simulator import SimulatedBroker

KEY, SECRET = "PKPRICES", "prices-secret"


@pytest.fixture
async def broker() -> AsyncIterator[SimulatedBroker]:
    sim = SimulatedBroker(tick_interval_s=0, order_interval_s=0, seed=5)
    sim.add_account(KEY, SECRET)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def feed(
    broker: SimulatedBroker,
) -> AsyncIterator[tuple[PriceFeed, asyncio.Queue[dict[str, Decimal]]]]:
    batches: asyncio.Queue[dict[str, Decimal]] = asyncio.Queue()
    prices = PriceFeed(
        url=broker.data_stream_url,
        feed="iex",
        key_id=SecretStr(KEY),
        secret_key=SecretStr(SECRET),
        on_prices=batches.put_nowait,
        coalesce_s=0.05,
    )
    prices.start()
    yield prices, batches
    await prices.stop()


async def test_idle_until_a_symbol_is_wanted(
    feed: tuple[PriceFeed, asyncio.Queue[dict[str, Decimal]]],
) -> None:
    prices, _ = feed
    assert prices.status()["status"] == "idle"


async def test_ticks_are_coalesced_per_symbol(
    broker: SimulatedBroker,
    feed: tuple[PriceFeed, asyncio.Queue[dict[str, Decimal]]],
) -> None:
    prices, batches = feed
    prices.want({"AAPL", "MSFT"})
    await asyncio.wait_for(broker.wait_data_subscription("AAPL"), 5)
    await asyncio.wait_for(broker.wait_data_subscription("MSFT"), 5)
    for cents in range(10):
        broker.set_price("AAPL", Decimal("200.00") + Decimal(cents) / 100)
    broker.set_price("MSFT", Decimal("400.5"))
    broker.set_price("KO", Decimal("60"))  # not wanted: never reported
    seen: dict[str, Decimal] = {}
    calls = 0
    while seen != {"AAPL": Decimal("200.09"), "MSFT": Decimal("400.5")}:
        seen.update(await asyncio.wait_for(batches.get(), 5))
        calls += 1
    assert calls < 11  # ten AAPL prints did not become ten callbacks
    status = prices.status()
    assert (status["status"], status["symbols"]) == ("running", ["AAPL", "MSFT"])
    assert status["ticks"] == 11
    assert status["lastTickAt"].endswith("Z")


async def test_subscriptions_follow_the_wanted_set(
    broker: SimulatedBroker,
    feed: tuple[PriceFeed, asyncio.Queue[dict[str, Decimal]]],
) -> None:
    prices, batches = feed
    prices.want({"AAPL"})
    await asyncio.wait_for(broker.wait_data_subscription("AAPL"), 5)
    prices.want({"NVDA"})
    await asyncio.wait_for(broker.wait_data_subscription("NVDA"), 5)
    await asyncio.wait_for(broker.wait_data_subscription("AAPL", subscribed=False), 5)
    broker.set_price("NVDA", Decimal("140"))
    assert await asyncio.wait_for(batches.get(), 5) == {"NVDA": Decimal("140")}
    assert prices.status()["symbols"] == ["NVDA"]


async def test_stop_is_prompt_while_streaming(
    broker: SimulatedBroker,
    feed: tuple[PriceFeed, asyncio.Queue[dict[str, Decimal]]],
) -> None:
    prices, _ = feed
    prices.want({"AAPL"})
    await asyncio.wait_for(broker.wait_data_subscription("AAPL"), 5)
    loop = asyncio.get_running_loop()
    begun = loop.time()
    await prices.stop()
    assert loop.time() - begun < 1.0
    assert prices.status()["status"] == "stopped"
    await asyncio.wait_for(broker.wait_data_subscription("AAPL", subscribed=False), 5)
