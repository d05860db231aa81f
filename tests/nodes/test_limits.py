"""The connection limits are the cluster's, not a node's: the 6th connection of a user and the
connection past MAX_TOTAL_CONNECTIONS (20 here, standing in for production's 100) are refused
with 1013 whichever node they reach, and a slot freed on one node is usable on another."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.nodes.browser import Admin, Tab, admitted, eventually, refused
from tests.nodes.conftest import TRADERS, Sessions
from tests.nodes.harness import PER_USER_LIMIT, TOTAL_LIMIT, Cluster

pytestmark = pytest.mark.slow

LIMIT_CLOSE = (1013, "Maximum connections exceeded")


async def settled(admin: Admin, cluster: Cluster) -> None:
    """Until every node counts no connection (a previous test's closes are all released)."""

    async def idle() -> bool:
        docs = [await admin.stats(node.url) for node in cluster.nodes]
        return all(doc["activeConnections"] == 0 for doc in docs)

    await eventually(idle, "no connection left anywhere", 15)


@contextlib.asynccontextmanager
async def tabs_closed_at_exit() -> AsyncIterator[list[Tab]]:
    tabs: list[Tab] = []
    try:
        yield tabs
    finally:
        for tab in tabs:
            await tab.close()


async def test_the_sixth_connection_of_a_user_is_refused_whichever_node_it_reaches(
    cluster: Cluster, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    a, b, c = cluster.nodes
    await settled(await sessions.admin(a.url), cluster)
    token = await sessions.token(a.url, "alice")
    async with tabs_closed_at_exit() as tabs:
        for node in (a, a, b, b, c):
            tabs.append(await Tab.open(http, node.url, token, subscribe=False))
        assert len(tabs) == PER_USER_LIMIT
        for node in cluster.nodes:
            refusal = await refused(http, node.url, token)
            assert (refusal.code, refusal.reason) == LIMIT_CLOSE, node.id
        # A slot freed on A is one more connection on C.
        await tabs.pop(0).close()
        tabs.append(
            await eventually(lambda: admitted(http, c.url, token), "the freed slot, taken on C", 10)
        )
        refusal = await refused(http, b.url, token)
        assert (refusal.code, refusal.reason) == LIMIT_CLOSE
        # Other users are not limited by alice's connections.
        bob = await sessions.token(b.url, "bob")
        tabs.append(await Tab.open(http, c.url, bob, subscribe=False))


async def test_the_connection_past_the_cluster_total_is_refused_whichever_node_it_reaches(
    cluster: Cluster, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    await settled(await sessions.admin(cluster[0].url), cluster)
    tokens = {name: await sessions.token(cluster[1].url, name) for name in TRADERS}
    fillers, last = TRADERS[:-1], TRADERS[-1]
    assert len(fillers) * PER_USER_LIMIT == TOTAL_LIMIT
    async with tabs_closed_at_exit() as tabs:
        for index in range(TOTAL_LIMIT):
            node = cluster.nodes[index % len(cluster.nodes)]
            user = fillers[index % len(fillers)]
            tabs.append(await Tab.open(http, node.url, tokens[user], subscribe=False))
        for node in cluster.nodes:
            refusal = await refused(http, node.url, tokens[last])
            assert (refusal.code, refusal.reason) == LIMIT_CLOSE, node.id
        # One connection closed anywhere makes room for exactly one, on any node.
        await tabs.pop(0).close()
        tabs.append(
            await eventually(
                lambda: admitted(http, cluster[2].url, tokens[last]),
                "the freed slot, taken by the fifth user",
                10,
            )
        )
        refusal = await refused(http, cluster[1].url, tokens[last])
        assert (refusal.code, refusal.reason) == LIMIT_CLOSE
