"""Isolation (SPEC §3, §10): a user never receives another user's events, in snapshots,
batches, resyncs or the polling fallback."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.app.support import (
    ALL_CHANNELS,
    Client,
    Session,
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
)
from tests.conftest import ClientFactory, publish

SYMBOLS = ["AAPL", "MSFT", "TSLA"]


class Ledger:
    """What was published for one user, as the values a client could see."""

    def __init__(self, session: Session, base: int) -> None:
        self.session = session
        self.base = base
        self.values: set[str] = set()
        self.events = 0

    def publish_round(self, client: Client, n: int) -> None:
        user = self.session.user_id
        for i, symbol in enumerate(SYMBOLS):
            pnl = f"{self.base + n * 10 + i}.00"
            publish(client, "position:updated", position(user, symbol, pnl=pnl))
            self.values.add(pnl)
        order_id = f"{user}-order-{n}"
        publish(client, "order:updated", order(user, order_id))
        publish(client, "trade:executed", trade(user, f"{user}-trade-{n}"))
        equity = f"{self.base + n}.50"
        publish(client, "account:updated", account(user, equity=equity))
        self.values |= {order_id, equity}
        self.events += len(SYMBOLS) + 3

    def close_own_symbol(self, client: Client) -> None:
        symbol = f"X{self.base}"
        publish(
            client,
            "position:updated",
            position(self.session.user_id, symbol, pnl=f"{self.base}.99"),
        )
        publish(client, "position:closed", closed(self.session.user_id, symbol))
        self.values |= {symbol, f"{self.base}.99"}
        self.events += 2


def seen_values(message: dict[str, Any]) -> set[str]:
    """Every user-identifying value in a snapshot or batch."""
    values: set[str] = set()
    for entry in message.get("positions") or []:
        values |= {entry["unrealizedPnl"], entry["symbol"] if entry["symbol"][0] == "X" else ""}
    values |= set(message.get("closedPositions") or [])
    values |= {entry["orderId"] for entry in message.get("orders") or []}
    if message.get("account"):
        values.add(message["account"]["equity"])
    return values - {""}


async def collect(ws: aiohttp.ClientWebSocketResponse, events: int) -> list[dict[str, Any]]:
    """Messages until batches carrying ``events`` events have arrived."""
    messages: list[dict[str, Any]] = []
    carried = 0
    async with asyncio.timeout(5):
        while carried < events:
            message = await receive(ws)
            messages.append(message)
            carried += message.get("eventCount", 0)
    return messages


async def test_two_users_never_see_each_others_events(app_client: ClientFactory) -> None:
    client = await app_client(batch_window_ms=30)
    alice = Ledger(await session_for(client, "alice"), 1000)
    bob = Ledger(await session_for(client, "bob"), 5000)
    for ledger in (alice, bob):  # state from before anyone connected
        ledger.publish_round(client, 0)
        ledger.close_own_symbol(client)
    tabs = {"alice-1": alice, "alice-2": alice, "bob-1": bob}
    sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
    received: dict[str, list[dict[str, Any]]] = {}
    for name, ledger in tabs.items():
        ws, connected = await connect(client, ledger.session)
        assert connected["userId"] == ledger.session.user_id
        _, snapshot = await subscribe(ws, ALL_CHANNELS)
        sockets[name], received[name] = ws, [snapshot]
    alice_before, bob_before = alice.events, bob.events
    for n in range(1, 6):  # interleaved, same symbols, in the same batch windows
        alice.publish_round(client, n)
        bob.publish_round(client, n)
        if n % 2:
            await asyncio.sleep(0.02)
    for name, ledger in tabs.items():
        own = ledger.events - (alice_before if ledger is alice else bob_before)
        received[name] += await collect(sockets[name], own)
        await sockets[name].send_json({"type": "resync"})
        received[name].append(await receive(sockets[name]))
        await nothing_arrives(sockets[name], 0.1)
    for name, ledger in tabs.items():
        other = bob if ledger is alice else alice
        seen = set().union(*(seen_values(m) for m in received[name]))
        assert seen, name
        assert seen <= ledger.values, (name, seen - ledger.values)
        assert not seen & other.values, (name, seen & other.values)
    for ws in sockets.values():
        await ws.close()


async def test_the_polling_fallback_is_per_user_too(app_client: ClientFactory) -> None:
    client = await app_client()
    alice = Ledger(await session_for(client, "alice"), 1000)
    bob = Ledger(await session_for(client, "bob"), 5000)
    alice.publish_round(client, 0)
    bob.publish_round(client, 0)
    for ledger, other in ((alice, bob), (bob, alice)):
        response = await client.get("/api/portfolio", headers=ledger.session.headers)
        body = await response.json()
        assert body["userId"] == ledger.session.user_id
        seen = seen_values(body)
        assert seen and seen <= ledger.values and not seen & other.values
