"""The trade_updates consumer against a protocol-faithful fake on a real socket."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from fake_trading_stream import Behaviour, FakeTradingStream
from pydantic import SecretStr

from alpaca_bridge.dedup import RecentKeys
from alpaca_bridge.trade_stream import StreamState, TradeUpdatesStream
from alpaca_bridge.wire_parser import TradeUpdate
from app.backoff import Backoff


@pytest.fixture
async def fake() -> AsyncIterator[FakeTradingStream]:
    server = FakeTradingStream({"good": "ok", "bad": "reject", "mute": "silent"})
    await server.start()
    yield server
    await server.stop()


class Harness:
    def __init__(self) -> None:
        self.updates: asyncio.Queue[TradeUpdate] = asyncio.Queue()
        self.connects: asyncio.Queue[float | None] = asyncio.Queue()


@pytest.fixture
async def consumer_for(
    fake: FakeTradingStream,
) -> AsyncIterator[Callable[..., tuple[TradeUpdatesStream, Harness]]]:
    session = aiohttp.ClientSession()
    made: list[TradeUpdatesStream] = []

    def make(
        key: Behaviour | str,
        *,
        auth_timeout_s: float = 2.0,
        backoff: tuple[float, float] = (0.05, 0.2),
    ) -> tuple[TradeUpdatesStream, Harness]:
        harness = Harness()
        stream = TradeUpdatesStream(
            account="alice",
            url=fake.url,
            key_id=SecretStr(key),
            secret_key=SecretStr("s3cret-value"),
            session=session,
            auth_timeout_s=auth_timeout_s,
            backoff=Backoff(*backoff, random.Random(7)),
            on_update=harness.updates.put_nowait,
            on_connected=harness.connects.put_nowait,
        )
        stream.start()
        made.append(stream)
        return stream, harness

    yield make
    for stream in made:
        await stream.stop()
    await session.close()


def update(
    event: str = "fill",
    execution_id: str | None = "exec-1",
    **order: Any,
) -> dict[str, Any]:
    return {
        "stream": "trade_updates",
        "data": {
            "event": event,
            "execution_id": execution_id,
            "timestamp": "2026-01-04T10:30:00Z",
            "price": "150.5",
            "qty": "2",
            "position_qty": "2",
            "order": {
                "id": "order-1",
                "symbol": "AAPL",
                "side": "buy",
                "status": "filled",
                "filled_qty": "2",
                "updated_at": "2026-01-04T10:30:00Z",
                **order,
            },
        },
    }


async def test_updates_arrive_from_text_and_binary_frames_and_duplicates_are_dropped(
    fake: FakeTradingStream,
    consumer_for: Callable[..., tuple[TradeUpdatesStream, Harness]],
    log_lines: Any,
) -> None:
    stream, harness = consumer_for("good")
    await asyncio.wait_for(harness.connects.get(), 5)
    assert stream.state is StreamState.CONNECTED
    assert log_lines.matching(
        "INFO [AlpacaStream] Connected to trade_updates stream: account=alice"
    )
    await fake.push(b"\x01")
    await fake.push(update(), binary=True)
    await fake.push(update(), binary=False)  # the same execution again
    await fake.push(update("canceled", None, status="canceled"), binary=False)
    first = await asyncio.wait_for(harness.updates.get(), 5)
    second = await asyncio.wait_for(harness.updates.get(), 5)
    assert (first.event, str(first.price), first.execution_id) == ("fill", "150.5", "exec-1")
    assert second.event == "canceled"
    assert harness.updates.empty()
    assert stream.duplicates == 1
    assert stream.last_event_at is not None


async def test_bad_credentials_are_reported_once_and_not_retried(
    fake: FakeTradingStream,
    consumer_for: Callable[..., tuple[TradeUpdatesStream, Harness]],
    log_lines: Any,
) -> None:
    stream, _ = consumer_for("bad")
    await asyncio.wait_for(stream.wait_closed(), 5)
    assert stream.state is StreamState.UNAUTHORIZED
    lines = log_lines.matching("[AlpacaStream] Authentication failed")
    assert lines == [lines[0]]
    assert " ERROR [AlpacaStream] Authentication failed: account=alice, " in lines[0]
    assert "access key verification failed" in lines[0]
    assert "s3cret" not in "\n".join(log_lines.all())
    await stream.stop()
    assert stream.state is StreamState.UNAUTHORIZED
    assert fake.auth_attempts["bad"] == 1


async def test_a_silent_server_times_out_the_auth_and_is_retried_with_backoff(
    fake: FakeTradingStream,
    consumer_for: Callable[..., tuple[TradeUpdatesStream, Harness]],
    log_lines: Any,
) -> None:
    stream, _ = consumer_for("mute", auth_timeout_s=0.2)
    for _ in range(2):
        assert await asyncio.wait_for(fake.auths.get(), 5) == "mute"
    assert stream.state in (StreamState.RECONNECTING, StreamState.CONNECTING)
    assert stream.reconnects >= 1
    assert log_lines.matching("WARNING [AlpacaStream] Authentication timed out: account=alice")
    assert log_lines.matching("[AlpacaStream] Reconnecting in", "account=alice, attempt=1")


async def test_an_aborted_connection_reconnects_with_backoff(
    fake: FakeTradingStream,
    consumer_for: Callable[..., tuple[TradeUpdatesStream, Harness]],
    log_lines: Any,
) -> None:
    stream, harness = consumer_for("good")
    assert await asyncio.wait_for(harness.connects.get(), 5) is None
    fake.drop()
    gap_started_at = await asyncio.wait_for(harness.connects.get(), 5)
    assert gap_started_at is not None
    assert stream.state is StreamState.CONNECTED
    assert stream.reconnects == 1
    [disconnected] = log_lines.matching("[AlpacaStream] Disconnected from trade_updates stream")
    assert "account=alice, reason=" in disconnected
    [reconnecting] = log_lines.matching("[AlpacaStream] Reconnecting in")
    assert reconnecting.endswith("ms: account=alice, attempt=1")
    # Updates after the reconnect still flow.
    await fake.push(update(execution_id="exec-2"))
    assert (await asyncio.wait_for(harness.updates.get(), 5)).execution_id == "exec-2"


@pytest.mark.parametrize("key", ["good", "mute"])
async def test_stop_is_prompt_whether_connected_or_waiting_for_auth(
    fake: FakeTradingStream,
    consumer_for: Callable[..., tuple[TradeUpdatesStream, Harness]],
    key: str,
) -> None:
    stream, harness = consumer_for(key, auth_timeout_s=30)
    if key == "good":
        await asyncio.wait_for(harness.connects.get(), 5)
    else:
        await asyncio.wait_for(fake.auths.get(), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await stream.stop()
    assert loop.time() - started < 1.0
    assert stream.state is StreamState.STOPPED


def test_backoff_is_capped_full_jitter_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    caps = [0.5, 1, 2, 4, 4, 4, 4, 4]
    assert all(0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert backoff.attempt == 8
    backoff.reset()
    assert backoff.next_delay() <= 0.5


async def test_a_server_that_never_upgrades_is_timed_out(log_lines: Any) -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept_and_ignore(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # keep the TCP connection open, never answer the HTTP upgrade

    server = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        stream = TradeUpdatesStream(
            account="alice",
            url=f"ws://127.0.0.1:{port}/stream",
            key_id=SecretStr("k"),
            secret_key=SecretStr("s"),
            session=session,
            auth_timeout_s=0.2,
            backoff=Backoff(0.05, 0.1),
            on_update=lambda _: None,
            on_connected=lambda _: None,
        )
        stream.start()
        line = await asyncio.wait_for(log_lines.wait_for("Connection attempt failed"), 5)
        await stream.stop()
    assert line.endswith("account=alice, reason=no handshake response within 0.2s")
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


def test_recent_keys_forget_the_oldest() -> None:
    keys = RecentKeys(capacity=2)
    assert keys.add("a")
    assert keys.add("b")
    assert not keys.add("a")  # refreshed: "b" is now the oldest
    assert keys.add("c")
    assert keys.add("b")
    assert not keys.add("c")
