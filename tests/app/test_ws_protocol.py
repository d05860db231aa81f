"""The `/ws/portfolio` conversation (SPEC §4): subscribe/unsubscribe/ping/resync, snapshots,
seq, and every bad-input case, without harming the bad client's neighbours."""

from __future__ import annotations

import aiohttp

from tests.app.support import (
    ALL_CHANNELS,
    Client,
    Session,
    account,
    connect,
    nothing_arrives,
    order,
    position,
    receive,
    receive_close,
    receive_type,
    session_for,
    subscribe,
)
from tests.conftest import ClientFactory, publish


async def seeded(app_client: ClientFactory, **overrides: object) -> tuple[Client, Session]:
    """An app where alice already holds AAPL and MSFT, one open order and an account."""
    client = await app_client(**overrides)
    alice = await session_for(client, "alice")
    publish(client, "position:updated", position(alice.user_id, "MSFT", pnl="12.00"))
    publish(client, "position:updated", position(alice.user_id, "AAPL", pnl="550.00"))
    publish(client, "order:updated", order(alice.user_id, "o-1", status="new"))
    publish(client, "account:updated", account(alice.user_id, equity="104550.00"))
    return client, alice


async def test_subscribe_answers_subscribed_then_a_snapshot_of_current_state(
    app_client: ClientFactory,
) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    subscribed, snapshot = await subscribe(ws, ALL_CHANNELS)
    assert subscribed == {"type": "subscribed", "channels": ["positions", "orders", "account"]}
    assert snapshot["seq"] == 1
    assert [p["symbol"] for p in snapshot["positions"]] == ["AAPL", "MSFT"]
    assert snapshot["positions"][0]["unrealizedPnl"] == "550.00"
    assert [o["orderId"] for o in snapshot["orders"]] == ["o-1"]
    assert snapshot["account"]["equity"] == "104550.00"
    assert "userId" not in snapshot["positions"][0]
    await ws.close()


async def test_a_snapshot_only_holds_the_newly_subscribed_channels(
    app_client: ClientFactory,
) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    _, first = await subscribe(ws, ["positions"])
    assert set(first) == {"type", "seq", "positions"}
    subscribed, second = await subscribe(ws, ["positions", "account"])
    assert subscribed["channels"] == ["positions", "account"]
    assert set(second) == {"type", "seq", "account"} and second["seq"] == 2
    await ws.close()


async def test_resubscribing_an_active_channel_sends_no_snapshot(app_client: ClientFactory) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions"])
    await ws.send_json({"type": "subscribe", "channels": ["positions"]})
    assert await receive(ws) == {"type": "subscribed", "channels": ["positions"]}
    await nothing_arrives(ws, 0.1)
    await ws.close()


async def test_an_account_snapshot_is_null_before_any_account_event(
    app_client: ClientFactory,
) -> None:
    client = await app_client()
    bob = await session_for(client, "bob")
    ws, _ = await connect(client, bob)
    _, snapshot = await subscribe(ws, ALL_CHANNELS)
    assert snapshot == {
        "type": "snapshot",
        "seq": 1,
        "positions": [],
        "orders": [],
        "account": None,
    }
    await ws.close()


async def test_unsubscribe_stops_that_channel(app_client: ClientFactory) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions", "orders"])
    await ws.send_json({"type": "unsubscribe", "channels": ["positions"]})
    assert await receive(ws) == {"type": "subscribed", "channels": ["orders"]}
    publish(client, "position:updated", position(alice.user_id, "AAPL", pnl="1.00"))
    await nothing_arrives(ws, 0.15)  # the batch window is 50 ms
    publish(client, "order:updated", order(alice.user_id, "o-1", status="filled"))
    batch = await receive(ws)
    assert batch["type"] == "batch" and "positions" not in batch
    assert [o["status"] for o in batch["orders"]] == ["filled"]
    await ws.close()


async def test_ping_is_answered_with_pong(app_client: ClientFactory) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    await ws.send_json({"type": "ping"})
    pong = await receive(ws)
    assert pong["type"] == "pong"
    await ws.close()


async def test_resync_sends_a_fresh_snapshot_of_every_subscribed_channel(
    app_client: ClientFactory,
) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions", "account"])
    publish(client, "position:updated", position(alice.user_id, "AAPL", pnl="600.00"))
    batch = await receive_type(ws, "batch")
    await ws.send_json({"type": "resync"})
    snapshot = await receive(ws)
    assert snapshot["type"] == "snapshot"
    assert set(snapshot) == {"type", "seq", "positions", "account"}
    assert {p["symbol"]: p["unrealizedPnl"] for p in snapshot["positions"]}["AAPL"] == "600.00"
    assert snapshot["seq"] == batch["seq"] + 1
    await ws.close()


async def test_seq_increases_by_one_per_snapshot_and_batch(app_client: ClientFactory) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    seqs = [(await subscribe(ws, ["positions"]))[1]["seq"]]
    seqs.append((await subscribe(ws, ["orders"]))[1]["seq"])
    for pnl in ("1.00", "2.00"):
        publish(client, "position:updated", position(alice.user_id, "AAPL", pnl=pnl))
        seqs.append((await receive_type(ws, "batch"))["seq"])
    await ws.send_json({"type": "ping"})  # pongs and errors carry no seq
    assert "seq" not in await receive(ws)
    await ws.send_json({"type": "resync"})
    seqs.append((await receive(ws))["seq"])
    assert seqs == [1, 2, 3, 4, 5]
    await ws.close()


async def expect_error(ws: aiohttp.ClientWebSocketResponse, code: str) -> dict[str, object]:
    error = await receive(ws)
    assert error["type"] == "error" and error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


async def still_alive(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_json({"type": "ping"})
    assert (await receive(ws))["type"] == "pong"


async def test_invalid_json_is_an_error_not_a_disconnect(app_client: ClientFactory) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    await ws.send_str("{this is not json")
    await expect_error(ws, "invalid_json")
    await still_alive(ws)
    await ws.close()


async def test_unknown_type_is_an_error(app_client: ClientFactory) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    await ws.send_json({"type": "sell_everything"})
    await expect_error(ws, "unknown_type")
    await still_alive(ws)
    await ws.close()


async def test_unknown_channels_are_reported_and_known_ones_still_apply(
    app_client: ClientFactory,
) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    await ws.send_json({"type": "subscribe", "channels": ["positions", "trades", "account"]})
    error = await expect_error(ws, "unknown_channel")
    assert "trades" in str(error["message"])
    assert await receive(ws) == {"type": "subscribed", "channels": ["positions", "account"]}
    snapshot = await receive(ws)
    assert snapshot["type"] == "snapshot" and set(snapshot) == {
        "type",
        "seq",
        "positions",
        "account",
    }
    await ws.close()


async def test_binary_frames_are_unsupported(app_client: ClientFactory) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    await ws.send_bytes(b'{"type":"ping"}')
    await expect_error(ws, "unsupported_frame")
    await still_alive(ws)
    await ws.close()


async def test_a_large_but_legal_frame_is_only_an_error(app_client: ClientFactory) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    await ws.send_str("x" * (60 * 1024))
    await expect_error(ws, "invalid_json")
    await still_alive(ws)
    await ws.close()


async def test_a_frame_over_64_kib_closes_1009(app_client: ClientFactory) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    await ws.send_str('{"type":"ping","pad":"' + "x" * (64 * 1024) + '"}')
    msg = await receive_close(ws)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1009


async def test_fifty_messages_in_ten_seconds_are_fine_the_51st_closes_1008(
    app_client: ClientFactory,
) -> None:
    client, alice = await seeded(app_client)
    ws, _ = await connect(client, alice)
    for _ in range(50):
        await ws.send_json({"type": "ping"})
    for _ in range(50):
        assert (await receive(ws))["type"] == "pong"
    await ws.send_json({"type": "ping"})
    msg = await receive_close(ws)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (1008, "Rate limit exceeded")


async def neighbours(
    client: Client, alice: Session
) -> tuple[aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse, Session]:
    """Another tab of alice's and a tab of bob's, both subscribed to positions."""
    bob = await session_for(client, "bob")
    sibling, _ = await connect(client, alice)
    await subscribe(sibling, ["positions"])
    stranger, _ = await connect(client, bob)
    await subscribe(stranger, ["positions"])
    return sibling, stranger, bob


async def assert_neighbours_still_served(
    client: Client,
    alice: Session,
    bob: Session,
    sibling: aiohttp.ClientWebSocketResponse,
    stranger: aiohttp.ClientWebSocketResponse,
) -> None:
    publish(client, "position:updated", position(alice.user_id, "AAPL", pnl="777.00"))
    publish(client, "position:updated", position(bob.user_id, "TSLA", pnl="-5.00"))
    mine = await receive_type(sibling, "batch")
    theirs = await receive_type(stranger, "batch")
    assert [p["unrealizedPnl"] for p in mine["positions"]] == ["777.00"]
    assert [p["symbol"] for p in theirs["positions"]] == ["TSLA"]


async def test_bad_input_does_not_disturb_other_connections(app_client: ClientFactory) -> None:
    client, alice = await seeded(app_client)
    sibling, stranger, bob = await neighbours(client, alice)
    bad, _ = await connect(client, alice)
    await bad.send_str("{nope")
    await bad.send_bytes(b"\x00\x01")
    await bad.send_json({"type": "launch"})
    for code in ("invalid_json", "unsupported_frame", "unknown_type"):
        await expect_error(bad, code)
    await assert_neighbours_still_served(client, alice, bob, sibling, stranger)


async def test_an_oversized_frame_closes_only_its_own_connection(app_client: ClientFactory) -> None:
    client, alice = await seeded(app_client)
    sibling, stranger, bob = await neighbours(client, alice)
    bad, _ = await connect(client, alice)
    await bad.send_str("x" * (65 * 1024))
    assert (await receive_close(bad)).data == 1009
    await assert_neighbours_still_served(client, alice, bob, sibling, stranger)


async def test_a_rate_limited_client_is_closed_alone(app_client: ClientFactory) -> None:
    client, alice = await seeded(app_client)
    sibling, stranger, bob = await neighbours(client, alice)
    bad, _ = await connect(client, alice)
    for _ in range(60):
        await bad.send_json({"type": "resync"})
    msg = await receive_close(bad)
    assert (msg.data, msg.extra) == (1008, "Rate limit exceeded")
    await assert_neighbours_still_served(client, alice, bob, sibling, stranger)
