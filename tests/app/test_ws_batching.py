"""Per-user batching on the wire (SPEC §4): coalescing, channel filtering, a timer that the
first event starts and later events do not re-arm, and BATCH_WINDOW_MS=0."""

from __future__ import annotations

import asyncio
import io

from app.keys import STREAM_KEY
from tests.app.support import (
    account,
    closed,
    connect,
    nothing_arrives,
    order,
    position,
    receive,
    session_for,
    subscribe,
    trade,
    until,
)
from tests.conftest import ClientFactory, publish

MARGIN_S = 0.25  # scheduling slack allowed on top of the batch window (loaded CI machines)


async def test_a_window_of_events_arrives_as_one_coalesced_batch(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await app_client(batch_window_ms=100)
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions", "orders", "account"])
    for pnl in ("1.00", "2.00", "3.00"):
        publish(client, "position:updated", position(alice.user_id, "AAPL", pnl=pnl))
    publish(client, "position:updated", position(alice.user_id, "MSFT", pnl="9.00"))
    for status in ("new", "partially_filled", "filled"):
        publish(client, "order:updated", order(alice.user_id, "o-1", status=status))
    publish(client, "account:updated", account(alice.user_id, equity="1.00"))
    publish(client, "account:updated", account(alice.user_id, equity="2.00"))
    batch = await receive(ws)
    assert batch["type"] == "batch" and batch["seq"] == 2
    assert {p["symbol"]: p["unrealizedPnl"] for p in batch["positions"]} == {
        "AAPL": "3.00",
        "MSFT": "9.00",
    }
    assert [(o["orderId"], o["status"]) for o in batch["orders"]] == [("o-1", "filled")]
    assert batch["account"]["equity"] == "2.00"
    assert batch["closedPositions"] == []
    assert batch["eventCount"] == 9
    assert isinstance(batch["ts"], str) and batch["ts"].endswith("Z")
    await nothing_arrives(ws, 0.15)
    flushed = [line for line in log_lines.getvalue().splitlines() if "Batch flushed" in line]
    assert len(flushed) == 1
    assert flushed[0].endswith(
        f"userId={alice.user_id}, positionUpdates=2, orderUpdates=1, totalEvents=9"
    )
    await ws.close()


async def test_closed_positions_are_listed_by_symbol(app_client: ClientFactory) -> None:
    client = await app_client()
    alice = await session_for(client, "alice")
    publish(client, "position:updated", position(alice.user_id, "AAPL"))
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions"])
    publish(client, "position:updated", position(alice.user_id, "AAPL", pnl="1.00"))
    publish(client, "position:closed", closed(alice.user_id, "AAPL"))
    batch = await receive(ws)
    assert batch["positions"] == [] and batch["closedPositions"] == ["AAPL"]
    assert batch["eventCount"] == 2
    await ws.close()


async def test_each_connection_gets_only_its_channels(app_client: ClientFactory) -> None:
    client = await app_client()
    alice = await session_for(client, "alice")
    tabs = {}
    for channel in ("positions", "orders", "account"):
        ws, _ = await connect(client, alice)
        await subscribe(ws, [channel])
        tabs[channel] = ws
    idle, _ = await connect(client, alice)  # subscribed to nothing
    publish(client, "position:updated", position(alice.user_id, "AAPL"))
    publish(client, "trade:executed", trade(alice.user_id))
    publish(client, "order:updated", order(alice.user_id, "o-1"))
    publish(client, "account:updated", account(alice.user_id))
    positions = await receive(tabs["positions"])
    assert set(positions) == {"type", "seq", "positions", "closedPositions", "eventCount", "ts"}
    assert positions["eventCount"] == 2  # the position update and the trade
    orders = await receive(tabs["orders"])
    assert set(orders) == {"type", "seq", "orders", "eventCount", "ts"}
    assert orders["eventCount"] == 1
    accounts = await receive(tabs["account"])
    assert set(accounts) == {"type", "seq", "account", "eventCount", "ts"}
    await nothing_arrives(idle, 0.1)
    publish(client, "order:updated", order(alice.user_id, "o-2"))
    await receive(tabs["orders"])
    await nothing_arrives(tabs["positions"], 0.1)  # no batch when its channels saw nothing
    for ws in (*tabs.values(), idle):
        await ws.close()


async def test_every_tab_of_the_user_gets_the_batch(app_client: ClientFactory) -> None:
    client = await app_client()
    alice = await session_for(client, "alice")
    tabs = []
    for _ in range(3):
        ws, _ = await connect(client, alice)
        await subscribe(ws, ["positions"])
        tabs.append(ws)
    publish(client, "position:updated", position(alice.user_id, "AAPL", pnl="42.00"))
    for ws in tabs:
        batch = await receive(ws)
        assert [p["unrealizedPnl"] for p in batch["positions"]] == ["42.00"]
        await ws.close()


async def test_the_first_event_starts_the_timer_and_later_ones_do_not_rearm_it(
    app_client: ClientFactory,
) -> None:
    """Events spread over the window arrive together, no later than window + margin after
    the first one: latency is bounded by the window however busy the user is."""
    window = 0.5
    client = await app_client(batch_window_ms=int(window * 1000))
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions"])
    loop = asyncio.get_running_loop()
    first = loop.time()
    arrival: list[float] = []
    receiving = asyncio.ensure_future(receive(ws))
    receiving.add_done_callback(lambda _: arrival.append(loop.time()))
    for i in range(4):
        if i:
            await asyncio.sleep(0.15)  # spread the events across the window
        publish(client, "position:updated", position(alice.user_id, f"S{i}"))
    batch = await receiving
    elapsed = arrival[0] - first
    assert batch["eventCount"] == 4
    assert sorted(p["symbol"] for p in batch["positions"]) == ["S0", "S1", "S2", "S3"]
    assert window - 0.02 <= elapsed <= window + MARGIN_S, elapsed
    await nothing_arrives(ws, 0.1)
    await ws.close()


async def test_each_user_has_their_own_timer(app_client: ClientFactory) -> None:
    window = 0.3
    client = await app_client(batch_window_ms=int(window * 1000))
    alice = await session_for(client, "alice")
    bob = await session_for(client, "bob")
    alice_ws, _ = await connect(client, alice)
    bob_ws, _ = await connect(client, bob)
    await subscribe(alice_ws, ["positions"])
    await subscribe(bob_ws, ["positions"])
    loop = asyncio.get_running_loop()
    start = loop.time()
    publish(client, "position:updated", position(alice.user_id, "AAPL"))
    await asyncio.sleep(0.15)
    bob_start = loop.time()
    publish(client, "position:updated", position(bob.user_id, "TSLA"))
    await receive(alice_ws)
    alice_at = loop.time() - start
    await receive(bob_ws)
    bob_at = loop.time() - bob_start
    assert window - 0.02 <= alice_at <= window + MARGIN_S, alice_at
    assert window - 0.02 <= bob_at <= window + MARGIN_S, bob_at  # not flushed with alice's
    await alice_ws.close()
    await bob_ws.close()


async def test_a_new_window_starts_with_the_next_event(app_client: ClientFactory) -> None:
    client = await app_client(batch_window_ms=100)
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions"])
    for pnl in ("1.00", "2.00"):
        publish(client, "position:updated", position(alice.user_id, "AAPL", pnl=pnl))
        batch = await receive(ws)
        assert batch["eventCount"] == 1
        assert batch["positions"][0]["unrealizedPnl"] == pnl
    await ws.close()


async def test_window_zero_sends_each_event_at_once(app_client: ClientFactory) -> None:
    client = await app_client(batch_window_ms=0)
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions"])
    manager = client.app[STREAM_KEY]
    loop = asyncio.get_running_loop()
    for i in range(5):
        started = loop.time()
        publish(client, "position:updated", position(alice.user_id, "AAPL", pnl=f"{i}.00"))
        assert manager.pending_timers() == 0
        batch = await receive(ws)
        assert loop.time() - started < MARGIN_S
        assert batch["eventCount"] == 1
        assert batch["positions"][0]["unrealizedPnl"] == f"{i}.00"
        assert batch["seq"] == i + 2
    await ws.close()


async def test_events_for_a_user_without_connections_are_not_buffered(
    app_client: ClientFactory,
) -> None:
    client = await app_client(batch_window_ms=5000)
    alice = await session_for(client, "alice")
    manager = client.app[STREAM_KEY]
    publish(client, "position:updated", position(alice.user_id, "AAPL", pnl="5.00"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert manager.pending_timers() == 0
    ws, _ = await connect(client, alice)  # the snapshot carries what was missed
    _, snapshot = await subscribe(ws, ["positions"])
    assert snapshot["positions"][0]["unrealizedPnl"] == "5.00"
    await ws.close()


async def test_a_users_pending_batch_is_dropped_with_their_last_connection(
    app_client: ClientFactory,
) -> None:
    client = await app_client(batch_window_ms=5000)
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions"])
    manager = client.app[STREAM_KEY]
    publish(client, "position:updated", position(alice.user_id, "AAPL"))
    await until(lambda: manager.pending_timers() == 1)
    await ws.close()
    await until(lambda: manager.active_connections == 0)
    assert manager.pending_timers() == 0


async def test_window_zero_sends_a_burst_delivered_together_as_one_message(
    app_client: ClientFactory,
) -> None:
    """No timer with BATCH_WINDOW_MS=0, yet events published in one loop turn (a broker
    burst) leave together: a slow link is not flooded with one frame per event."""
    client = await app_client(batch_window_ms=0)
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions"])
    for n in range(20):
        publish(client, "position:updated", position(alice.user_id, f"S{n}", pnl=f"{n}.00"))
    batch = await receive(ws)
    assert batch["type"] == "batch"
    assert batch["eventCount"] == 20
    assert len(batch["positions"]) == 20
    await nothing_arrives(ws, 0.1)
    await ws.close()


async def test_batches_arrive_intact_with_permessage_deflate(app_client: ClientFactory) -> None:
    """With WS_COMPRESSION=true every frame goes through aiohttp's compressor (no raw writes)."""
    client = await app_client(batch_window_ms=20, ws_compression=True)
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice, compress=15)
    assert ws.compress == 15
    await subscribe(ws, ["positions"])
    for n in range(3):
        publish(client, "position:updated", position(alice.user_id, "AAPL", pnl=f"{n}.00"))
    batch = await receive(ws)
    assert (batch["type"], batch["seq"], batch["eventCount"]) == ("batch", 2, 3)
    assert batch["positions"][0]["unrealizedPnl"] == "2.00"
    await ws.close()
