"""The app's side of the broker seam: the app creates the demo users the broker reports, runs
with a NullBroker when there is no broker, and stops a started broker when start-up fails."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from app.broker import DemoLogin
from app.factory import create_app
from app.keys import BROKER_KEY, DEMO_LOGINS_KEY, STORE_KEY
from app.server import run_service
from app.store import Store
from tests.conftest import ClientFactory, login, make_settings


async def test_the_app_creates_the_demo_users_and_keeps_the_logins_that_work(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    store = Store(tmp_path / "portfolio-stream.db")
    await store.open()
    await store.create_user("alice", "her own password")
    await store.close()
    app = create_app(make_settings(tmp_path, sim_demo_users=True, sim_tick_interval_ms=60_000))
    client = await aiohttp_client(app)

    # alice kept her password, so her demo login would not work and is not advertised.
    assert app[DEMO_LOGINS_KEY] == (
        DemoLogin("admin", "admin-demo", is_admin=True),
        DemoLogin("bob", "bob-demo"),
    )
    users = app[STORE_KEY]
    admin = await users.authenticate("admin", "admin-demo")
    assert admin is not None and admin.is_admin
    assert await users.authenticate("bob", "bob-demo") is not None
    assert await users.authenticate("alice", "alice-demo") is None
    broker = app[BROKER_KEY]
    await asyncio.wait_for(broker.wait_ready(), 10)
    statuses = {s["username"]: s["status"] for s in broker.accounts_status()}
    assert statuses == {"admin": "connected", "alice": "connected", "bob": "connected"}
    session = {"Cookie": f"session={await users.create_session(admin.id, 60)}"}
    stats = await (await client.get("/api/admin/websocket-stats", headers=session)).json()
    assert stats["broker"]["mode"] == "simulated"
    assert [a["username"] for a in stats["broker"]["accounts"]] == ["admin", "alice", "bob"]
    assert stats["broker"]["prices"]["status"] in {"idle", "running"}


async def test_without_a_broker_the_app_is_ready_reports_nothing_and_refuses_trades(
    app_client: ClientFactory,
) -> None:
    client = await app_client()
    token = await login(client, "root", admin=True)
    headers = {"Cookie": f"session={token}"}

    trade = await client.post(
        "/api/admin/test-trade",
        json={"username": "alice", "symbol": "AAPL", "side": "buy", "qty": "1"},
        headers=headers,
    )
    assert trade.status == 503
    assert await trade.json() == {
        "error": "broker_unavailable",
        "message": "No broker bridge is running",
    }
    stats = await (await client.get("/api/admin/websocket-stats", headers=headers)).json()
    assert "broker" not in stats  # nothing to report
    ready = await (await client.get("/readyz")).json()
    assert ready["checks"]["broker"] is True


async def test_a_start_up_failing_after_the_broker_started_still_stops_it(
    tmp_path: Path, log_lines: io.StringIO
) -> None:
    built: list[web.Application] = []

    async def failing_ctx(_: web.Application) -> AsyncIterator[None]:
        raise RuntimeError("cannot start")
        yield  # pragma: no cover - a generator that fails before yielding

    def build(settings: Any) -> web.Application:
        built.append(create_app(settings, extra_contexts=(failing_ctx,)))
        return built[-1]

    settings = make_settings(
        tmp_path, host="127.0.0.1", port=0, sim_demo_users=True, sim_tick_interval_ms=60_000
    )
    with pytest.raises(RuntimeError, match="cannot start"):
        await run_service(settings, environ={}, build_app=build)

    [app] = built
    assert [s["status"] for s in app[BROKER_KEY].accounts_status()] == ["stopped"] * 3
    assert not app[STORE_KEY].is_open
    output = log_lines.getvalue()
    assert "[AlpacaStream] Bridge started: mode=simulated" in output
    assert "[AlpacaStream] Bridge stopped: mode=simulated" in output
