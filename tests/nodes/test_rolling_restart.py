"""A rolling restart of every node, one after another (SIGTERM, exit 0, start again), under
browsers that reconnect whenever they are closed and trades that never stop: every browser
reconnects, and each ends up holding exactly the broker's positions — the fills made while a
node (the consuming one included) was down are not lost from the final state."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.nodes.browser import Admin, LiveTab, Tab, broker_qty, eventually, qty_map
from tests.nodes.conftest import ClusterFactory, Sessions
from tests.nodes.harness import Cluster

pytestmark = pytest.mark.slow

# Two per user: with a fresh tab per node at the end, each user has MAX_CONNECTIONS_PER_USER.
CLIENTS = 4
SYMBOLS = ("AAPL", "MSFT", "NVDA")
CONVERGED_WITHIN_S = 30.0


@contextlib.asynccontextmanager
async def trading(admin: Admin, cluster: Cluster, users: list[str]) -> AsyncIterator[list[str]]:
    """Test trades one after another through whichever node answers, until exit."""
    placed: list[str] = []
    stop = asyncio.Event()

    async def place() -> None:
        for turn in itertools.count():
            if stop.is_set():
                return
            node = cluster.nodes[turn % len(cluster.nodes)]
            user, symbol = users[turn % len(users)], SYMBOLS[turn % len(SYMBOLS)]
            if node.alive:
                # A node stopping or starting refuses or answers 503: the next turn goes on.
                with contextlib.suppress(aiohttp.ClientError, AssertionError):
                    placed.append((await admin.trade(node.url, user, symbol, "buy", 1))["orderId"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    task = asyncio.create_task(place(), name="trading")
    try:
        yield placed
    finally:
        stop.set()
        await task


async def test_a_rolling_restart_under_live_clients_loses_nothing_from_the_final_state(
    own_cluster: ClusterFactory, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    cluster = own_cluster()
    users = ["alice", "bob"]
    tokens = {name: await sessions.token(cluster[0].url, name) for name in users}
    admin = await sessions.admin(cluster[1].url)
    urls = [node.url for node in cluster.nodes]
    owners = [users[index % len(users)] for index in range(CLIENTS)]
    clients = [
        LiveTab(http, urls, home=index % len(urls), token=tokens[owner])
        for index, owner in enumerate(owners)
    ]
    try:
        for client in clients:
            await client.wait_connected()
        async with trading(admin, cluster, users) as placed:
            for node in cluster.nodes:
                before = len(placed)
                # In a thread: the clients must keep reading (and answer the 1001) meanwhile.
                assert await asyncio.to_thread(node.terminate) == 0, node.log()
                node.restart()
                await asyncio.to_thread(node.wait_ready)
                for client in clients:
                    await client.wait_converged(lambda _tab: True, "a live socket again")
                # Trades went on through the restart (through the other nodes).
                await eventually(lambda b=before: len(placed) > b, "a trade after the restart")
        assert len(placed) > 0

        truth = {
            user: broker_qty(await cluster.simulator.settled_positions(http, user))
            for user in users
        }
        for client, owner in zip(clients, owners, strict=True):
            tab = await client.wait_converged(
                lambda t, q=truth[owner]: t.qty() == q,
                f"{owner}'s client showing the broker's positions {truth[owner]}",
                CONVERGED_WITHIN_S,
            )
            assert qty_map((await tab.resync())["positions"]) == truth[owner]
            assert tab.seq_gaps == []
            # Every client was on a node that restarted at some point, and came back.
            assert client.connects >= 2, (client.connects, client.closes)
            assert set(client.closes) <= {1001}, client.closes
        # Reconnecting clients may all have ended on one node: every node shows the same.
        fresh = [
            (owner, await Tab.open(http, node.url, tokens[owner]))
            for node in cluster.nodes
            for owner in users
        ]
        try:
            for owner, tab in fresh:
                await tab.wait(
                    lambda t, q=truth[owner]: t.qty() == q,
                    f"a new tab of {owner} on {tab.node_url} showing {truth[owner]}",
                )
        finally:
            for _, tab in fresh:
                await tab.close()
        for node in cluster.nodes:
            assert node.tracebacks() == 0, node.log()
    finally:
        for client in clients:
            await client.stop()
