"""The standalone simulated broker steered and observed from another process, over HTTP JSON.

`portfolio-stream simulate` runs as a real subprocess with SIM_CONTROL_TOKEN; every control goes
through ``SimControl`` and every effect is checked from the client side as a node would see it:
aiohttp websockets on the trading and data streams, alpaca-py's TradingClient on REST.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest

from alpaca_bridge.simulator.control_client import SimControl, SimControlError
from tests.ops.conftest import http_status, wait_until
from tests.ops.test_simulate_command import ACCOUNTS, Simulator, simulate_env

pytestmark = pytest.mark.slow

TOKEN = "control-token-for-tests"
(_, ALICE, ALICE_SECRET), (_, BOB, BOB_SECRET) = ACCOUNTS
SECRETS = {ALICE: ALICE_SECRET, BOB: BOB_SECRET}


class Broker:
    def __init__(self, sim: Simulator) -> None:
        self.urls = sim.urls
        self.api_url = sim.urls["ALPACA_API_URL"]
        self.control = SimControl(self.api_url, TOKEN)

    def trading(self, key: str) -> TradingClient:
        return TradingClient(key, SECRETS[key], paper=True, url_override=self.api_url)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    tmp_path = tmp_path_factory.mktemp("simulate")
    sim = Simulator(simulate_env(tmp_path, SIM_CONTROL_TOKEN=TOKEN), tmp_path / "simulate.log")
    try:
        sim.wait_started()
        assert "[SimulatedBroker] Control API enabled" in sim.log()
        yield Broker(sim)
    finally:
        sim.kill()


@pytest.fixture
def broker(running: Broker) -> Iterator[Broker]:
    """The shared broker, put back to its defaults after each test."""
    yield running
    control = running.control
    control.stop_order_flow()
    control.clear_rest_faults()
    control.set_stream_settings(
        trading_single_connection=True, data_single_connection=True, data_dead_slot_hold_s=0
    )
    for key in SECRETS:
        control.refuse_trading(key, 0)
        control.hold_data_slot(key, 0)
        control.drop_trading(key, how="close")
        control.drop_data(key, how="close")
    control.clear_stream_history()


async def eventually(condition: Callable[[], bool], what: str, within_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.05)


# ---- trade_updates ------------------------------------------------------------------------


async def trading_frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=5)
    assert msg.type in (WSMsgType.BINARY, WSMsgType.TEXT), msg
    frame: dict[str, Any] = orjson.loads(msg.data)
    return frame


async def listen(
    http: aiohttp.ClientSession, broker: Broker, key: str
) -> aiohttp.ClientWebSocketResponse:
    """A trade_updates consumer as alpaca-py's: authenticate in-band, then listen."""
    ws = await http.ws_connect(broker.urls["ALPACA_STREAM_URL"])
    await ws.send_str(
        orjson.dumps(
            {"action": "authenticate", "data": {"key_id": key, "secret_key": SECRETS[key]}}
        ).decode()
    )
    assert (await trading_frame(ws))["data"]["status"] == "authorized"
    await ws.send_str(
        orjson.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}).decode()
    )
    assert (await trading_frame(ws))["stream"] == "listening"
    return ws


async def test_a_dropped_stream_is_seen_by_its_consumer_and_reconnects_are_refused(
    broker: Broker,
) -> None:
    control = broker.control
    async with aiohttp.ClientSession() as http:
        ws = await listen(http, broker, ALICE)
        other = await listen(http, broker, BOB)
        assert control.drop_trading(ALICE, how="close", code=1011) == 1
        msg = await ws.receive(timeout=5)
        assert (msg.type, ws.close_code) == (WSMsgType.CLOSE, 1011)

        ws = await listen(http, broker, ALICE)
        assert control.drop_trading(ALICE, how="abort", refuse_s=300) == 1
        msg = await ws.receive(timeout=5)
        assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR)
        assert ws.close_code != 1011  # no close frame: the connection was just cut
        assert not other.closed  # another account's stream is untouched

        # Refused: before the upgrade for a key in the headers, at auth for an in-band one.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(
                broker.urls["ALPACA_STREAM_URL"], headers={"APCA-API-KEY-ID": ALICE}
            )
        assert refused.value.status == 429
        ws = await http.ws_connect(broker.urls["ALPACA_STREAM_URL"])
        await ws.send_str(
            orjson.dumps({"action": "auth", "key": ALICE, "secret": ALICE_SECRET}).decode()
        )
        await ws.receive(timeout=5)
        assert ws.close_code == 1008
        state = control.trading_streams(ALICE)
        assert state.open == 0 and 0 < state.blocked_for_s <= 300

        control.refuse_trading(ALICE, 0)
        ws = await listen(http, broker, ALICE)
        assert control.trading_streams(ALICE).open == 1
        endings = [c.ended for c in control.trading_streams(ALICE).connections]
        assert endings[:2] == ["server_close", "unclean"]
        await ws.close()
        await other.close()


async def test_overlap_of_authenticated_streams_is_measured_per_account(broker: Broker) -> None:
    control = broker.control
    async with aiohttp.ClientSession() as http:
        # Sequential consumers of one account never overlap.
        for _ in range(2):
            ws = await listen(http, broker, BOB)
            await ws.close()
        await eventually(lambda: control.trading_streams(BOB).open == 0, "bob's streams closed")
        state = control.trading_streams(BOB)
        assert (state.overlap.max_s, state.overlap.count) == (0, 0)
        assert [c.ended for c in state.connections] == ["client_close", "client_close"]
        assert all(c.peer.startswith("127.0.0.1:") for c in state.connections)
        first, second = state.connections
        assert first.closed_at is not None and second.authenticated_at is not None
        assert first.closed_at <= second.authenticated_at

        # Alpaca-like by default: a second consumer of the same key is refused at auth.
        ws = await listen(http, broker, ALICE)
        late = await http.ws_connect(broker.urls["ALPACA_STREAM_URL"])
        await late.send_str(
            orjson.dumps({"action": "auth", "key": ALICE, "secret": ALICE_SECRET}).decode()
        )
        await late.receive(timeout=5)
        assert late.close_code == 1008
        assert control.trading_streams(ALICE).overlap.max_s == 0

        # Where the broker lets two in, the overlap is measured, and grows while it lasts.
        control.set_stream_settings(trading_single_connection=False)
        second_ws = await listen(http, broker, ALICE)
        during = control.trading_streams(ALICE).overlap
        assert (during.count, during.max_concurrent) == (1, 2)
        await eventually(
            lambda: control.trading_streams(ALICE).overlap.max_s > during.max_s,
            "the overlap to grow while both are open",
        )
        await second_ws.close()
        await eventually(lambda: control.trading_streams(ALICE).open == 1, "one stream left")
        ended = control.trading_streams(ALICE).overlap
        assert ended.max_s > 0 and ended.count == 1
        assert control.trading_streams(ALICE).overlap == ended  # over: it no longer grows
        assert control.trading_streams(BOB).overlap.max_s == 0
        await ws.close()


# ---- market data --------------------------------------------------------------------------


async def data_auth(
    http: aiohttp.ClientSession, broker: Broker, key: str
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    ws = await http.ws_connect(broker.urls["ALPACA_DATA_STREAM_URL"])
    assert (await ws.receive_json(timeout=5)) == [{"T": "success", "msg": "connected"}]
    await ws.send_json({"action": "auth", "key": key, "secret": SECRETS[key]})
    [answer] = await ws.receive_json(timeout=5)
    return ws, answer


DATA_CLIENT = """
import asyncio, sys, aiohttp
async def main(url, key, secret):
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        await ws.receive()
        await ws.send_json({"action": "auth", "key": key, "secret": secret})
        print((await ws.receive()).data, flush=True)
        await asyncio.Event().wait()
asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_second_data_connection_gets_406_and_a_dead_one_holds_the_slot(
    broker: Broker,
) -> None:
    control = broker.control
    assert control.stream_settings()["data_single_connection"] is True  # Alpaca's default
    async with aiohttp.ClientSession() as http:
        first, answer = await data_auth(http, broker, ALICE)
        assert answer == {"T": "success", "msg": "authenticated"}
        second, answer = await data_auth(http, broker, ALICE)
        assert answer == {"T": "error", "code": 406, "msg": "connection limit exceeded"}
        await second.receive(timeout=5)
        assert second.closed
        _, answer = await data_auth(http, broker, BOB)  # the limit is per key
        assert answer["msg"] == "authenticated"

        control.set_stream_settings(data_single_connection=False)
        extra, answer = await data_auth(http, broker, ALICE)
        assert answer["msg"] == "authenticated"
        await extra.close()
        control.set_stream_settings(data_single_connection=True)

        # A clean close frees the slot at once, even with a dead-slot hold configured.
        control.set_stream_settings(data_dead_slot_hold_s=300)
        await first.close()
        await eventually(lambda: control.data_streams(ALICE).open == 0, "alice's close")
        assert control.data_streams(ALICE).blocked_for_s == 0
        again, answer = await data_auth(http, broker, ALICE)
        assert answer["msg"] == "authenticated"
        await again.close()
        await eventually(lambda: control.data_streams(ALICE).open == 0, "alice's close")

    # A consumer killed mid-stream sends no close frame: its slot stays taken for the hold.
    argv = [DATA_CLIENT, broker.urls["ALPACA_DATA_STREAM_URL"], ALICE, SECRETS[ALICE]]
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", *argv, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert client.stdout is not None
        assert b"authenticated" in await asyncio.wait_for(client.stdout.readline(), 20)
    finally:
        client.kill()
        await client.wait()
    await eventually(lambda: control.data_streams(ALICE).open == 0, "the dead client's end")
    state = control.data_streams(ALICE)
    assert state.connections[-1].ended == "unclean"
    assert 0 < state.blocked_for_s <= 300
    async with aiohttp.ClientSession() as http:
        _, answer = await data_auth(http, broker, ALICE)
        assert answer["code"] == 406
        control.hold_data_slot(ALICE, 0)
        ws, answer = await data_auth(http, broker, ALICE)
        assert answer["msg"] == "authenticated"

        # A drop without a close frame holds the slot the same way.
        assert control.drop_data(ALICE, how="abort") == 1
        await ws.receive(timeout=5)
        await eventually(lambda: control.data_streams(ALICE).blocked_for_s > 0, "the hold")
        _, answer = await data_auth(http, broker, ALICE)
        assert answer["code"] == 406


# ---- REST ---------------------------------------------------------------------------------


def test_rest_faults_are_seen_by_alpaca_py_for_the_matching_account_only(broker: Broker) -> None:
    control = broker.control
    alice, bob = broker.trading(ALICE), broker.trading(BOB)
    control.fail_rest(500, api_key=ALICE, method="GET", path="/v2/account")
    with pytest.raises(APIError) as failed:
        alice.get_account()
    assert failed.value.status_code == 500
    assert failed.value.code == 50000000  # Alpaca's error body shape
    assert alice.get_all_positions() == []  # another path
    assert bob.get_account().status == "ACTIVE"  # type: ignore[union-attr]
    faults = control.rest_faults()
    assert faults["faults"] == [
        {"kind": "fail", "api_key": ALICE, "method": "GET", "path": "/v2/account", "status": 500}
    ]

    control.clear_rest_faults()
    assert alice.get_account().status == "ACTIVE"  # type: ignore[union-attr]

    # A hang holds the request until the faults are cleared, then serves it.
    control.hang_rest(api_key=ALICE, path="/v2/account")
    answers: list[Any] = []
    caller = threading.Thread(target=lambda: answers.append(alice.get_account()))
    caller.start()
    wait_until(lambda: control.rest_faults()["hanging"] == 1, 10, "the held request")
    assert answers == []
    assert control.accounts() == [ALICE, BOB]  # the control API itself never hangs
    control.clear_rest_faults()
    caller.join(10)
    assert [a.status for a in answers] == ["ACTIVE"]
    assert control.rest_faults() == {"faults": [], "hanging": 0}


# ---- fills --------------------------------------------------------------------------------


def test_an_order_flow_fills_continuously_and_every_fill_is_listed_once(broker: Broker) -> None:
    control = broker.control
    assert control.fills(BOB) == []
    control.start_order_flow(0.05, [ALICE])
    assert control.order_flow()["accounts"] == [ALICE]
    wait_until(lambda: len(control.fills(ALICE)) >= 5, 20, "five fills on alice")
    control.stop_order_flow()
    alice = broker.trading(ALICE)

    def settled() -> bool:
        return alice.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN)) == []

    wait_until(settled, 10, "every placed order to fill")
    fills = control.fills(ALICE)
    assert len({f.execution_id for f in fills}) == len(fills)
    orders = {
        str(o.id): o  # type: ignore[union-attr]
        for o in alice.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))
    }
    assert {f.order_id for f in fills} <= set(orders)
    held: dict[str, Decimal] = {}
    for f in fills:
        held[f.symbol] = held.get(f.symbol, Decimal(0)) + (f.qty if f.side == "buy" else -f.qty)
        assert f.position_qty == held[f.symbol]
    assert control.position_qty(ALICE) == {s: q for s, q in held.items() if q != 0}
    rest = alice.get_all_positions()
    assert [p["symbol"] for p in control.positions(ALICE)] == [p.symbol for p in rest]  # type: ignore[union-attr]
    assert control.position_qty(ALICE) == {p.symbol: Decimal(p.qty) for p in rest}  # type: ignore[union-attr]
    assert control.fills(BOB) == []  # only the accounts asked for


# ---- access -------------------------------------------------------------------------------


def test_a_wrong_token_is_refused_and_bad_bodies_are_400(broker: Broker) -> None:
    with pytest.raises(SimControlError) as refused:
        SimControl(broker.api_url, "not-the-token").accounts()
    assert refused.value.status == 401
    with pytest.raises(SimControlError) as unknown:
        broker.control.fills("PKNOBODY")
    assert unknown.value.status == 404
    with pytest.raises(SimControlError) as bad:
        broker.control.start_order_flow(-1)
    assert bad.value.status == 400


def test_without_a_token_there_is_no_control_api(tmp_path: Path) -> None:
    sim = Simulator(simulate_env(tmp_path), tmp_path / "simulate.log")
    try:
        api_url = sim.wait_started()["ALPACA_API_URL"]
        assert "Control API" not in sim.log()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert http_status(api_url + "/_sim/accounts", headers) == 404
        assert http_status(api_url + "/_sim/order-flow", headers) == 404
    finally:
        sim.kill()
