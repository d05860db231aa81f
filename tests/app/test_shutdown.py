"""Graceful shutdown in-process (SPEC §9): pending batches are flushed to clients before every
socket is closed with 1001, listeners are unsubscribed, timers and maps cleared."""

from __future__ import annotations

import asyncio
import io

import aiohttp

from app.keys import BUS_KEY, STREAM_KEY
from tests.app.support import (
    connect,
    position,
    session_for,
    subscribe,
)
from tests.conftest import ClientFactory, publish


async def read_until_closed(
    ws: aiohttp.ClientWebSocketResponse,
) -> list[tuple[float, aiohttp.WSMessage]]:
    """Every frame with its arrival time, up to and including the close."""
    loop = asyncio.get_running_loop()
    frames = []
    while True:
        msg = await ws.receive()
        frames.append((loop.time(), msg))
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return frames


async def test_shutdown_flushes_the_pending_batch_then_closes_1001(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await app_client(batch_window_ms=10_000)  # the window would never end in time
    alice = await session_for(client, "alice")
    bob = await session_for(client, "bob")
    sockets = []
    for user in (alice, alice, bob):
        ws, _ = await connect(client, user)
        await subscribe(ws, ["positions"])
        sockets.append(ws)
    readers = [asyncio.ensure_future(read_until_closed(ws)) for ws in sockets]
    publish(client, "position:updated", position(alice.user_id, "AAPL", pnl="550.00"))
    publish(client, "position:updated", position(bob.user_id, "TSLA", pnl="-3.00"))
    manager = client.app[STREAM_KEY]
    async with asyncio.timeout(5):
        while manager.pending_timers() < 2:  # noqa: ASYNC110 - both users' windows are open
            await asyncio.sleep(0.005)

    loop = asyncio.get_running_loop()
    started = loop.time()
    await client.server.close()  # runs the app's on_shutdown, as SIGTERM does
    assert loop.time() - started < 5

    for reader, expected in zip(readers, ("AAPL", "AAPL", "TSLA"), strict=True):
        frames = await asyncio.wait_for(reader, 5)
        *data, (_, close) = frames
        assert close.type is aiohttp.WSMsgType.CLOSE
        assert (close.data, close.extra) == (1001, "Server shutting down")
        batches = [msg.json() for _, msg in data if msg.json()["type"] == "batch"]
        assert [p["symbol"] for b in batches for p in b["positions"]] == [expected]
    bus = client.app[BUS_KEY]
    assert bus.handler_count() == 0  # every listener unsubscribed
    assert manager.active_connections == 0 and manager.pending_timers() == 0
    assert manager.connections_by_user() == {}
    output = log_lines.getvalue()
    assert "[PortfolioStream] Shutting down: activeConnections=3" in output
    assert output.count("code=1001, reason=Server shutting down") == 3
    assert "[PortfolioStream] Shutdown complete" in output
    assert output.index("Batch flushed") < output.index("code=1001")
