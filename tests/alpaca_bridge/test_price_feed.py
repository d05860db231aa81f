"""The shared price feed: alpaca-py's StockDataStream inside our loop, against the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from alpaca_bridge.prices import PriceFeed, choose_symbols
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


def test_the_symbol_limit_keeps_the_most_held_then_by_name() -> None:
    holders = {"MSFT": 1, "AAPL": 3, "NVDA": 2, "KO": 2, "T": 1}
    assert choose_symbols(holders, 3) == (["AAPL", "KO", "NVDA"], ["MSFT", "T"])
    assert choose_symbols(holders, 0) == (["AAPL", "KO", "NVDA", "MSFT", "T"], [])
    assert choose_symbols(holders, 5) == (["AAPL", "KO", "NVDA", "MSFT", "T"], [])


async def test_symbols_past_the_limit_are_left_out_and_said_so(
    broker: SimulatedBroker, log_lines: Any
) -> None:
    # 31 symbols on IEX: the simulator, like Alpaca, refuses a 31st with error 405.
    symbols = {f"S{n:02d}": 1 for n in range(31)} | {"AAPL": 2}
    prices = PriceFeed(
        url=broker.data_stream_url,
        feed="iex",
        key_id=SecretStr(KEY),
        secret_key=SecretStr(SECRET),
        on_prices=lambda _: None,
        symbol_limit=30,
    )
    prices.start()
    try:
        prices.want(symbols)
        # Most held first, then by name: AAPL and S00..S28 are followed, S29 and S30 are not.
        # (One subscribe of all 32 would have been refused whole, and AAPL never followed.)
        await asyncio.wait_for(broker.wait_data_subscription("AAPL"), 5)
        await asyncio.wait_for(broker.wait_data_subscription("S28"), 5)
        status = prices.status()
        assert status["symbols"] == sorted(["AAPL", *(f"S{n:02d}" for n in range(29))])
        assert (status["symbolLimit"], status["symbolsWanted"], status["symbolsDropped"]) == (
            30,
            32,
            2,
        )
        assert status["droppedSymbols"] == ["S29", "S30"]
        [warning] = log_lines.matching(
            "WARNING [AlpacaStream] Price symbols over the feed's limit: some get no prices"
        )
        assert "symbolsDropped=2" in warning
        prices.want(symbols)  # the same again: no second line
        prices.want({"AAPL": 1})
        await asyncio.wait_for(broker.wait_data_subscription("S00", subscribed=False), 5)
        assert prices.status()["symbolsDropped"] == 0
        assert len(log_lines.matching("Price symbols over the feed's limit")) == 1
        assert log_lines.matching("INFO [AlpacaStream] Price symbols within the feed's limit again")
    finally:
        await prices.stop()


async def test_a_held_data_slot_is_retried_until_it_frees(
    broker: SimulatedBroker, log_lines: Any
) -> None:
    # A connection that died uncleanly keeps the key's one slot (Alpaca: about 90 s): every
    # connect meanwhile is refused with 406.
    broker.hold_data_slot(KEY, 60)
    batches: asyncio.Queue[dict[str, Decimal]] = asyncio.Queue()
    prices = PriceFeed(
        url=broker.data_stream_url,
        feed="iex",
        key_id=SecretStr(KEY),
        secret_key=SecretStr(SECRET),
        on_prices=batches.put_nowait,
        coalesce_s=0.01,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    prices.start()
    try:
        prices.want({"AAPL"})
        await log_lines.wait_for(
            "WARNING [AlpacaStream] Market-data connection refused: the key's one slot is "
            "still held (406); retrying with backoff"
        )
        # The SDK's own line per attempt: one line each, no traceback.
        await asyncio.wait_for(log_lines.wait_for("connection limit exceeded (406)", count=3), 5)
        status = prices.status()
        assert status["status"] == "slot_held"
        assert status["slotHeldSince"].endswith("Z")
        assert broker.data_connections(KEY) == 0
        # Several refusals, one warning of ours, and no traceback.
        assert len(log_lines.matching("Market-data connection refused")) == 1
        assert not log_lines.matching("Traceback")

        broker.hold_data_slot(KEY, 0)
        await asyncio.wait_for(broker.wait_data_subscription("AAPL"), 5)
        await log_lines.wait_for("INFO [AlpacaStream] Market-data slot free again: connected")
        broker.set_price("AAPL", Decimal("187.25"))
        assert await asyncio.wait_for(batches.get(), 5) == {"AAPL": Decimal("187.25")}
        status = prices.status()
        assert (status["status"], status["slotHeldSince"]) == ("running", None)
        assert status["slotRefusals"] >= 3
    finally:
        await prices.stop()
