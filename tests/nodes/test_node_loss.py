"""A node that dies leaves nothing behind for longer than its bounds: its stats row goes within
three report intervals and its admission slots within CLUSTER_ENTRY_TTL_S (SIGKILL: nobody is
told, the entries expire); one that stops gracefully takes both with it at once."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.nodes.browser import Admin, Tab, admitted, eventually, refused
from tests.nodes.conftest import TRADERS, ClusterFactory, Sessions
from tests.nodes.harness import ENTRY_TTL_S, PER_USER_LIMIT, REPORT_INTERVAL_S, Cluster, Node

pytestmark = pytest.mark.slow

# Room for the polling itself on a loaded two-core machine, on top of each bound.
MARGIN_S = 3.0
LIMIT_CLOSE = (1013, "Maximum connections exceeded")


async def listed(admin: Admin, on: list[Node]) -> dict[str, list[str]]:
    """node id -> the ids its stats document lists in ``nodes``."""
    return {
        node.id: sorted(row["id"] for row in (await admin.stats(node.url)).get("nodes", []))
        for node in on
    }


async def wait_listed(admin: Admin, on: list[Node], ids: list[str], timeout_s: float) -> None:
    async def agreed() -> bool:
        return all(found == sorted(ids) for found in (await listed(admin, on)).values())

    await eventually(agreed, f"every node listing exactly {sorted(ids)}", timeout_s)


async def test_a_killed_nodes_row_and_slots_are_back_within_their_bounds(
    own_cluster: ClusterFactory, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    cluster: Cluster = own_cluster()
    a, b, c = cluster.nodes
    admin = await sessions.admin(a.url)
    tokens = {name: await sessions.token(b.url, name) for name in TRADERS}
    alice, erin = tokens["alice"], tokens["erin"]
    survivors: list[Tab] = []
    doomed: list[Tab] = []
    try:
        await wait_listed(admin, cluster.nodes, [a.id, b.id, c.id], 10)
        for _ in range(PER_USER_LIMIT):
            doomed.append(await Tab.open(http, c.url, alice, subscribe=False))
        for index, name in enumerate(("bob", "carol", "dave") * PER_USER_LIMIT):
            node = (a, b)[index % 2]
            survivors.append(await Tab.open(http, node.url, tokens[name], subscribe=False))
        assert (await refused(http, a.url, alice)).code == LIMIT_CLOSE[0]
        assert (await refused(http, b.url, erin)).code == LIMIT_CLOSE[0]

        c.kill()  # SIGKILL: no goodbye, no release

        await wait_listed(admin, [a, b], [a.id, b.id], 3 * REPORT_INTERVAL_S + MARGIN_S)
        first = await eventually(
            lambda: admitted(http, a.url, alice),
            "a slot of the killed node's user back",
            ENTRY_TTL_S + MARGIN_S,
        )
        survivors.append(first)
        for node in (b, a, b, a):
            survivors.append(await Tab.open(http, node.url, alice, subscribe=False))
        # The limits hold again, counting only the live connections.
        refusal = await refused(http, b.url, alice)
        assert (refusal.code, refusal.reason) == LIMIT_CLOSE
        refusal = await refused(http, a.url, erin)
        assert (refusal.code, refusal.reason) == LIMIT_CLOSE
        assert all(tab.close_code is not None for tab in doomed)

        async def counted() -> bool:
            docs = [await admin.stats(node.url) for node in (a, b)]
            return all(doc["activeConnections"] == len(survivors) for doc in docs)

        await eventually(counted, "the stats counting the live connections only", 10)
    finally:
        for tab in survivors + doomed:
            await tab.close()


async def test_a_node_stopped_gracefully_takes_its_row_and_slots_with_it_at_once(
    own_cluster: ClusterFactory, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    cluster: Cluster = own_cluster(size=2)
    a, b = cluster.nodes
    admin = await sessions.admin(a.url)
    alice = await sessions.token(a.url, "alice")
    await wait_listed(admin, cluster.nodes, [a.id, b.id], 10)
    leaving = [await Tab.open(http, b.url, alice, subscribe=False) for _ in range(5)]
    assert (await refused(http, a.url, alice)).code == LIMIT_CLOSE[0]

    # In a thread: the tabs must keep reading (and answer the 1001) meanwhile.
    assert await asyncio.to_thread(b.terminate) == 0

    assert [await tab.wait_closed() for tab in leaving] == [1001] * len(leaving)
    assert await listed(admin, [a]) == {a.id: [a.id]}
    staying = [await Tab.open(http, a.url, alice, subscribe=False) for _ in range(5)]
    try:
        refusal = await refused(http, a.url, alice)
        assert (refusal.code, refusal.reason) == LIMIT_CLOSE
    finally:
        for tab in staying:
            await tab.close()
