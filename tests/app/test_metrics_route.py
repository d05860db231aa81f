"""`GET /metrics` (SPEC §8): Prometheus text that agrees with the stats route, and its token."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from app.keys import STREAM_KEY
from tests.app.support import (
    Client,
    connect,
    position,
    receive,
    receive_close,
    session_for,
    subscribe,
    until,
)
from tests.conftest import ClientFactory, publish


async def scrape(client: Client, **headers: str) -> dict[str, float]:
    """Every sample as ``name{label="v",...}`` → value."""
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200
    assert response.content_type == "text/plain"
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def test_metrics_follow_the_stream_and_agree_with_the_stats_route(
    app_client: ClientFactory,
) -> None:
    client = await app_client()
    root = await session_for(client, "root")
    alice = await session_for(client, "alice")
    assert (await scrape(client))["websocket_active_connections"] == 0
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions"])
    for symbol in ("AAPL", "MSFT"):
        publish(client, "position:updated", position(alice.user_id, symbol))
    await receive(ws)
    rude, _ = await connect(client, alice)
    for _ in range(51):
        await rude.send_json({"type": "ping"})
    assert (await receive_close(rude)).data == 1008
    manager = client.app[STREAM_KEY]
    await until(lambda: manager.active_connections == 1)

    samples = await scrape(client)
    stats: dict[str, Any] = await (
        await client.get("/api/admin/websocket-stats", headers=root.headers)
    ).json()
    assert samples["websocket_active_connections"] == stats["activeConnections"] == 1
    assert samples["websocket_messages_delivered_total"] == stats["totalMessagesDelivered"] == 2
    assert samples["portfolio_events_emitted_total"] == stats["totalEventsEmitted"] == 2
    assert samples["websocket_event_deliveries_total"] == 2
    assert samples["websocket_batch_efficiency"] == stats["performance"]["batchEfficiencyRaw"]
    assert samples['websocket_disconnects_total{code="1008"}'] == 1
    assert samples["websocket_connection_duration_seconds_count"] == 1
    assert samples["websocket_delivery_latency_seconds_count"] >= 1
    assert samples["websocket_reconnects_total"] == stats["totalReconnects"]
    await ws.close()


async def test_metrics_require_the_bearer_token_when_one_is_set(app_client: ClientFactory) -> None:
    client = await app_client(metrics_token="scrape-me")
    assert (await client.get("/metrics")).status == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    samples = await scrape(client, Authorization="Bearer scrape-me")
    assert "websocket_active_connections" in samples


async def test_metrics_are_open_without_a_token(app_client: ClientFactory) -> None:
    client = await app_client()
    assert "websocket_active_connections" in await scrape(client)
