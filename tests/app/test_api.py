"""The polling fallback, realtime config and health routes (SPEC §8)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from app.keys import STORE_KEY
from tests.app.support import account, order, position, session_for
from tests.conftest import ClientFactory, publish
from tests.postgres import BACKENDS

STORE_BACKENDS = BACKENDS  # the auth and API paths on SQLite and on PostgreSQL


async def test_realtime_config_tells_clients_where_and_how_often(app_client: ClientFactory) -> None:
    client = await app_client()
    body = await (await client.get("/api/realtime/config")).json()
    assert body["enabled"] is True
    assert body["wsPath"] == "/ws/portfolio"
    assert body["pollIntervalMs"] == 5000


async def test_realtime_config_says_disabled_when_the_flag_is_off(
    app_client: ClientFactory,
) -> None:
    client = await app_client(enable_realtime_portfolio=False)
    body = await (await client.get("/api/realtime/config")).json()
    assert body["enabled"] is False and body["pollIntervalMs"] == 5000


async def test_portfolio_polling_needs_a_session(app_client: ClientFactory) -> None:
    client = await app_client()
    response = await client.get("/api/portfolio")
    assert response.status == 401


async def test_portfolio_polling_serves_the_users_state_with_the_flag_off(
    app_client: ClientFactory,
) -> None:
    client = await app_client(enable_realtime_portfolio=False)
    alice = await session_for(client, "alice")
    publish(client, "position:updated", position(alice.user_id, "AAPL", pnl="550.00"))
    publish(client, "order:updated", order(alice.user_id, "o-1"))
    publish(client, "account:updated", account(alice.user_id, equity="104550.00"))
    response = await client.get("/api/portfolio", headers=alice.headers)
    assert response.status == 200
    body = await response.json()
    assert body["userId"] == alice.user_id
    assert [(p["symbol"], p["unrealizedPnl"]) for p in body["positions"]] == [("AAPL", "550.00")]
    assert [o["orderId"] for o in body["orders"]] == ["o-1"]
    assert body["account"]["equity"] == "104550.00"
    assert body["serverTime"].endswith("Z")


async def test_healthz_answers_while_the_process_lives(app_client: ClientFactory) -> None:
    client = await app_client()
    response = await client.get("/healthz")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"


async def test_readyz_checks_store_bus_and_stream(app_client: ClientFactory) -> None:
    client = await app_client()
    response = await client.get("/readyz")
    assert response.status == 200
    body = await response.json()
    assert body["ready"] is True
    assert {"store", "bus", "stream"} <= set(body["checks"])
    assert all(body["checks"].values())


async def test_readyz_is_ready_with_the_flag_off(app_client: ClientFactory) -> None:
    client = await app_client(enable_realtime_portfolio=False)
    assert (await client.get("/readyz")).status == 200


async def test_readyz_is_503_when_the_store_is_gone(app_client: ClientFactory) -> None:
    client = await app_client()
    await client.app[STORE_KEY].close()
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["ready"] is False and body["checks"]["store"] is False


async def test_realtime_config_serves_poll_interval_ms(app_client: ClientFactory) -> None:
    client = await app_client(poll_interval_ms=2500)
    body = await (await client.get("/api/realtime/config")).json()
    assert body["pollIntervalMs"] == 2500


async def test_a_body_over_http_max_body_bytes_is_refused_with_413(
    app_client: ClientFactory,
) -> None:
    """Declared (Content-Length) or chunked, a body over the limit gets the JSON 413."""
    client = await app_client(http_max_body_bytes=1024)
    fits = {"username": "nobody", "password": "x" * 900}
    answered = await client.post("/api/auth/login", json=fits)
    assert answered.status == 401  # read and judged: the limit is not below it
    oversized = json.dumps({"username": "nobody", "password": "x" * 1100}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(oversized), 256):
            yield oversized[start : start + 256]

    declared = await client.post(
        "/api/auth/login", data=oversized, headers={"Content-Type": "application/json"}
    )
    chunked = await client.post(
        "/api/auth/login", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "Content-Length" not in chunked.request_info.headers
    for response in (declared, chunked):
        assert response.status == 413
        assert (await response.json())["error"] == "payload_too_large"
