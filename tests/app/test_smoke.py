from __future__ import annotations

import asyncio

from tests.conftest import login, publish


def position(user: str, symbol: str, pnl: str = "550.00") -> dict[str, str]:
    return {"userId": user, "symbol": symbol, "qty": "10", "side": "long",
            "avgEntryPrice": "150.00", "currentPrice": "205.00", "marketValue": "2050.00",
            "costBasis": "1500.00", "unrealizedPnl": pnl, "unrealizedPnlPercent": "36.67",
            "updatedAt": "2026-01-04T10:30:00.000Z"}


async def test_end_to_end_batch(app_client, log_lines) -> None:
    client = await app_client()
    token = await login(client, "alice")
    ws = await client.ws_connect("/ws/portfolio", headers={"Cookie": f"session={token}"})
    connected = await ws.receive_json()
    assert connected["type"] == "connected"
    await ws.send_json({"type": "subscribe", "channels": ["positions", "orders"]})
    assert (await ws.receive_json())["type"] == "subscribed"
    snap = await ws.receive_json()
    assert snap["type"] == "snapshot" and snap["seq"] == 1
    user_id = connected["userId"]
    for pnl in ("1.00", "2.00", "550.00"):
        publish(client, "position:updated", position(user_id, "AAPL", pnl))
    batch = await asyncio.wait_for(ws.receive_json(), 2)
    assert batch["type"] == "batch" and batch["seq"] == 2
    assert batch["eventCount"] == 3 and len(batch["positions"]) == 1
    assert batch["positions"][0]["unrealizedPnl"] == "550.00"
    await ws.close()
    print(log_lines.getvalue())
