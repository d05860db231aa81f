"""An open `/ws/portfolio` socket ends with its session (SPEC §10: logout revokes): logged out,
expired or its user removed, it is closed with 4001 and a reason the client acts on (sign in
again, not reconnect); the user's other sessions keep their sockets."""

from __future__ import annotations

import io

import aiohttp

from app.keys import STORE_KEY
from tests.app.support import (
    PASSWORD,
    Session,
    connect,
    receive,
    receive_close,
    session_for,
)
from tests.conftest import ClientFactory


async def test_logging_out_closes_that_sessions_socket_4001(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await app_client()
    laptop = await session_for(client, "alice")
    phone = await session_for(client, "alice")
    ws, _ = await connect(client, laptop)
    other_tab, _ = await connect(client, phone)
    response = await client.post(
        "/api/auth/logout",
        json={},
        headers={**laptop.headers, "Origin": f"http://{client.host}:{client.port}"},
    )
    assert response.status == 200
    msg = await receive_close(ws)
    assert (msg.type, msg.data, msg.extra) == (
        aiohttp.WSMsgType.CLOSE,
        4001,
        "Session ended: logged out",
    )
    await other_tab.send_json({"type": "ping"})  # another session of the same user stays
    assert (await receive(other_tab))["type"] == "pong"
    await other_tab.close()
    assert "code=4001, reason=Session ended: logged out" in log_lines.getvalue()


async def test_an_expiring_session_closes_its_socket_4001_at_expiry(
    app_client: ClientFactory,
) -> None:
    client = await app_client()
    store = client.app[STORE_KEY]
    user = await store.ensure_user("alice", PASSWORD)
    brief = Session(await store.create_session(user.id, 0.5), user.id)
    ws, _ = await connect(client, brief)
    msg = await receive_close(ws, limit_s=3)
    assert (msg.data, msg.extra) == (4001, "Session expired")


async def test_removing_the_user_closes_every_one_of_its_sockets_4001(
    app_client: ClientFactory,
) -> None:
    client = await app_client()
    tabs = [await connect(client, await session_for(client, "alice")) for _ in range(2)]
    bob_ws, _ = await connect(client, await session_for(client, "bob"))
    assert await client.app[STORE_KEY].remove_user("alice")
    for ws, _ in tabs:
        msg = await receive_close(ws)
        assert (msg.data, msg.extra) == (4001, "User removed")
    await bob_ws.send_json({"type": "ping"})
    assert (await receive(bob_ws))["type"] == "pong"
    await bob_ws.close()
