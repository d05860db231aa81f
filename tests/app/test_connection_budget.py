"""The listener's connection budget on a real socket: within it every connection is served;
at it, a newcomer makes room by closing the longest-idle connection, and is refused with 503
only when every connection is busy (here: open WebSockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from app.connection_budget import BudgetedTCPSite, ConnectionBudget
from app.factory import create_app
from app.keys import BUDGET_KEY, METRICS_KEY, STORE_KEY
from tests.app.support import PASSWORD, WS_PATH, cookie
from tests.conftest import make_settings

CAPACITY = 3


@dataclass
class Listener:
    budget: ConnectionBudget
    host: str
    port: int
    app: web.Application

    async def idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return reader, writer

    async def get(self, path: str) -> tuple[int, bytes]:
        """One request on a fresh connection: (status, body)."""
        reader, writer = await self.idle()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return int(response.split(b" ", 2)[1]), response


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[Listener]:
    app = create_app(make_settings(tmp_path), with_bridge=False)
    runner = web.AppRunner(app)
    await runner.setup()
    budget = app[BUDGET_KEY]  # the one whose middleware sees the app's requests
    budget.capacity = CAPACITY
    site = BudgetedTCPSite(runner, "127.0.0.1", 0, budget=budget, backlog=16)
    await site.start()
    yield Listener(budget, "127.0.0.1", site.port, app)
    await runner.cleanup()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 2) == b""
    except ConnectionResetError:
        return True


async def test_within_the_budget_every_connection_is_served(listener: Listener) -> None:
    held = [await listener.idle() for _ in range(CAPACITY - 1)]
    assert (await listener.get("/healthz"))[0] == 200
    for _, writer in held:
        writer.close()


async def test_at_the_budget_the_longest_idle_connection_makes_room(listener: Listener) -> None:
    held = [await listener.idle() for _ in range(CAPACITY)]
    status, _ = await listener.get("/healthz")
    assert status == 200
    oldest_reader, _ = held[0]
    assert await closed_by_server(oldest_reader)
    assert listener.budget.shed == 1
    for _, writer in held:
        writer.close()


async def test_when_every_connection_is_busy_a_newcomer_is_refused_503(
    listener: Listener,
) -> None:
    store = listener.app[STORE_KEY]
    user = await store.ensure_user("alice", PASSWORD)
    token = await store.create_session(user.id, 3600)
    async with aiohttp.ClientSession() as http:
        sockets = [
            await http.ws_connect(
                f"http://{listener.host}:{listener.port}{WS_PATH}", headers=cookie(token)
            )
            for _ in range(CAPACITY)
        ]
        status, response = await listener.get("/healthz")
        assert status == 503 and b"Retry-After: 1" in response
        for ws in sockets:  # the WebSockets were busy: none was closed to make room
            assert (await ws.receive_json())["type"] == "connected"
            assert not ws.closed
            await ws.close()
    metrics = listener.app[METRICS_KEY].render().decode()
    assert "portfolio_connections_shed_total 1.0" in metrics
