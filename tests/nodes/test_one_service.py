"""Three nodes answer as one service: every connection of a user gets every update whichever
node holds it, snapshots agree, the stats are the cluster's on every node, a session is valid
everywhere and a logout ends it everywhere."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.nodes.browser import Tab, broker_qty, eventually, logout, me_status, qty_map
from tests.nodes.conftest import TRADERS, Sessions
from tests.nodes.harness import REPORT_INTERVAL_S, Cluster

pytestmark = pytest.mark.slow

# What a snapshot says of a position that the market's ticks do not move.
STABLE_POSITION = ("symbol", "qty", "side", "avgEntryPrice", "costBasis")
STABLE_ORDER = ("orderId", "symbol", "side", "qty", "filledQty", "status")
NODE_ROW = (
    "id",
    "connections",
    "users",
    "accountsConsumed",
    "uptimeSeconds",
    "redisRttMs",
    "pubsubLagMs",
    "degraded",
)
RUNBOOK_FIELDS = (
    "status",
    "enabled",
    "activeConnections",
    "connectionsByUser",
    "totalMessagesDelivered",
    "totalEventsEmitted",
    "totalDisconnects",
    "totalReconnects",
    "performance",
    "uptime",
    "limits",
    "timestamp",
)
# Stats rows are written every report interval: what every node agrees on within a few.
STATS_SETTLE_S = 10 * REPORT_INTERVAL_S + 5


def stable(snapshot: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    positions = {
        row["symbol"]: {key: row[key] for key in STABLE_POSITION} for row in snapshot["positions"]
    }
    orders = {row["orderId"]: {key: row[key] for key in STABLE_ORDER} for row in snapshot["orders"]}
    return positions, orders


def count(value: Any) -> int:
    """``accountsConsumed`` as a number, whether reported as a count or as the list."""
    return len(value) if isinstance(value, list) else int(value)


async def test_a_fill_placed_through_one_node_reaches_every_connection_on_every_node(
    cluster: Cluster, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    a, b, c = cluster.nodes
    token = await sessions.token(a.url, "alice")
    admin = await sessions.admin(b.url)
    tabs = [await Tab.open(http, node.url, token) for node in (a, b, b, c)]
    try:
        held = broker_qty(await cluster.simulator.positions(http, "alice"))
        order = await admin.trade(b.url, "alice", "AAPL", "buy", 3)
        expected = held.get("AAPL", 0) + 3

        def shown(tab: Tab) -> bool:
            filled = tab.orders.get(order["orderId"], {}).get("status") == "filled"
            return filled and tab.qty().get("AAPL") == expected

        for tab in tabs:
            await tab.wait(shown, f"the fill of {order['orderId']} on {tab.node_url}")
            assert tab.batches >= 1, "the fill came in a batch, not in a snapshot"
            assert tab.seq_gaps == []

        truth = broker_qty(await cluster.simulator.positions(http, "alice"))
        resynced = [stable(await tab.resync()) for tab in tabs]
        assert all(snapshot == resynced[0] for snapshot in resynced[1:]), resynced
        assert qty_map(list(resynced[0][0].values())) == truth
    finally:
        for tab in tabs:
            await tab.close()


async def test_stats_are_the_clusters_on_every_node(
    cluster: Cluster, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    a, b, c = cluster.nodes
    alice = await sessions.token(b.url, "alice")
    bob = await sessions.token(c.url, "bob")
    admin = await sessions.admin(a.url)
    tabs = [await Tab.open(http, node.url, alice) for node in (a, b, c)]
    tabs += [await Tab.open(http, a.url, bob), await Tab.open(http, a.url, bob)]
    by_user = {tabs[0].connected["userId"]: 3, tabs[3].connected["userId"]: 2}
    here = {a.id: 3, b.id: 1, c.id: 1}
    try:

        async def agreed() -> list[dict[str, Any]] | None:
            docs = [await admin.stats(node.url) for node in cluster.nodes]
            for doc in docs:
                if doc["activeConnections"] != 5 or doc["connectionsByUser"] != by_user:
                    return None
                rows = doc.get("nodes")
                if not isinstance(rows, list) or sorted(row.get("id") for row in rows) != sorted(
                    here
                ):
                    return None
                if {row["id"]: row.get("connections") for row in rows} != here:
                    return None
            return docs

        docs = await eventually(agreed, "the same cluster totals on every node", STATS_SETTLE_S)
        for node, doc in zip(cluster.nodes, docs, strict=True):
            assert set(RUNBOOK_FIELDS) <= set(doc), sorted(set(RUNBOOK_FIELDS) - set(doc))
            assert isinstance(doc["node"], dict), doc["node"]
            assert doc["node"]["id"] == node.id
            assert doc["node"]["connections"] == here[node.id]
            assert set(NODE_ROW) <= set(doc["node"]), doc["node"]
            assert doc["cluster"] == {"redis": "connected", "degraded": False}
            rows = {row["id"]: row for row in doc["nodes"]}
            for row in rows.values():
                assert {*NODE_ROW, "lastSeenSeconds"} <= set(row), row
                assert row["degraded"] is False
            # Exactly the first node consumes the broker streams (CONSUME_BROKER_STREAMS).
            assert count(rows[a.id]["accountsConsumed"]) == len(TRADERS)
            assert count(rows[b.id]["accountsConsumed"]) == 0
            assert count(rows[c.id]["accountsConsumed"]) == 0
            assert rows[a.id]["users"] == 2 and rows[b.id]["users"] == 1
    finally:
        for tab in tabs:
            await tab.close()


async def test_a_session_made_on_one_node_is_valid_on_all_and_a_logout_ends_it_on_all(
    cluster: Cluster, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    a, b, c = cluster.nodes
    token = await sessions.token(a.url, "carol")
    for node in cluster.nodes:
        assert await me_status(http, node.url, token) == 200, node.id
    on_b = await Tab.open(http, b.url, token)
    await on_b.close()
    on_a = await Tab.open(http, a.url, token)

    await logout(http, b.url, token)

    for node in (a, c, b):
        assert await me_status(http, node.url, token) == 401, node.id
    with pytest.raises(aiohttp.WSServerHandshakeError) as upgrade:
        await Tab.open(http, a.url, token)
    assert upgrade.value.status == 401
    # The socket opened on A with that session ends too, as in a single node (4001).
    assert await on_a.wait_closed() == 4001
