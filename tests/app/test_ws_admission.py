"""`/ws/portfolio` admission in the contract's order (SPEC §4), the `connected` message,
connection limits and the permessage-deflate default."""

from __future__ import annotations

import re
import time
from typing import Any

import aiohttp
import pytest

from app.keys import STREAM_KEY
from tests.app.support import (
    WS_PATH,
    Client,
    connect,
    cookie,
    receive,
    receive_close,
    session_for,
    subscribe,
    until,
)
from tests.conftest import ClientFactory
from tests.postgres import BACKENDS

STORE_BACKENDS = BACKENDS  # the auth and API paths on SQLite and on PostgreSQL

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}
EVIL = {"Origin": "https://evil.example"}


async def raw_upgrade(client: Client, **headers: str) -> Any:
    """A hand-written upgrade request, so the refusal itself can be inspected."""
    return await client.get(WS_PATH, headers={**UPGRADE, **headers})


def own_origin(client: Client) -> dict[str, str]:
    return {"Origin": f"http://{client.host}:{client.port}"}


async def test_no_session_is_401_json_without_upgrade(app_client: ClientFactory) -> None:
    client = await app_client()
    response = await raw_upgrade(client)
    assert response.status == 401
    assert response.content_type == "application/json"
    assert (await response.json())["error"] == "unauthorized"
    assert "Upgrade" not in response.headers
    assert "Sec-WebSocket-Accept" not in response.headers


async def test_401_comes_before_the_origin_and_flag_checks(app_client: ClientFactory) -> None:
    client = await app_client(enable_realtime_portfolio=False)
    assert (await raw_upgrade(client, **EVIL)).status == 401
    assert (await raw_upgrade(client, **EVIL, **cookie("forged"))).status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(WS_PATH, headers=EVIL)
    assert caught.value.status == 401


async def test_an_expired_or_revoked_session_is_401(app_client: ClientFactory) -> None:
    client = await app_client()
    alice = await session_for(client, "alice")
    await client.post("/api/auth/logout", json={}, headers=alice.headers)
    assert (await raw_upgrade(client, **alice.headers)).status == 401


async def test_a_foreign_origin_is_403(app_client: ClientFactory) -> None:
    client = await app_client()
    alice = await session_for(client, "alice")
    response = await raw_upgrade(client, **alice.headers, **EVIL)
    assert response.status == 403
    assert (await response.json())["error"] == "forbidden"
    assert "Upgrade" not in response.headers


async def test_403_comes_before_the_flag_check(app_client: ClientFactory) -> None:
    client = await app_client(enable_realtime_portfolio=False)
    alice = await session_for(client, "alice")
    assert (await raw_upgrade(client, **alice.headers, **EVIL)).status == 403


async def test_the_own_host_is_allowed_when_no_origins_are_configured(
    app_client: ClientFactory,
) -> None:
    client = await app_client()
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice, headers=own_origin(client))
    await ws.close()
    ws, _ = await connect(client, alice)  # no Origin at all: not a browser
    await ws.close()


async def test_allowed_origins_replace_the_own_host_rule(app_client: ClientFactory) -> None:
    client = await app_client(allowed_origins=["https://app.example.com"])
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice, headers={"Origin": "https://app.example.com"})
    await ws.close()
    for origin in (own_origin(client), EVIL, {"Origin": "https://app.example.com.evil"}):
        assert (await raw_upgrade(client, **alice.headers, **origin)).status == 403


async def test_flag_off_is_503_disabled(app_client: ClientFactory) -> None:
    client = await app_client(enable_realtime_portfolio=False)
    alice = await session_for(client, "alice")
    response = await raw_upgrade(client, **alice.headers, **own_origin(client))
    assert response.status == 503
    assert await response.json() == {"status": "disabled"}
    assert "Upgrade" not in response.headers


async def test_connected_message_carries_the_contract_fields(app_client: ClientFactory) -> None:
    client = await app_client(
        batch_window_ms=250, heartbeat_interval_ms=7000, heartbeat_timeout_ms=21000
    )
    alice = await session_for(client, "alice")
    ws, connected = await connect(client, alice)
    assert set(connected) >= {
        "type",
        "connectionId",
        "userId",
        "channels",
        "batchWindowMs",
        "heartbeatIntervalMs",
        "serverTime",
    }
    match = re.fullmatch(r"conn_(\d{13})_([A-Za-z0-9]+)", connected["connectionId"])
    assert match is not None, connected["connectionId"]
    assert abs(int(match.group(1)) / 1000 - time.time()) < 5
    assert connected["userId"] == alice.user_id
    assert connected["channels"] == ["positions", "orders", "account"]
    assert connected["batchWindowMs"] == 250
    assert connected["heartbeatIntervalMs"] == 7000
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", connected["serverTime"])
    other, again = await connect(client, alice)
    assert again["connectionId"] != connected["connectionId"]
    await ws.close()
    await other.close()


async def test_connections_over_the_per_user_limit_are_closed_1013(
    app_client: ClientFactory,
) -> None:
    client = await app_client(max_connections_per_user=2, max_total_connections=10)
    alice = await session_for(client, "alice")
    bob = await session_for(client, "bob")
    first, _ = await connect(client, alice)
    second, _ = await connect(client, alice)
    third = await client.ws_connect(WS_PATH, headers=alice.headers)  # upgraded, then closed
    msg = await receive_close(third)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (1013, "Maximum connections exceeded")
    manager = client.app[STREAM_KEY]
    assert manager.connections_by_user() == {alice.user_id: 2}
    bobs, _ = await connect(client, bob)  # the limit is per user
    await first.close()
    await until(lambda: manager.active_connections == 2)
    replacement, _ = await connect(client, alice)  # a freed slot can be reused
    for ws in (second, bobs, replacement):
        await ws.close()


async def test_connections_over_the_total_limit_are_closed_1013(app_client: ClientFactory) -> None:
    client = await app_client(max_connections_per_user=2, max_total_connections=3)
    alice = await session_for(client, "alice")
    bob = await session_for(client, "bob")
    sockets = [
        (await connect(client, alice))[0],
        (await connect(client, alice))[0],
        (await connect(client, bob))[0],
    ]
    refused = await client.ws_connect(WS_PATH, headers=bob.headers)
    msg = await receive_close(refused)
    assert (msg.data, msg.extra) == (1013, "Maximum connections exceeded")
    assert client.app[STREAM_KEY].active_connections == 3
    # The survivors are unaffected.
    await sockets[2].send_json({"type": "ping"})
    assert (await receive(sockets[2]))["type"] == "pong"
    for ws in sockets:
        await ws.close()


async def test_compression_is_off_by_default_even_when_offered(app_client: ClientFactory) -> None:
    client = await app_client()
    alice = await session_for(client, "alice")
    ws = await client.ws_connect(WS_PATH, headers=alice.headers, compress=15)
    assert ws.compress == 0
    assert "Sec-WebSocket-Extensions" not in ws._response.headers
    await ws.close()


async def test_compression_is_negotiated_with_ws_compression(app_client: ClientFactory) -> None:
    client = await app_client(ws_compression=True)
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice, compress=15)
    assert ws.compress == 15
    assert "permessage-deflate" in ws._response.headers["Sec-WebSocket-Extensions"]
    _, snapshot = await subscribe(ws, ["positions"])  # messages still flow
    assert snapshot["seq"] == 1
    await ws.close()
