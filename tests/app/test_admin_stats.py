"""`GET /api/admin/websocket-stats` (SPEC §5): access, the runbook's document field by field,
the formulas on known traffic, and the health statuses."""

from __future__ import annotations

import json
import re
from typing import Any

from app.keys import STREAM_KEY
from tests.app.support import (
    Client,
    Session,
    connect,
    order,
    position,
    receive,
    session_for,
    subscribe,
    until,
)
from tests.conftest import ClientFactory, publish

STATS = "/api/admin/websocket-stats"

# The runbook's example response, verbatim.
RUNBOOK_EXAMPLE = json.loads("""
{
  "status": "healthy",
  "enabled": true,
  "activeConnections": 42,
  "connectionsByUser": {
    "user-123": 2,
    "user-456": 1
  },
  "totalMessagesDelivered": 15420,
  "totalEventsEmitted": 234560,
  "totalDisconnects": 38,
  "totalReconnects": 35,
  "performance": {
    "batchEfficiency": "95.2%",
    "batchEfficiencyRaw": 0.952,
    "avgConnectionDurationSeconds": 1847,
    "disconnectRatePerMinute": "0.50"
  },
  "uptime": {
    "seconds": 86400,
    "formatted": "24h 0m"
  },
  "limits": {
    "maxConnectionsPerUser": 5,
    "maxTotalConnections": 100
  },
  "timestamp": "2026-01-04T10:30:00.000Z"
}
""")


async def stats(client: Client, admin: Session) -> dict[str, Any]:
    response = await client.get(STATS, headers=admin.headers)
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


def assert_same_shape(example: dict[str, Any], actual: dict[str, Any], path: str = "") -> None:
    """Every field of ``example`` exists in ``actual`` with the same JSON type."""
    for key, value in example.items():
        where = f"{path}.{key}"
        assert key in actual, f"missing {where}"
        if key == "connectionsByUser":
            assert isinstance(actual[key], dict)
            assert all(type(v) is int for v in actual[key].values()), where
        elif isinstance(value, dict):
            assert_same_shape(value, actual[key], where)
        else:
            assert type(actual[key]) is type(value), (where, actual[key])


async def test_stats_need_an_admin_session(app_client: ClientFactory) -> None:
    client = await app_client()
    anonymous = await client.get(STATS)
    assert anonymous.status == 401
    assert (await anonymous.json())["error"] == "unauthorized"
    alice = await session_for(client, "alice")
    forbidden = await client.get(STATS, headers=alice.headers)
    assert forbidden.status == 403
    assert (await forbidden.json())["error"] == "forbidden"
    root = await session_for(client, "root")
    assert (await client.get(STATS, headers=root.headers)).status == 200


async def test_every_runbook_field_with_its_name_and_type(app_client: ClientFactory) -> None:
    client = await app_client()
    root = await session_for(client, "root")
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions"])
    publish(client, "position:updated", position(alice.user_id, "AAPL"))
    await receive(ws)
    body = await stats(client, root)
    assert_same_shape(RUNBOOK_EXAMPLE, body)
    assert re.fullmatch(r"\d{1,3}\.\d%", body["performance"]["batchEfficiency"])
    assert re.fullmatch(r"\d+\.\d\d", body["performance"]["disconnectRatePerMinute"])
    assert re.fullmatch(r"\d+h \d+m", body["uptime"]["formatted"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["timestamp"])
    assert body["batchWindowMs"] == 50  # extras beyond the runbook are allowed
    await ws.close()


async def test_the_formulas_on_known_traffic(app_client: ClientFactory) -> None:
    client = await app_client(batch_window_ms=100)
    root = await session_for(client, "root")
    alice = await session_for(client, "alice")
    positions_tab, _ = await connect(client, alice)
    await subscribe(positions_tab, ["positions"])  # 1 snapshot
    both_tab, _ = await connect(client, alice)
    await subscribe(both_tab, ["positions", "orders"])  # 1 snapshot
    for symbol in ("AAPL", "MSFT", "TSLA"):
        for pnl in ("1.00", "2.00"):
            publish(client, "position:updated", position(alice.user_id, symbol, pnl=pnl))
    publish(client, "order:updated", order(alice.user_id, "o-1"))
    publish(client, "order:updated", order(alice.user_id, "o-1", status="filled"))
    assert (await receive(positions_tab))["eventCount"] == 6
    assert (await receive(both_tab))["eventCount"] == 8

    body = await stats(client, root)
    assert body["status"] == "healthy" and body["enabled"] is True
    assert body["activeConnections"] == 2
    assert body["connectionsByUser"] == {alice.user_id: 2}
    assert body["totalEventsEmitted"] == 8
    assert body["totalMessagesDelivered"] == 4  # 2 snapshots + 2 batches
    # 2 batch messages carried 6 + 8 = 14 event deliveries.
    assert body["performance"]["batchEfficiencyRaw"] == round(1 - 2 / 14, 4)
    assert body["performance"]["batchEfficiency"] == "85.7%"
    assert body["totalDisconnects"] == 0
    assert body["performance"]["disconnectRatePerMinute"] == "0.00"

    await positions_tab.close()
    manager = client.app[STREAM_KEY]
    await until(lambda: manager.active_connections == 1)
    body = await stats(client, root)
    assert body["totalDisconnects"] == 1
    assert body["performance"]["disconnectRatePerMinute"] == "0.20"  # 1 in 5 minutes
    assert body["connectionsByUser"] == {alice.user_id: 1}
    assert body["status"] == "degraded"  # 1 disconnect in the last minute > 10% of 1
    assert isinstance(body["performance"]["avgConnectionDurationSeconds"], int)
    await both_tab.close()


async def test_a_reconnect_within_sixty_seconds_is_counted(app_client: ClientFactory) -> None:
    client = await app_client()
    root = await session_for(client, "root")
    alice = await session_for(client, "alice")
    bob = await session_for(client, "bob")
    manager = client.app[STREAM_KEY]
    ws, _ = await connect(client, alice)
    await ws.close()
    await until(lambda: manager.active_connections == 0)
    assert (await stats(client, root))["totalReconnects"] == 0
    again, _ = await connect(client, alice)
    first_of_bob, _ = await connect(client, bob)  # a first connection is no reconnect
    body = await stats(client, root)
    assert body["totalReconnects"] == 1 and body["totalDisconnects"] == 1
    await again.close()
    await first_of_bob.close()


async def test_offline_without_connections_and_healthy_with_one(app_client: ClientFactory) -> None:
    client = await app_client()
    root = await session_for(client, "root")
    assert (await stats(client, root))["status"] == "offline"
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    assert (await stats(client, root))["status"] == "healthy"
    await ws.close()


async def test_degraded_when_unbatched_delivery_passes_100_events(
    app_client: ClientFactory,
) -> None:
    """BATCH_WINDOW_MS=0 and events one at a time: efficiency 0% once 100 deliveries exist."""
    client = await app_client(batch_window_ms=0)
    root = await session_for(client, "root")
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions"])
    for i in range(100):
        if i == 99:
            before = await stats(client, root)
            assert before["status"] == "healthy"
            assert before["performance"]["batchEfficiency"] == "0.0%"
        publish(client, "position:updated", position(alice.user_id, "AAPL", pnl=f"{i}.00"))
        assert (await receive(ws))["eventCount"] == 1
    body = await stats(client, root)
    assert body["performance"]["batchEfficiencyRaw"] == 0.0
    assert body["status"] == "degraded"
    await ws.close()


async def test_disabled_when_the_flag_is_off(app_client: ClientFactory) -> None:
    client = await app_client(enable_realtime_portfolio=False)
    root = await session_for(client, "root")
    body = await stats(client, root)
    assert body["status"] == "disabled" and body["enabled"] is False
    assert_same_shape(RUNBOOK_EXAMPLE, body)


async def test_limits_follow_the_settings(app_client: ClientFactory) -> None:
    client = await app_client(max_connections_per_user=7, max_total_connections=70)
    root = await session_for(client, "root")
    assert (await stats(client, root))["limits"] == {
        "maxConnectionsPerUser": 7,
        "maxTotalConnections": 70,
    }


async def test_stats_never_show_secrets(app_client: ClientFactory) -> None:
    client = await app_client(
        alpaca_api_key="PK-IN-STATS",
        alpaca_secret_key="SECRET-IN-STATS",
        metrics_token="TOKEN-IN-STATS",
    )
    root = await session_for(client, "root")
    text = json.dumps(await stats(client, root))
    for secret in ("PK-IN-STATS", "SECRET-IN-STATS", "TOKEN-IN-STATS", root.token):
        assert secret not in text
