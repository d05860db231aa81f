"""Heartbeat (SPEC §4): the server pings every HEARTBEAT_INTERVAL_MS and closes a connection
from which nothing was heard for HEARTBEAT_TIMEOUT_MS (small values here: 100 ms / 300 ms)."""

from __future__ import annotations

import asyncio
import io
import itertools

import aiohttp

from app.keys import STREAM_KEY
from tests.app.support import (
    Client,
    Session,
    connect,
    receive_close,
    session_for,
)
from tests.conftest import ClientFactory

INTERVAL_S = 0.1
TIMEOUT_S = 0.3
MARGIN_S = 0.5  # scheduling slack (loaded CI machines)


async def fast_heartbeat(app_client: ClientFactory) -> tuple[Client, Session]:
    client = await app_client(
        heartbeat_interval_ms=int(INTERVAL_S * 1000), heartbeat_timeout_ms=int(TIMEOUT_S * 1000)
    )
    return client, await session_for(client, "alice")


async def next_frame(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await asyncio.wait_for(ws.receive(), 2)


async def test_the_server_pings_every_interval(app_client: ClientFactory) -> None:
    client, alice = await fast_heartbeat(app_client)
    ws, _ = await connect(client, alice, autoping=False)
    loop = asyncio.get_running_loop()
    pings: list[float] = []
    while len(pings) < 4:
        msg = await next_frame(ws)
        if msg.type is aiohttp.WSMsgType.PING:
            pings.append(loop.time())
            await ws.pong(msg.data)
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert all(INTERVAL_S * 0.8 <= gap <= INTERVAL_S + MARGIN_S for gap in gaps), gaps
    await ws.close()


async def test_a_client_that_answers_pings_stays_connected(app_client: ClientFactory) -> None:
    client, alice = await fast_heartbeat(app_client)
    ws, connected = await connect(client, alice, autoping=False)
    loop = asyncio.get_running_loop()
    start = loop.time()
    answered = 0
    while loop.time() - start < 3 * TIMEOUT_S:  # three timeouts' worth of answered pings
        msg = await next_frame(ws)
        assert msg.type is aiohttp.WSMsgType.PING, msg
        await ws.pong(msg.data)
        answered += 1
    assert answered >= 5
    assert client.app[STREAM_KEY].connection(connected["connectionId"]) is not None
    await ws.send_json({"type": "ping"})
    while (msg := await next_frame(ws)).type is aiohttp.WSMsgType.PING:
        await ws.pong(msg.data)
    assert msg.json()["type"] == "pong"
    await ws.close()


async def test_a_silent_client_is_closed_4000_after_the_timeout(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client, alice = await fast_heartbeat(app_client)
    loop = asyncio.get_running_loop()
    ws, _ = await connect(client, alice, autoping=False)  # and never answers
    heard_last = loop.time()
    while (msg := await next_frame(ws)).type is aiohttp.WSMsgType.PING:
        pass
    elapsed = loop.time() - heard_last
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (4000, "Heartbeat timeout")
    assert TIMEOUT_S - 0.05 <= elapsed <= TIMEOUT_S + MARGIN_S, elapsed
    await ws.close()
    manager = client.app[STREAM_KEY]
    async with asyncio.timeout(2):
        while manager.active_connections:  # noqa: ASYNC110 - released by the server's loop
            await asyncio.sleep(0.01)
    assert "code=4000, reason=Heartbeat timeout" in log_lines.getvalue()


async def test_application_messages_count_as_heard(app_client: ClientFactory) -> None:
    """A client that ignores protocol pings but keeps talking is alive."""
    client, alice = await fast_heartbeat(app_client)
    ws, connected = await connect(client, alice, autoping=False)
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < 3 * TIMEOUT_S:
        await ws.send_json({"type": "ping"})
        while (msg := await next_frame(ws)).type is aiohttp.WSMsgType.PING:
            pass  # never answered
        assert msg.json()["type"] == "pong"
        await asyncio.sleep(INTERVAL_S)  # the client's own pacing
    assert client.app[STREAM_KEY].connection(connected["connectionId"]) is not None
    await ws.close()


async def test_a_client_with_automatic_pongs_stays_connected(app_client: ClientFactory) -> None:
    client, alice = await fast_heartbeat(app_client)
    ws, _ = await connect(client, alice)  # aiohttp answers pings while it reads
    inbox: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def read() -> None:
        while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
            inbox.put_nowait(msg.json())

    reader = asyncio.ensure_future(read())
    silent, _ = await connect(client, alice, autoping=False)  # the silent one, as a clock
    assert (await receive_close(silent, 2)).data == 4000  # a full timeout has passed...
    await ws.send_json({"type": "ping"})
    pong = await asyncio.wait_for(inbox.get(), 2)
    assert pong["type"] == "pong"  # ...and the answering client is still here
    await ws.close()
    await reader
