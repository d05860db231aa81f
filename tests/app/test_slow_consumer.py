"""Slow consumers (SPEC §4) over real sockets: a connection whose socket does not drain keeps
only the coalesced latest state, gets it once it drains, and is closed once stuck past the
heartbeat timeout.

The stalled client speaks RFC 6455 itself and reads only when asked, on a small receive
buffer; the test server's listening socket hands its accepted sockets a small send buffer, so
the link fills after a few kilobytes. Everything asserted is what a client or an operator
sees: the frames, the stats counters, the log lines, whether the server still holds the
connection. The policy's details are tested at the writer's seam (tests/app/test_writer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from app.keys import STATS_KEY, STREAM_KEY
from tests.app.raw_client import PING, PONG, TEXT, RawClient, small_buffer_listener
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
QUIET_ROUNDS = 5  # rounds in a row that sent nothing: the socket is full, not merely busy


async def narrow_app(app_client: ClientFactory, **overrides: object) -> Client:
    return await app_client(server_kwargs={"socket_factory": small_buffer_listener}, **overrides)


@dataclass
class Stalled:
    """A connected, subscribed client that reads only when the test asks it to."""

    ws: RawClient
    connection_id: str
    published: int = 0
    final: dict[str, str] = field(default_factory=dict)


@asynccontextmanager
async def stalled_client(client: Client, user: Session) -> AsyncIterator[Stalled]:
    ws = await RawClient.connect(client.host, client.port, WS_PATH, user.headers)
    connected = await ws.receive_json()
    await ws.subscribe(["positions", "account"])
    try:
        yield Stalled(ws, connected["connectionId"])
    finally:
        ws.abort()


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


async def fill_until_stuck(client: Client, user: Session, stalled: Stalled) -> int:
    """Publish rounds until several in a row sent nothing (each round is one flush at window
    0, so a draining socket would have taken a message per round); returns the rounds."""
    stats = client.app[STATS_KEY]
    rounds = quiet = 0
    async with asyncio.timeout(10):
        while quiet < QUIET_ROUNDS:
            sent = stats.messages_delivered
            await publish_round(client, user, stalled, rounds)
            rounds += 1
            quiet = quiet + 1 if stats.messages_delivered == sent else 0
    return rounds


async def read_until_converged(stalled: Stalled) -> tuple[int, dict[str, str], int]:
    """Read until every published event arrived; (events, latest values, messages)."""
    latest: dict[str, str] = {}
    delivered = messages = 0
    async with asyncio.timeout(10):
        while delivered < stalled.published:
            message = await stalled.ws.receive_json()
            assert message["type"] == "batch"
            messages += 1
            delivered += message["eventCount"]
            for entry in message["positions"]:
                latest[entry["symbol"]] = entry["unrealizedPnl"]
            if "account" in message:
                latest["account"] = message["account"]["equity"]
    return delivered, latest, messages


async def test_a_stalled_socket_keeps_bounded_coalesced_state_and_gets_it_on_resume(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await narrow_app(app_client, batch_window_ms=0)
    alice = await session_for(client, "alice")
    stats, manager = client.app[STATS_KEY], client.app[STREAM_KEY]
    async with stalled_client(client, alice) as stalled:
        rounds = await fill_until_stuck(client, alice, stalled)
        sent_before = stats.messages_delivered
        for n in range(rounds, rounds + 300):
            await publish_round(client, alice, stalled, n)
        assert stats.messages_delivered == sent_before  # nothing more pushed at the full socket
        assert manager.connection(stalled.connection_id) is not None  # still connected

        delivered, latest, messages = await read_until_converged(stalled)
        assert delivered == stalled.published  # every event accounted for exactly once
        assert latest == stalled.final  # converged on the newest values
        # The 300 rounds published while stalled cost a couple of messages, not 300: the
        # server kept one coalesced state (one entry per symbol), not a queue.
        assert stats.messages_delivered - sent_before <= 3
        assert messages <= rounds + 3
    assert " ERROR " not in log_lines.getvalue()


async def test_a_stalled_client_is_closed_after_the_heartbeat_timeout(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await narrow_app(
        app_client,
        batch_window_ms=0,
        heartbeat_interval_ms=100,
        heartbeat_timeout_ms=300,
        shutdown_timeout_s=1,
    )
    alice = await session_for(client, "alice")
    manager = client.app[STREAM_KEY]
    async with stalled_client(client, alice) as stalled:
        await fill_until_stuck(client, alice, stalled)
        loop = asyncio.get_running_loop()
        stuck_at = loop.time()
        await until(lambda: manager.connection(stalled.connection_id) is None, 3)
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
    client = await narrow_app(app_client, batch_window_ms=0)
    alice = await session_for(client, "alice")
    manager = client.app[STREAM_KEY]
    async with stalled_client(client, alice) as stalled:
        await fill_until_stuck(client, alice, stalled)
        conn_id = stalled.connection_id
        # Leaving the block drops the client's socket while the server's writer is parked.
    await until(lambda: manager.connection(conn_id) is None)
    publish(client, "position:updated", position(alice.user_id, "AAPL"))
    await until(lambda: manager.pending_timers() == 0)
    assert " ERROR " not in log_lines.getvalue()


async def test_a_neighbour_keeps_receiving_while_another_tab_is_stalled(
    app_client: ClientFactory,
) -> None:
    client = await narrow_app(app_client, batch_window_ms=20)
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
    client = await narrow_app(app_client, batch_window_ms=0, shutdown_timeout_s=1)
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
    """Replies to a client that never reads cannot pile up: past the queued-frame limit the
    connection is dropped (the rate limit is raised here to get there fast)."""
    client = await narrow_app(app_client, batch_window_ms=0, ws_rate_limit_messages=1000)
    alice = await session_for(client, "alice")
    manager = client.app[STREAM_KEY]
    async with stalled_client(client, alice) as stalled:
        await fill_until_stuck(client, alice, stalled)
        with contextlib.suppress(ConnectionError):
            for _ in range(1000):
                if manager.connection(stalled.connection_id) is None:
                    break
                await stalled.ws.send_json({"type": "ping"})
                await asyncio.sleep(0)
        await until(lambda: manager.connection(stalled.connection_id) is None)
    assert "code=1008, reason=Client is not reading" in log_lines.getvalue()


async def test_a_slow_but_healthy_reader_of_a_continuous_stream_is_kept(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    """The server's writer is busy all the time (a big portfolio whose prices never stop, a
    narrow link), yet the client keeps reading and answers pings: neither the heartbeat nor
    the stuck-writer rule may close it."""
    timeout_s = 1.0
    client = await narrow_app(
        app_client,
        batch_window_ms=0,
        heartbeat_interval_ms=100,
        heartbeat_timeout_ms=int(timeout_s * 1000),
    )
    alice = await session_for(client, "alice")
    manager = client.app[STREAM_KEY]
    big_portfolio = [f"BIG{i}" for i in range(150)]  # ~50 KB per batch
    async with stalled_client(client, alice) as reader:
        received = 0

        async def read_slowly() -> None:
            nonlocal received
            while True:
                frame = await reader.ws.receive()
                if frame.opcode == PING:  # it answers pings as it reads
                    await reader.ws.send(PONG, frame.payload)
                elif frame.opcode == TEXT:
                    received += 1
                    await asyncio.sleep(0.05)  # a batch every 50 ms gets through the link
                else:
                    return

        reading = asyncio.ensure_future(read_slowly())
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            rounds = 0
            while loop.time() - started < 3 * timeout_s:
                # A batch every 10 ms: more than the link carries, so the writer never idles.
                await publish_round(client, alice, reader, rounds, big_portfolio, pause_s=0.01)
                rounds += 1
                assert manager.connection(reader.connection_id) is not None, "it was closed"
                assert not reading.done(), "the connection was closed"
        finally:
            reading.cancel()
        assert received > 10
        # The link was rarely idle: a round published while the writer is busy folds into
        # the coalesced state instead of becoming a message of its own.
        assert received < rounds / 2, (received, rounds)
    assert "Closing unresponsive client" not in log_lines.getvalue()


async def test_pings_are_queued_behind_a_busy_writer_and_sent_before_the_coalesced_batch(
    app_client: ClientFactory,
) -> None:
    """A ping that falls due while the writer waits on the socket is queued, not skipped: a
    client that is merely slow still hears pings, ahead of the coalesced state."""
    interval_s = 0.1
    client = await narrow_app(
        app_client,
        batch_window_ms=0,
        heartbeat_interval_ms=int(interval_s * 1000),
        heartbeat_timeout_ms=10_000,
    )
    alice = await session_for(client, "alice")
    manager = client.app[STREAM_KEY]
    async with stalled_client(client, alice) as stalled:
        await fill_until_stuck(client, alice, stalled)
        # Pings fall due on the server's clock; from outside there is nothing to await.
        await asyncio.sleep(3 * interval_s)
        pinged_before_final = False
        async with asyncio.timeout(5):
            while True:
                frame = await stalled.ws.receive()
                if frame.opcode == PING:
                    pinged_before_final = True
                    await stalled.ws.send(PONG, frame.payload)
                    continue
                message = frame.json()
                pnls = {p["symbol"]: p["unrealizedPnl"] for p in message["positions"]}
                if all(pnls.get(s) == stalled.final[s] for s in SYMBOLS):
                    break  # the coalesced latest state
        assert pinged_before_final
        await stalled.ws.send_json({"type": "ping"})
        assert (await stalled.ws.receive_json())["type"] == "pong"
        assert manager.connection(stalled.connection_id) is not None
