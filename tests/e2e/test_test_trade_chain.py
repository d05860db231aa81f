"""The runbook's "execute test trade and watch logs" end to end, in one process.

The whole service — store, bus, broker bridge on the simulated broker, stream manager — is built
by the factory; an admin places a test trade through the API while the trader watches
`/ws/portfolio`. The runbook's log chain must appear in order and within the batch window.
"""

from __future__ import annotations

import asyncio
import io
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from app.factory import create_app
from app.keys import BROKER_KEY, STORE_KEY
from config.logging import configure_logging
from config.settings import Settings

WINDOW_MS = 200
MARGIN_S = 0.5


def chain_times(log: str, user_id: str, symbol: str) -> dict[str, datetime]:
    """First time each runbook step was logged for this user's trade (text format)."""
    steps = {
        "Emitted": rf"INFO \[AlpacaStream\] Emitted trade:executed event: tradeId=[0-9a-f-]+, "
        f"symbol={symbol}$",
        "Processed": rf"INFO \[PortfolioStream\] Processed trade:executed event: userId={user_id}, "
        f"symbol={symbol}$",
        "Broadcast": rf"INFO \[PortfolioStream\] Broadcast position update: userId={user_id}, "
        rf"symbol={symbol}, unrealizedPnl=-?\d+\.\d\d$",
        "Batch flushed": rf"INFO \[PortfolioStream\] Batch flushed: userId={user_id}, "
        r"positionUpdates=\d+, orderUpdates=\d+, totalEvents=\d+$",
    }
    found: dict[str, datetime] = {}
    for line in log.splitlines():
        stamp, _, message = line.partition(" ")
        for name, pattern in steps.items():
            if name not in found and re.match(pattern, message):
                found[name] = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return found


async def test_a_test_trade_shows_the_runbook_log_chain_within_the_window(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite:///{tmp_path}/e2e.db",
        broker="simulated",
        batch_window_ms=WINDOW_MS,
        sim_order_interval_s=0,
        sim_tick_interval_ms=60_000,
        sim_demo_users=True,
        shutdown_timeout_s=5,
    )
    lines = io.StringIO()
    configure_logging(settings, extra_streams=[lines])
    app: web.Application = create_app(settings)
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[BROKER_KEY].wait_ready(), 20)

    store = app[STORE_KEY]
    alice = await store.get_user_by_username("alice")
    admin = await store.get_user_by_username("admin")
    assert alice is not None and admin is not None and admin.is_admin
    alice_cookie = {"Cookie": f"session={await store.create_session(alice.id, 600)}"}
    admin_cookie = {"Cookie": f"session={await store.create_session(admin.id, 600)}"}

    ws = await client.ws_connect("/ws/portfolio", headers=alice_cookie)
    assert (await ws.receive_json(timeout=5))["type"] == "connected"
    await ws.send_json({"type": "subscribe", "channels": ["positions", "orders", "account"]})
    assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
    assert (await ws.receive_json(timeout=5))["type"] == "snapshot"

    response = await client.post(
        "/api/admin/test-trade",
        json={"username": "alice", "symbol": "AAPL", "side": "buy", "qty": "3"},
        headers=admin_cookie,
    )
    assert response.status == 201, await response.text()
    order_id = (await response.json())["order"]["orderId"]

    seen_position = seen_order = False
    while not (seen_position and seen_order):
        message = await ws.receive_json(timeout=5)
        if message["type"] != "batch":
            continue
        for position in message.get("positions", []):
            if position["symbol"] == "AAPL":
                assert position["qty"] == "3"
                seen_position = True
        for order in message.get("orders", []):
            if order["orderId"] == order_id and order["status"] == "filled":
                seen_order = True
    await ws.close()

    times = chain_times(lines.getvalue(), alice.id, "AAPL")
    assert list(times) == ["Emitted", "Processed", "Broadcast", "Batch flushed"], times
    elapsed = (times["Batch flushed"] - times["Emitted"]).total_seconds()
    assert 0 <= elapsed <= WINDOW_MS / 1000 + MARGIN_S, f"chain took {elapsed:.3f}s"
    # The runbook's grep for event types works on this log too.
    emitted = re.findall(r'eventBus\.emit\("([^"]+)"\)', lines.getvalue())
    assert {"trade:executed", "order:updated", "position:updated", "account:updated"} <= set(
        emitted
    )
