"""While a graceful shutdown drains, readiness is 503 and new upgrades get 503 (SPEC §9)."""

from __future__ import annotations

from tests.conftest import ClientFactory, login


async def test_draining_fails_readiness_and_refuses_upgrades(app_client: ClientFactory) -> None:
    client = await app_client()
    token = await login(client, "alice")
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["ready"] is True
    existing = await client.ws_connect("/ws/portfolio", headers={"Cookie": f"session={token}"})
    assert (await existing.receive_json())["type"] == "connected"

    await client.app.shutdown()  # the on_shutdown sequence, as runner.cleanup() runs it

    not_ready = await client.get("/readyz")
    assert not_ready.status == 503
    assert (await not_ready.json())["checks"]["notDraining"] is False
    upgrade = await client.get(
        "/ws/portfolio",
        headers={
            "Cookie": f"session={token}",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert upgrade.status == 503
    assert upgrade.headers["Retry-After"] == "1"
    assert await upgrade.json() == {"status": "draining"}
    closed = await existing.receive()
    assert (closed.data, closed.extra) == (1001, "Server shutting down")
    metrics = await (await client.get("/metrics")).text()
    assert "portfolio_draining 1.0" in metrics
    assert (await client.get("/healthz")).status == 200  # alive while draining
