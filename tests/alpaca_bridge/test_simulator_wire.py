"""The simulated broker's websocket and REST protocols, frame by frame, over raw aiohttp."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import msgpack
import orjson
import pytest
from aiohttp import WSMsgType

from alpaca_bridge.simulator import SimulatedBroker

KEY, SECRET = "PKWIRE1", "wire-secret"
OTHER_KEY, OTHER_SECRET = "PKWIRE2", "other-secret"
LEGACY_AUTH = {"action": "authenticate", "data": {"key_id": KEY, "secret_key": SECRET}}
DOCS_AUTH = {"action": "auth", "key": KEY, "secret": SECRET}
LISTEN = {"action": "listen", "data": {"streams": ["trade_updates"]}}
MSGPACK = {"Content-Type": "application/msgpack"}
D = Decimal


@pytest.fixture
async def sim_broker() -> AsyncIterator[SimulatedBroker]:
    broker = SimulatedBroker(tick_interval_s=0, order_interval_s=0, seed=3, fill_delay_s=0.005)
    broker.add_account(KEY, SECRET, label="alice")
    broker.add_account(OTHER_KEY, OTHER_SECRET, label="bob")
    await broker.start()
    yield broker
    await broker.stop()


@pytest.fixture
async def sim_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def frame(
    ws: aiohttp.ClientWebSocketResponse, kind: WSMsgType = WSMsgType.BINARY
) -> dict[str, Any]:
    msg = await ws.receive(timeout=5)
    assert msg.type == kind, msg
    decoded: dict[str, Any] = orjson.loads(msg.data)
    return decoded


async def listening(
    session: aiohttp.ClientSession, broker: SimulatedBroker, auth: dict[str, Any] = DOCS_AUTH
) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(broker.trading_stream_url)
    await ws.send_json(auth)
    assert (await frame(ws))["data"]["status"] == "authorized"
    await ws.send_json(LISTEN)
    assert (await frame(ws))["stream"] == "listening"
    return ws


@pytest.mark.parametrize("auth", [LEGACY_AUTH, DOCS_AUTH], ids=["alpaca-py", "docs"])
async def test_trading_stream_handshake_has_no_welcome_and_answers_in_binary(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession, auth: dict[str, Any]
) -> None:
    async with sim_http.ws_connect(sim_broker.trading_stream_url) as ws:
        await ws.send_json({"action": "listen", "data": {"streams": ["trade_updates"]}})
        assert await frame(ws) == {
            "stream": "authorization",
            "data": {"status": "unauthorized", "action": "listen"},
        }
        await ws.send_json(auth)
        assert await frame(ws) == {
            "stream": "authorization",
            "data": {"status": "authorized", "action": "authenticate"},
        }
        await ws.send_json({"action": "listen", "data": {"streams": ["trade_updates", "news"]}})
        assert await frame(ws) == {"stream": "listening", "data": {"streams": ["trade_updates"]}}


async def test_bad_secret_is_answered_unauthorized_then_closed(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession
) -> None:
    async with sim_http.ws_connect(sim_broker.trading_stream_url) as ws:
        await ws.send_json({"action": "auth", "key": KEY, "secret": "nope"})
        reply = await frame(ws)
        assert reply["data"]["status"] == "unauthorized"
        assert reply["data"]["message"] == "access key verification failed"
        assert (await ws.receive(timeout=5)).type == WSMsgType.CLOSE
        assert ws.close_code == 1008


async def test_auth_behaviour_reject_and_silent(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession
) -> None:
    sim_broker.set_auth_behaviour(KEY, "reject")
    async with sim_http.ws_connect(sim_broker.trading_stream_url) as ws:
        await ws.send_json(DOCS_AUTH)
        assert (await frame(ws))["data"]["status"] == "unauthorized"
    sim_broker.set_auth_behaviour(KEY, "silent")
    async with sim_http.ws_connect(sim_broker.trading_stream_url) as ws:
        await ws.send_json(DOCS_AUTH)
        with pytest.raises(TimeoutError):
            await ws.receive(timeout=0.3)
    sim_broker.set_auth_behaviour(KEY, "ok")
    await (await listening(sim_http, sim_broker)).close()


async def test_events_reach_listeners_only_and_text_frames_on_request(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession
) -> None:
    alice = await listening(sim_http, sim_broker)
    bob = await listening(
        sim_http, sim_broker, {"action": "auth", "key": OTHER_KEY, "secret": OTHER_SECRET}
    )
    await sim_broker.submit_order(KEY, "AAPL", "buy", D(1))
    assert (await frame(alice))["data"]["event"] == "new"
    assert (await frame(alice))["data"]["event"] == "fill"
    sim_broker.set_trading_frame_type("text")
    order = await sim_broker.submit_order(OTHER_KEY, "MSFT", "buy", D(2))
    update = await frame(bob, WSMsgType.TEXT)
    assert update["data"]["order"]["id"] == order["id"]
    assert (await frame(bob, WSMsgType.TEXT))["data"]["event"] == "fill"
    sim_broker.set_trading_frame_type("binary")
    sim_broker.send_trading_heartbeat(OTHER_KEY)
    heartbeat = await bob.receive(timeout=5)
    assert (heartbeat.type, heartbeat.data) == (WSMsgType.BINARY, b"\x01")
    sim_broker.send_trading_frame(
        KEY, {"stream": "trade_updates", "data": {"event": "done_for_day"}}
    )
    assert (await frame(alice))["data"] == {"event": "done_for_day"}, "alice never saw bob's"
    await alice.close()
    await bob.close()


async def test_duplicate_execution_resend_repeats_the_same_execution_id(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession
) -> None:
    ws = await listening(sim_http, sim_broker)
    await sim_broker.submit_order(KEY, "AMD", "buy", D(4))
    await frame(ws)
    original = await frame(ws)
    assert sim_broker.resend_last_fill(KEY) is not None
    assert await frame(ws) == original
    await ws.close()


async def test_second_connection_for_a_key_is_refused(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession
) -> None:
    first = await listening(sim_http, sim_broker)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await sim_http.ws_connect(sim_broker.trading_stream_url, headers={"APCA-API-KEY-ID": KEY})
    assert refused.value.status == 429
    async with sim_http.ws_connect(sim_broker.trading_stream_url) as second:
        await second.send_json(DOCS_AUTH)  # a key named only in-band is refused after auth
        assert (await second.receive(timeout=5)).type == WSMsgType.CLOSE
        assert second.close_code == 1008
    assert sim_broker.trading_connections(KEY) == 1
    await first.close()


@pytest.mark.parametrize("code", [None, 1000, 1001, 1011], ids=["abort", "1000", "1001", "1011"])
async def test_dropped_stream_replays_nothing_but_rest_has_the_missed_fill(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession, code: int | None
) -> None:
    ws = await listening(sim_http, sim_broker)
    if code is None:
        sim_broker.drop_trading_streams(KEY, how="abort")
    else:
        sim_broker.drop_trading_streams(KEY, how="close", code=code)
    closed = await ws.receive(timeout=5)
    if code is None:  # no close frame: the client only sees the connection vanish
        assert closed.type in (WSMsgType.CLOSED, WSMsgType.ERROR)
    else:
        assert (closed.type, ws.close_code) == (WSMsgType.CLOSE, code)
    await asyncio.wait_for(sim_broker.wait_trading_disconnected(KEY), 5)

    missed = await sim_broker.submit_order(KEY, "GOOGL", "buy", D(3))
    await asyncio.wait_for(sim_broker.wait_trade_updates(KEY, 1, event="fill"), 5)
    ws = await listening(sim_http, sim_broker)
    later = await sim_broker.submit_order(KEY, "META", "buy", D(1))
    assert (await frame(ws))["data"]["order"]["id"] == later["id"], "no replay of the gap"
    [order] = [o for o in sim_broker.orders(KEY) if o["id"] == missed["id"]]
    assert (order["status"], order["filled_qty"]) == ("filled", "3")
    assert any(p["symbol"] == "GOOGL" and p["qty"] == "3" for p in sim_broker.positions(KEY))
    await ws.close()


async def test_held_slot_refuses_a_prompt_reconnect_with_429(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession
) -> None:
    ws = await listening(sim_http, sim_broker)
    sim_broker.drop_trading_streams(KEY, how="abort", hold_s=30)
    await ws.receive(timeout=5)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await sim_http.ws_connect(sim_broker.trading_stream_url, headers={"APCA-API-KEY-ID": KEY})
    assert refused.value.status == 429


async def test_data_stream_speaks_msgpack_with_timestamp_ticks(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession
) -> None:
    async with sim_http.ws_connect(sim_broker.data_stream_url, headers=MSGPACK) as ws:

        async def receive() -> list[dict[str, Any]]:
            msg = await ws.receive(timeout=5)
            assert msg.type == WSMsgType.BINARY
            decoded: list[dict[str, Any]] = msgpack.unpackb(msg.data)
            return decoded

        assert await receive() == [{"T": "success", "msg": "connected"}]
        await ws.send_bytes(msgpack.packb({"action": "subscribe", "trades": ["AAPL"]}))
        assert await receive() == [{"T": "error", "code": 401, "msg": "not authenticated"}]
        await ws.send_bytes(msgpack.packb({"action": "auth", "key": KEY, "secret": SECRET}))
        assert await receive() == [{"T": "success", "msg": "authenticated"}]
        await ws.send_bytes(
            msgpack.packb({"action": "subscribe", "trades": ["AAPL", "MSFT"], "quotes": ["AAPL"]})
        )
        assert await receive() == [
            {
                "T": "subscription",
                "trades": ["AAPL", "MSFT"],
                "quotes": ["AAPL"],
                "bars": [],
                "updatedBars": [],
                "dailyBars": [],
                "statuses": [],
                "lulds": [],
                "corrections": ["AAPL", "MSFT"],
                "cancelErrors": ["AAPL", "MSFT"],
            }
        ]
        sim_broker.set_price("NVDA", D("140"))
        sim_broker.set_price("AAPL", D("231.07"))
        trade, quote = await receive()
        assert {k: v for k, v in trade.items() if k not in ("i", "s", "t")} == {
            "T": "t",
            "S": "AAPL",
            "x": "V",
            "p": 231.07,
            "c": ["@"],
            "z": "C",
        }
        assert isinstance(trade["t"], msgpack.Timestamp) and trade["t"].to_datetime().tzinfo
        assert quote["T"] == "q" and quote["bp"] < 231.07 < quote["ap"]
        await ws.send_bytes(
            msgpack.packb({"action": "unsubscribe", "trades": ["AAPL"], "quotes": ["AAPL"]})
        )
        assert (await receive())[0]["trades"] == ["MSFT"]
        sim_broker.set_price("AAPL", D("232"))
        sim_broker.set_price("MSFT", D("402"))
        [only] = await receive()
        assert (only["S"], only["p"]) == ("MSFT", 402.0)


async def test_data_stream_auth_failures_and_json_mode(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession
) -> None:
    async with sim_http.ws_connect(sim_broker.data_stream_url, headers=MSGPACK) as ws:
        await ws.receive(timeout=5)
        await ws.send_bytes(msgpack.packb({"action": "auth", "key": KEY, "secret": "bad"}))
        reply = msgpack.unpackb((await ws.receive(timeout=5)).data)
        assert reply == [{"T": "error", "code": 402, "msg": "auth failed"}]
        assert (await ws.receive(timeout=5)).type == WSMsgType.CLOSE
    async with sim_http.ws_connect(sim_broker.data_stream_url) as ws:  # no msgpack header
        assert await frame(ws, WSMsgType.TEXT) == [{"T": "success", "msg": "connected"}]
        await ws.send_json({"action": "auth", "key": KEY, "secret": SECRET})
        assert await frame(ws, WSMsgType.TEXT) == [{"T": "success", "msg": "authenticated"}]
        async with sim_http.ws_connect(sim_broker.data_stream_url) as second:
            await frame(second, WSMsgType.TEXT)
            await second.send_json({"action": "auth", "key": KEY, "secret": SECRET})
            assert await frame(second, WSMsgType.TEXT) == [
                {"T": "error", "code": 406, "msg": "connection limit exceeded"}
            ]
        await ws.send_json({"action": "subscribe", "trades": ["TSLA"]})
        await frame(ws, WSMsgType.TEXT)
        sim_broker.set_price("TSLA", D("250.5"))
        [tick] = await frame(ws, WSMsgType.TEXT)
        assert (tick["S"], tick["p"]) == ("TSLA", 250.5) and tick["t"].endswith("Z")


async def test_rest_filters_orders_and_pages_fill_activities(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession
) -> None:
    headers = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
    for symbol in ("AAPL", "MSFT", "NVDA"):
        await sim_broker.submit_order(KEY, symbol, "buy", D(1), client_order_id=f"cid-{symbol}")
    await asyncio.wait_for(sim_broker.wait_trade_updates(KEY, 3, event="fill"), 5)

    async def get(path: str, **params: str) -> Any:
        async with sim_http.get(
            sim_broker.base_url + path, params=params, headers=headers
        ) as response:
            return response.status, await response.json()

    status, orders = await get("/v2/orders", status="all", direction="asc")
    assert status == 200 and [o["symbol"] for o in orders] == ["AAPL", "MSFT", "NVDA"]
    _, orders = await get("/v2/orders", status="all", after=orders[0]["submitted_at"], limit="1")
    assert [o["symbol"] for o in orders] == ["NVDA"], "after is exclusive; newest first"
    _, orders = await get("/v2/orders", status="closed", symbols="MSFT,NVDA")
    assert {o["symbol"] for o in orders} == {"MSFT", "NVDA"}
    _, by_client = await get("/v2/orders:by_client_order_id", client_order_id="cid-MSFT")
    assert by_client["symbol"] == "MSFT"
    assert (await get("/v2/orders", limit="501"))[0] == 422

    _, first = await get("/v2/account/activities/FILL", direction="asc", page_size="2")
    _, rest = await get(
        "/v2/account/activities/FILL", direction="asc", page_size="2", page_token=first[-1]["id"]
    )
    assert [a["symbol"] for a in first + rest] == ["AAPL", "MSFT", "NVDA"]
    async with sim_http.delete(
        f"{sim_broker.base_url}/v2/orders/{by_client['id']}", headers=headers
    ) as too_late:
        assert too_late.status == 422 and (await too_late.json())["code"] == 42210000
    async with sim_http.delete(sim_broker.base_url + "/v2/positions/AAPL", headers=headers) as sold:
        closing = await sold.json()
        assert (sold.status, closing["side"], closing["qty"]) == (200, "sell", "1")
    await asyncio.wait_for(sim_broker.wait_trade_updates(KEY, 4, event="fill"), 5)
    assert (await get("/v2/positions/AAPL"))[0] == 404
    async with sim_http.get(sim_broker.base_url + "/v2/account") as anonymous:
        assert anonymous.status == 401
        assert await anonymous.json() == {"code": 40110000, "message": "request is not authorized"}


async def test_stop_closes_connected_clients_promptly(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession
) -> None:
    trading = await listening(sim_http, sim_broker)
    data = await sim_http.ws_connect(sim_broker.data_stream_url, headers=MSGPACK)
    await data.receive(timeout=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sim_broker.stop()
    assert loop.time() - started < 1.0
    for ws in (trading, data):
        assert (await ws.receive(timeout=5)).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)


async def test_withheld_trade_updates_are_delivered_in_the_order_asked(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession
) -> None:
    ws = await listening(sim_http, sim_broker)
    sim_broker.withhold_trade_updates(KEY)
    await sim_broker.submit_order(KEY, "AAPL", "buy", D(2))
    await sim_broker.submit_order(KEY, "MSFT", "buy", D(1))
    await asyncio.wait_for(sim_broker.wait_trade_updates(KEY, 2, event="fill"), 5)
    history = sim_broker.trade_updates(KEY)
    sent = sim_broker.release_trade_updates(KEY, lambda kept: [*reversed(kept), kept[-1]])
    assert len(sent) == 5  # new, fill, new, fill, newest first, then the newest again
    received = [await frame(ws) for _ in sent]
    assert received == sent
    assert [u["data"]["execution_id"] for u in received[:4]] == [
        u["data"]["execution_id"] for u in reversed(history)
    ]
    # Released means delivered live again.
    later = await sim_broker.submit_order(KEY, "TSLA", "buy", D(1))
    assert (await frame(ws))["data"]["order"]["id"] == later["id"]
    await ws.close()


async def test_rest_faults_fail_hang_and_poison_until_cleared(
    sim_broker: SimulatedBroker, sim_http: aiohttp.ClientSession
) -> None:
    base, headers = sim_broker.base_url, {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
    sim_broker.fail_rest(500, api_key=KEY, path="/v2/account")
    sim_broker.hang_rest(path="/v2/positions")
    sim_broker.rewrite_rest(lambda rows: [*rows, {"id": "not-a-uuid"}], path="/v2/orders")
    async with sim_http.get(f"{base}/v2/account", headers=headers) as failed:
        assert (failed.status, (await failed.json())["code"]) == (500, 50000000)
    other = {"APCA-API-KEY-ID": OTHER_KEY, "APCA-API-SECRET-KEY": OTHER_SECRET}
    async with sim_http.get(f"{base}/v2/account", headers=other) as fine:
        assert fine.status == 200, "the rule names one key"
    async with sim_http.get(f"{base}/v2/orders", headers=headers) as poisoned:
        assert await poisoned.json() == [{"id": "not-a-uuid"}]
    held = asyncio.create_task(sim_http.get(f"{base}/v2/positions", headers=headers))
    await asyncio.wait_for(sim_broker.wait_rest_hanging(1), 5)
    assert not held.done()
    sim_broker.clear_rest_faults()
    async with await asyncio.wait_for(held, 5) as served:
        assert (served.status, await served.json()) == (200, [])
    async with sim_http.get(f"{base}/v2/account", headers=headers) as recovered:
        assert recovered.status == 200
    sim_broker.fail_rest(503)  # every REST request, and still no websocket handshake
    ws = await listening(sim_http, sim_broker)
    await ws.close()


async def test_clock_offset_dates_new_orders_in_the_past(sim_broker: SimulatedBroker) -> None:
    sim_broker.set_clock_offset(-120)
    old = await sim_broker.submit_order(KEY, "AAPL", "buy", D(1), type="limit", limit_price=D(1))
    sim_broker.set_clock_offset(0)
    new = await sim_broker.submit_order(KEY, "AAPL", "buy", D(1), type="limit", limit_price=D(1))
    age = datetime.fromisoformat(new["submitted_at"]) - datetime.fromisoformat(old["submitted_at"])
    assert timedelta(seconds=119) < age < timedelta(seconds=125)
