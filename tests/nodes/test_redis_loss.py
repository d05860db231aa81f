"""Redis stopped and started again while browsers watch and trades keep coming: no node exits,
no socket closes, each node says it is degraded (and still admits by its local limits) while
Redis is away, and afterwards every browser converges on the broker's truth — whether Redis
comes back with its data (saved before the stop) or empty, in which case the consuming node
rebuilds each account from the broker before anyone is shown it (never an empty portfolio)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.nodes.browser import Admin, Tab, broker_qty, eventually, qty_map
from tests.nodes.conftest import ClusterFactory, Sessions
from tests.nodes.harness import PROBE_INTERVAL_S, Cluster, Node

pytestmark = pytest.mark.slow

# Noticing the loss: two unanswered probes, each bounded by REDIS_TIMEOUT_S (1 s here).
DEGRADED_WITHIN_S = 2 * PROBE_INTERVAL_S + 2 + 5
# Coming back: the reconnect backoff (at most 0.5 s here), resubscribing, re-snapshotting.
RECOVERED_WITHIN_S = 20.0
CONVERGED_WITHIN_S = 20.0
SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA")


async def node_state(http: aiohttp.ClientSession, admin: Admin, node: Node) -> dict[str, Any]:
    """What a node says of itself: its stats ``node``/``cluster`` and /readyz's answer."""
    stats = await admin.stats(node.url)
    async with http.get(f"{node.url}/readyz") as response:
        ready = {"status": response.status, **(await response.json())}
    return {"stats": stats, "ready": ready}


def degraded(state: dict[str, Any]) -> bool:
    stats, ready = state["stats"], state["ready"]
    return (
        stats["cluster"] == {"redis": "unavailable", "degraded": True}
        and stats["node"]["degraded"] is True
        and ready["status"] == 200
        and ready.get("cluster") == {"redis": "unavailable", "degraded": True}
    )


def recovered(state: dict[str, Any]) -> bool:
    stats, ready = state["stats"], state["ready"]
    return (
        stats["cluster"] == {"redis": "connected", "degraded": False}
        and stats["node"]["degraded"] is False
        and ready["status"] == 200
        and ready.get("cluster") == {"redis": "connected", "degraded": False}
    )


@contextlib.asynccontextmanager
async def trading(admin: Admin, cluster: Cluster, users: list[str]) -> AsyncIterator[list[str]]:
    """Test trades placed one after another through the non-consuming nodes, until exit."""
    placed: list[str] = []
    stop = asyncio.Event()

    async def place() -> None:
        turns = itertools.count()
        while not stop.is_set():
            turn = next(turns)
            node = cluster.nodes[1 + turn % (len(cluster.nodes) - 1)]
            user, symbol = users[turn % len(users)], SYMBOLS[turn % len(SYMBOLS)]
            order = await admin.trade(node.url, user, symbol, "buy", 1 + turn % 3)
            placed.append(order["orderId"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    task = asyncio.create_task(place(), name="trading")
    try:
        yield placed
    finally:
        stop.set()
        await task  # a failed trade fails the test


@pytest.mark.parametrize("comes_back", ["with its data", "empty"])
async def test_redis_stopped_and_restarted_under_load_every_browser_converges(
    own_cluster: ClusterFactory, http: aiohttp.ClientSession, sessions: Sessions, comes_back: str
) -> None:
    cluster = own_cluster()
    a, b, c = cluster.nodes
    admin = await sessions.admin(b.url)
    users = ["alice", "bob"]
    tokens = {name: await sessions.token(a.url, name) for name in [*users, "carol"]}
    tabs: dict[str, list[Tab]] = {
        "alice": [await Tab.open(http, node.url, tokens["alice"]) for node in (a, b, c)],
        "bob": [await Tab.open(http, node.url, tokens["bob"]) for node in (b, c)],
    }
    every_tab = [tab for user_tabs in tabs.values() for tab in user_tabs]
    late: list[Tab] = []
    try:
        # A portfolio first, so that a browser shown an empty one afterwards is caught.
        for user in users:
            order = await admin.trade(b.url, user, "AAPL", "buy", 2)
            for tab in tabs[user]:
                await tab.wait(
                    lambda t, o=order["orderId"]: t.orders.get(o, {}).get("status") == "filled",
                    f"{user}'s first fill",
                )
        shown_before = {id(tab): len(tab.snapshots) for tab in every_tab}

        async with trading(admin, cluster, users) as placed:
            await eventually(lambda: len(placed) >= 3, "trades flowing", 10)
            if comes_back == "with its data":
                client = Redis.from_url(cluster.redis.url)
                await client.save()  # the RDB the next server loads at start
                await client.aclose()
            await asyncio.to_thread(cluster.redis.stop)

            for node in cluster.nodes:
                await eventually(
                    lambda n=node: _state_matches(http, admin, n, degraded),
                    f"{node.id} saying it is degraded",
                    DEGRADED_WITHIN_S,
                )
            # Admission goes on by the node's own limits.
            late.append(await Tab.open(http, a.url, tokens["carol"], subscribe=False))
            count = len(placed)
            await eventually(lambda: len(placed) >= count + 3, "trades while Redis is away", 15)

            await asyncio.to_thread(
                cluster.redis.start
            )  # same port; empty unless it found the saved RDB
            for node in cluster.nodes:
                await eventually(
                    lambda n=node: _state_matches(http, admin, n, recovered),
                    f"{node.id} back on Redis",
                    RECOVERED_WITHIN_S,
                )
            count = len(placed)
            await eventually(lambda: len(placed) >= count + 3, "trades after Redis is back", 15)

        # A fresh fill after the restart reaches every connection, and each converges.
        for user in users:
            await admin.trade(c.url, user, "AMZN", "buy", 1)
        for user in users:
            truth = broker_qty(await cluster.simulator.settled_positions(http, user))
            assert "AMZN" in truth
            for tab in tabs[user]:
                await tab.wait(
                    lambda t, q=truth: t.qty() == q,
                    f"{user} on {tab.node_url} showing the broker's positions {truth}",
                    CONVERGED_WITHIN_S,
                )
                assert qty_map((await tab.resync())["positions"]) == truth

        for node in cluster.nodes:
            assert node.alive, f"{node.id} exited:\n{node.log()}"
        for tab in [*every_tab, *late]:
            assert tab.is_open, f"{tab.node_url} closed {tab.close_code}"
        for tab in every_tab:
            emptied = [
                snapshot["seq"]
                for snapshot in tab.snapshots[shown_before[id(tab)] :]
                if "positions" in snapshot and not snapshot["positions"]
            ]
            assert emptied == [], f"{tab.node_url} was shown an empty portfolio at seq {emptied}"
            assert tab.seq_gaps == [], tab.seq_gaps
    finally:
        for tab in [*every_tab, *late]:
            await tab.close()


async def _state_matches(http: aiohttp.ClientSession, admin: Admin, node: Node, check: Any) -> bool:
    node.check_alive(node.id)
    return bool(check(await node_state(http, admin, node)))
