"""An open `/ws/portfolio` socket ends with its session (SPEC §10: logout revokes): logged out,
expired or its user removed, it is closed with 4001 and a reason the client acts on (sign in
again, not reconnect); the user's other sessions keep their sockets."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Collection

import aiohttp

from app.keys import STORE_KEY
from app.session_watch import SessionWatch
from app.sessions import Revocations, SessionRevoked
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


async def test_a_session_watched_while_a_check_is_running_is_not_taken_for_revoked() -> None:
    """A check asks the store about the sessions watched when it started; one whose socket
    opened meanwhile was not asked about, so it must not be published as gone."""
    revocations = Revocations()
    published: list[SessionRevoked] = []
    revocations.subscribe(published.append)
    asked = asyncio.Event()
    answer = asyncio.Event()

    async def live_sessions(hashes: Collection[str]) -> set[str]:
        asked.set()
        await answer.wait()
        return set(hashes)  # every session it was asked about is alive

    watch = SessionWatch(live_sessions, revocations, interval_s=30.0, clock=lambda: 100.0)
    watch.watch("first", "alice", expires_at=1000.0)
    checking = asyncio.ensure_future(watch.check())
    await asked.wait()
    watch.watch("second", "bob", expires_at=1000.0)  # a socket opens during the lookup
    answer.set()
    await checking
    assert published == []


async def test_opening_sockets_does_not_make_the_watch_ask_the_store_again() -> None:
    """A socket's session was looked up as it was admitted: watching it only moves the next
    check earlier if it expires sooner. (A full check per new socket made a reconnect storm
    of N sockets cost N queries of N sessions each.)"""
    revocations = Revocations()
    expired = asyncio.Event()
    revocations.subscribe(lambda event: expired.set())
    queries = 0

    async def live_sessions(hashes: Collection[str]) -> set[str]:
        nonlocal queries
        queries += 1
        return set(hashes)

    clock = asyncio.get_running_loop().time
    watch = SessionWatch(live_sessions, revocations, interval_s=30.0, clock=clock)
    running = asyncio.ensure_future(watch.run())
    try:
        await asyncio.sleep(0)  # the first check, with nothing watched yet
        for n in range(20):  # sockets opening one after another, as in a reconnect storm
            watch.watch(f"long-{n}", "alice", expires_at=clock() + 3600)
            for _ in range(3):
                await asyncio.sleep(0)
        watch.watch("brief", "bob", expires_at=clock() + 0.05)
        await asyncio.wait_for(expired.wait(), 2)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert queries == 1  # at bob's expiry only; none for the twenty-one new watches
