"""Payload builders and WebSocket helpers shared by the `/ws/portfolio` tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.keys import STORE_KEY

WS_PATH = "/ws/portfolio"
ALL_CHANNELS = ["positions", "orders", "account"]
TIMEOUT = 5.0
PASSWORD = "correct horse"  # every test user's

Client = TestClient[Any, web.Application]


class WallClock:
    """Stands in for ``time.time`` in a store: time moves only when a test sets ``now``."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def position(user: str, symbol: str, pnl: str = "550.00", qty: str = "10") -> dict[str, str]:
    return {
        "userId": user,
        "symbol": symbol,
        "qty": qty,
        "side": "long",
        "avgEntryPrice": "150.00",
        "currentPrice": "205.00",
        "marketValue": "2050.00",
        "costBasis": "1500.00",
        "unrealizedPnl": pnl,
        "unrealizedPnlPercent": "36.67",
        "updatedAt": "2026-01-04T10:30:00.000Z",
    }


def order(
    user: str, order_id: str, status: str = "new", symbol: str = "AAPL", filled: str = "0"
) -> dict[str, Any]:
    return {
        "userId": user,
        "orderId": order_id,
        "clientOrderId": f"c-{order_id}",
        "symbol": symbol,
        "side": "buy",
        "type": "market",
        "qty": "10",
        "filledQty": filled,
        "filledAvgPrice": None,
        "status": status,
        "event": status,
        "timestamp": "2026-01-04T10:30:00.000Z",
    }


def account(user: str, equity: str = "104550.00") -> dict[str, str]:
    return {
        "userId": user,
        "equity": equity,
        "cash": "50000.00",
        "buyingPower": "100000.00",
        "updatedAt": "2026-01-04T10:30:00.000Z",
    }


def trade(user: str, trade_id: str = "trade-789", symbol: str = "AAPL") -> dict[str, str]:
    return {
        "userId": user,
        "tradeId": trade_id,
        "orderId": "order-1",
        "symbol": symbol,
        "side": "buy",
        "qty": "10",
        "price": "150.00",
        "positionQty": "10",
        "event": "fill",
        "timestamp": "2026-01-04T10:30:00.000Z",
    }


def closed(user: str, symbol: str) -> dict[str, str]:
    return {"userId": user, "symbol": symbol, "closedAt": "2026-01-04T10:31:00.000Z"}


@dataclass(frozen=True)
class Session:
    """A logged-in user as a test sees it: the session id and the user id events carry."""

    token: str
    user_id: str

    @property
    def headers(self) -> dict[str, str]:
        return cookie(self.token)


async def session_for(client: Client, username: str, *, admin: bool = False) -> Session:
    """A session for the user (created if missing) made through the store; the login route
    has its own tests.

    Tests acting as several users pass the cookie explicitly: aiohttp lets cookie-jar entries
    override an explicit ``Cookie`` header, so the jar is never used for sessions here.
    """
    store = client.app[STORE_KEY]
    user = await store.ensure_user(username, PASSWORD, is_admin=admin)
    return Session(await store.create_session(user.id, 3600), user.id)


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"session={token}"}


async def connect(
    client: Client, session: Session, **kwargs: Any
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Open `/ws/portfolio` with the session and return the socket and its `connected` message."""
    headers = {**session.headers, **kwargs.pop("headers", {})}
    ws = await client.ws_connect(WS_PATH, headers=headers, **kwargs)
    connected = await receive(ws)
    assert connected["type"] == "connected", connected
    return ws, connected


async def receive(ws: aiohttp.ClientWebSocketResponse, limit_s: float = TIMEOUT) -> dict[str, Any]:
    """The next JSON message (fails on close or timeout)."""
    msg = await asyncio.wait_for(ws.receive(), limit_s)
    assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    data: dict[str, Any] = msg.json()
    return data


async def receive_type(
    ws: aiohttp.ClientWebSocketResponse, kind: str, limit_s: float = TIMEOUT
) -> dict[str, Any]:
    """The next message of type ``kind``, skipping others."""
    async with asyncio.timeout(limit_s):
        while True:
            message = await receive(ws, limit_s)
            if message["type"] == kind:
                return message


async def subscribe(
    ws: aiohttp.ClientWebSocketResponse, channels: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Subscribe and return the `subscribed` reply and the snapshot that follows it."""
    await ws.send_json({"type": "subscribe", "channels": channels})
    subscribed = await receive(ws)
    assert subscribed["type"] == "subscribed", subscribed
    snapshot = await receive(ws)
    assert snapshot["type"] == "snapshot", snapshot
    return subscribed, snapshot


async def receive_close(
    ws: aiohttp.ClientWebSocketResponse, limit_s: float = TIMEOUT
) -> aiohttp.WSMessage:
    """Read until the server's close frame (or the connection dropping) and return it."""
    async with asyncio.timeout(limit_s):
        while True:
            msg = await ws.receive()
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.ERROR,
            ):
                return msg


async def nothing_arrives(ws: aiohttp.ClientWebSocketResponse, within: float) -> None:
    """Assert that no message arrives within ``within`` seconds (keep it short)."""
    try:
        msg = await asyncio.wait_for(ws.receive(), within)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message: {msg.type} {msg.data!r}")


async def until(condition: Callable[[], bool], limit_s: float = TIMEOUT) -> None:
    """Wait (polling the loop) until ``condition()`` holds; fails after ``limit_s``."""
    async with asyncio.timeout(limit_s):
        # Server-side state (connection maps, counters) has no event to await.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
