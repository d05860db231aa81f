"""Slow consumers (SPEC §4): a connection whose socket does not drain keeps only the coalesced
latest state, gets it once it drains, and is closed once stuck past the heartbeat timeout.

The stalled client is a real aiohttp client whose transport stops reading, on a socket with a
small receive buffer (and the server side's send buffer shrunk likewise) so that the kernel
buffers fill after a few kilobytes instead of megabytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from app.connection import MAX_CONTROL_FRAMES, PING, Connection
from app.keys import STATS_KEY, STREAM_KEY
from tests.app.support import (
    WS_PATH,
    Client,
    Session,
    account,
    position,
    receive,
    session_for,
    subscribe,
    until,
)
from tests.conftest import ClientFactory, publish

SYMBOLS = [f"SYM{i}" for i in range(20)]
SMALL_BUFFER = 4096


def small_receive_buffer(addr_info: Any) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    return sock


@dataclass
class Stalled:
    """A connected, subscribed client that can stop and resume reading."""

    ws: aiohttp.ClientWebSocketResponse
    conn: Connection
    published: int = 0
    final: dict[str, str] = field(default_factory=dict)

    def pause(self) -> None:
        self.ws._response.connection.transport.pause_reading()  # type: ignore[union-attr]

    def resume(self) -> None:
        self.ws._response.connection.transport.resume_reading()  # type: ignore[union-attr]


@asynccontextmanager
async def stalled_client(client: Client, user: Session) -> AsyncIterator[Stalled]:
    connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer)
    async with aiohttp.ClientSession(connector=connector) as http:
        ws = await http.ws_connect(client.make_url(WS_PATH), headers=user.headers)
        connected = await receive(ws)
        await subscribe(ws, ["positions", "account"])
        conn = client.app[STREAM_KEY].connection(connected["connectionId"])
        assert conn is not None and conn.transport is not None
        server_socket = conn.transport.get_extra_info("socket")
        server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        stalled = Stalled(ws, conn)
        stalled.pause()
        yield stalled


async def publish_round(
    client: Client,
    user: Session,
    stalled: Stalled,
    n: int,
    symbols: list[str] = SYMBOLS,
    pause_s: float = 0.001,
) -> None:
    """One price move for every symbol plus the account, then let the loop run."""
    for i, symbol in enumerate(symbols):
        pnl = f"{n}.{i:02d}"
        publish(client, "position:updated", position(user.user_id, symbol, pnl=pnl), quiet=True)
        stalled.final[symbol] = pnl
    publish(client, "account:updated", account(user.user_id, equity=f"{n}.00"), quiet=True)
    stalled.final["account"] = f"{n}.00"
    stalled.published += len(symbols) + 1
    await asyncio.sleep(pause_s)


def not_draining(conn: Connection) -> bool:
    return conn.sending and conn.buffered_bytes() > 0


async def fill_until_stuck(client: Client, user: Session, stalled: Stalled) -> int:
    """Publish rounds until the server's writer is parked on a full socket; returns rounds."""
    rounds = 0
    async with asyncio.timeout(10):
        while not not_draining(stalled.conn):
            await publish_round(client, user, stalled, rounds)
            rounds += 1
    return rounds


async def test_a_stalled_socket_keeps_bounded_coalesced_state_and_gets_it_on_resume(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await app_client(batch_window_ms=0)
    alice = await session_for(client, "alice")
    async with stalled_client(client, alice) as stalled:
        conn = stalled.conn
        rounds_before = await fill_until_stuck(client, alice, stalled)
        stuck_bytes = conn.buffered_bytes()
        stats = client.app[STATS_KEY]
        sent_before = stats.messages_delivered
        for n in range(rounds_before, rounds_before + 300):
            await publish_round(client, alice, stalled, n)
            # Server-side state stays bounded by the portfolio, not by the event count...
            assert conn.pending is not None
            assert len(conn.pending.positions) <= len(SYMBOLS)
            assert len(conn.control or ()) <= MAX_CONTROL_FRAMES
            # ...and nothing more is pushed into the full socket's buffer.
            assert conn.buffered_bytes() <= stuck_bytes
            assert not_draining(conn)
        assert conn.pending is not None and conn.pending.event_count({"positions"}) >= 300 * 20
        assert client.app[STREAM_KEY].connection(conn.id) is conn  # still connected

        stalled.resume()
        latest: dict[str, str] = {}
        delivered = 0
        async with asyncio.timeout(10):
            while delivered < stalled.published:
                message = await receive(stalled.ws)
                assert message["type"] == "batch"
                delivered += message["eventCount"]
                for entry in message["positions"]:
                    latest[entry["symbol"]] = entry["unrealizedPnl"]
                if "account" in message:
                    latest["account"] = message["account"]["equity"]
        assert delivered == stalled.published  # every event accounted for exactly once
        assert latest == stalled.final  # converged on the newest values
        # The 300 rounds published while stalled cost a couple of messages, not 300.
        assert stats.messages_delivered - sent_before <= 3
        await stalled.ws.close()
    assert " ERROR " not in log_lines.getvalue()


async def test_a_stalled_client_is_closed_after_the_heartbeat_timeout(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await app_client(
        batch_window_ms=0, heartbeat_interval_ms=100, heartbeat_timeout_ms=300, shutdown_timeout_s=1
    )
    alice = await session_for(client, "alice")
    manager = client.app[STREAM_KEY]
    async with stalled_client(client, alice) as stalled:
        await fill_until_stuck(client, alice, stalled)
        loop = asyncio.get_running_loop()
        stuck_at = loop.time()
        await until(lambda: manager.connection(stalled.conn.id) is None, 3)
        # Timeout, plus the close grace (SHUTDOWN_TIMEOUT_S / 4, at least 0.25 s) a close
        # frame gets before the socket is dropped, plus scheduling margin.
        assert loop.time() - stuck_at <= 0.3 + 0.25 + 0.5
        assert manager.active_connections == 0
    output = log_lines.getvalue()
    assert "code=4000, reason=Heartbeat timeout" in output
    assert " ERROR " not in output


async def test_a_stalled_client_that_vanishes_is_released_quietly(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await app_client(batch_window_ms=0)
    alice = await session_for(client, "alice")
    manager = client.app[STREAM_KEY]
    async with stalled_client(client, alice) as stalled:
        await fill_until_stuck(client, alice, stalled)
        conn_id = stalled.conn.id
        # Leaving the block drops the client's socket while the server's writer is parked.
    await until(lambda: manager.connection(conn_id) is None)
    publish(client, "position:updated", position(alice.user_id, "AAPL"))
    await until(lambda: manager.pending_timers() == 0)
    assert " ERROR " not in log_lines.getvalue()


async def test_a_neighbour_keeps_receiving_while_another_tab_is_stalled(
    app_client: ClientFactory,
) -> None:
    client = await app_client(batch_window_ms=20)
    alice = await session_for(client, "alice")
    async with stalled_client(client, alice) as stalled:
        healthy = await client.ws_connect(WS_PATH, headers=alice.headers)
        await receive(healthy)
        await subscribe(healthy, ["positions"])
        await fill_until_stuck(client, alice, stalled)
        publish(client, "position:updated", position(alice.user_id, "AAPL", pnl="123.45"))
        async with asyncio.timeout(5):
            while True:
                message = await receive(healthy)
                pnls = {p["symbol"]: p["unrealizedPnl"] for p in message.get("positions", [])}
                if pnls.get("AAPL") == "123.45":
                    break
        await healthy.close()


async def test_a_stalled_client_does_not_hold_up_shutdown(app_client: ClientFactory) -> None:
    client = await app_client(batch_window_ms=0, shutdown_timeout_s=1)
    alice = await session_for(client, "alice")
    manager = client.app[STREAM_KEY]
    async with stalled_client(client, alice) as stalled:
        await fill_until_stuck(client, alice, stalled)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.server.close()
        assert loop.time() - started <= 1.0 + 0.5  # SHUTDOWN_TIMEOUT_S, plus margin
        assert manager.active_connections == 0


async def test_a_client_that_talks_but_never_reads_is_dropped(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    """Replies to a client that never reads cannot pile up: past MAX_CONTROL_FRAMES queued
    replies the connection is dropped (the rate limit is raised here to get there fast)."""
    client = await app_client(batch_window_ms=0, ws_rate_limit_messages=1000)
    alice = await session_for(client, "alice")
    manager = client.app[STREAM_KEY]
    async with stalled_client(client, alice) as stalled:
        conn = stalled.conn
        await fill_until_stuck(client, alice, stalled)
        with contextlib.suppress(ConnectionError):
            for _ in range(MAX_CONTROL_FRAMES * 2):
                if manager.connection(conn.id) is None:
                    break
                await stalled.ws.send_json({"type": "ping"})
                await asyncio.sleep(0)
                assert len(conn.control or ()) <= MAX_CONTROL_FRAMES
        await until(lambda: manager.connection(conn.id) is None)
    assert "code=1008, reason=Client is not reading" in log_lines.getvalue()


async def test_a_slow_but_healthy_reader_of_a_continuous_stream_is_kept(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    """The server's writer is busy all the time (a big portfolio whose prices never stop, a
    narrow link), yet the client keeps reading and answers pings: neither the heartbeat nor
    the stuck-writer rule may close it."""
    timeout_s = 1.0
    client = await app_client(
        batch_window_ms=0, heartbeat_interval_ms=100, heartbeat_timeout_ms=int(timeout_s * 1000)
    )
    alice = await session_for(client, "alice")
    manager = client.app[STREAM_KEY]
    big_portfolio = [f"BIG{i}" for i in range(150)]  # ~50 KB per batch
    async with stalled_client(client, alice) as reader:
        reader.resume()  # it reads (and answers pings as it does), just slowly
        received = 0

        async def read_slowly() -> None:
            nonlocal received
            while (await reader.ws.receive()).type is aiohttp.WSMsgType.TEXT:
                received += 1
                await asyncio.sleep(0.03)  # a batch every 30 ms gets through the link

        reading = asyncio.ensure_future(read_slowly())
        loop = asyncio.get_running_loop()
        started = loop.time()
        busy_ticks = ticks = n = 0
        while loop.time() - started < 3 * timeout_s:
            # A batch every 10 ms: more than the link carries, so the writer never idles.
            await publish_round(client, alice, reader, n, big_portfolio, pause_s=0.01)
            n += 1
            ticks += 1
            # Busy: the writer is parked on the socket or bytes are still waiting for the link.
            busy_ticks += reader.conn.sending or reader.conn.buffered_bytes() > 0
            assert not reader.conn.closing and not reading.done(), "the connection was closed"
        assert manager.connection(reader.conn.id) is reader.conn
        assert busy_ticks > ticks * 0.6, (busy_ticks, ticks)  # the link was rarely idle
        assert received > 10
        await reader.ws.close()
        await reading
    assert "Closing unresponsive client" not in log_lines.getvalue()


async def test_pings_are_queued_behind_a_busy_writer_and_answered_once_it_drains(
    app_client: ClientFactory,
) -> None:
    """A ping that falls due while the writer waits on the socket is queued, not skipped: a
    client that is merely slow still hears pings, and its pongs count as heard."""
    client = await app_client(
        batch_window_ms=0, heartbeat_interval_ms=100, heartbeat_timeout_ms=10_000
    )
    alice = await session_for(client, "alice")
    async with stalled_client(client, alice) as stalled:
        conn = stalled.conn
        await fill_until_stuck(client, alice, stalled)
        await until(lambda: PING in (conn.control or ()), 1)
        assert not_draining(conn)
        heard = conn.last_heard
        stalled.resume()

        async def read() -> None:  # aiohttp answers pings as it reads
            while (await stalled.ws.receive()).type is aiohttp.WSMsgType.TEXT:
                pass

        reading = asyncio.ensure_future(read())
        await until(lambda: conn.last_heard > heard, 2)
        await stalled.ws.close()
        await reading
