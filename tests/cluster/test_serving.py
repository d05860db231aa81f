"""Two instances of the service on one Redis (and one user store), as two nodes of a cluster
are: what one node publishes reaches the sockets of the other, snapshots come from the shared
state, connection limits and stats are the cluster's, and a Redis that goes away or comes back
empty costs no socket and shows no browser a portfolio that is not there.

The nodes here run in one process (the real app from the factory, real Redis, real sockets);
tests/nodes runs them as separate processes behind nginx, against the simulated broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from app.cluster.keys import UserKeys
from app.events import ACCOUNT_UPDATED, POSITION_CLOSED, POSITION_UPDATED, Event
from app.keys import BUS_KEY, CLUSTER_KEY
from app.protocol import CloseCode
from tests.app.support import (
    ALL_CHANNELS,
    Client,
    Session,
    account,
    connect,
    cookie,
    position,
    receive_close,
    receive_type,
    session_for,
    subscribe,
)
from tests.cluster.redis_server import RedisServer
from tests.cluster.support import eventually
from tests.conftest import ClientFactory

Nodes = Callable[..., Awaitable[list[Client]]]


@pytest.fixture
def nodes(app_client: ClientFactory, tmp_path: Path) -> Nodes:
    """Build ``count`` nodes on ``server`` (one SQLite file stands for the shared store)."""

    async def build(server: RedisServer, count: int = 2, **overrides: Any) -> list[Client]:
        values: dict[str, Any] = {
            "redis_url": server.url,
            "redis_timeout_s": 1.0,
            "redis_backoff_initial_s": 0.05,
            "redis_backoff_max_s": 0.2,
            "redis_probe_interval_s": 0.2,
            "cluster_entry_ttl_s": 3.0,  # refreshed by the heartbeat's cadence, below it
            "heartbeat_interval_ms": 2000,
            "heartbeat_timeout_ms": 60_000,
            "cluster_node_report_interval_s": 0.2,
            "max_connections_per_user": 3,
            "max_total_connections": 5,
        }
        values.update(overrides)
        return [
            await app_client(node_id=f"node-{chr(ord('a') + i)}", **values) for i in range(count)
        ]

    return build


@pytest.fixture
async def clean_redis(shared_redis_server: RedisServer) -> RedisServer:
    client = Redis.from_url(shared_redis_server.url)
    await client.flushall()
    await client.aclose()
    return shared_redis_server


def publish(node: Client, kind: str, payload: dict[str, Any]) -> None:
    node.app[BUS_KEY].publish(kind, payload)


async def refusal(node: Client, session: Session) -> aiohttp.WSMessage:
    """Open a socket that the limits refuse: its close frame."""
    ws = await node.ws_connect("/ws/portfolio", headers=session.headers)
    return await receive_close(ws)


async def stats(node: Client, admin: Session) -> dict[str, Any]:
    response = await node.get("/api/admin/websocket-stats", headers=admin.headers)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def test_an_event_published_on_one_node_reaches_the_sockets_of_every_node(
    nodes: Nodes, clean_redis: RedisServer
) -> None:
    a, b = await nodes(clean_redis)
    alice = await session_for(a, "alice")
    on_a, _ = await connect(a, alice)
    on_b, _ = await connect(b, alice)
    for ws in (on_a, on_b):
        await subscribe(ws, ALL_CHANNELS)

    publish(a, POSITION_UPDATED, position(alice.user_id, "AAPL"))

    for ws in (on_a, on_b):
        batch = await receive_type(ws, "batch")
        assert [p["symbol"] for p in batch["positions"]] == ["AAPL"]


async def test_a_snapshot_on_any_node_is_the_shared_state(
    nodes: Nodes, clean_redis: RedisServer
) -> None:
    a, b = await nodes(clean_redis)
    alice = await session_for(a, "alice")
    publish(a, POSITION_UPDATED, position(alice.user_id, "AAPL"))
    publish(a, POSITION_UPDATED, position(alice.user_id, "MSFT"))
    publish(a, POSITION_CLOSED, {"userId": alice.user_id, "symbol": "AAPL", "closedAt": "x"})
    publish(a, ACCOUNT_UPDATED, account(alice.user_id, equity="123.00"))
    await eventually(lambda: a.app[BUS_KEY].queue_depth == 0)

    snapshots = []
    for node in (a, b):
        ws, _ = await connect(node, alice)
        _, snapshot = await subscribe(ws, ALL_CHANNELS)
        snapshots.append({k: v for k, v in snapshot.items() if k != "seq"})
    assert snapshots[0] == snapshots[1]
    assert [p["symbol"] for p in snapshots[1]["positions"]] == ["MSFT"]
    assert snapshots[1]["account"]["equity"] == "123.00"
    # The polling fallback reads the same state, on a node holding no socket of the user.
    response = await b.get("/api/portfolio", headers=cookie(alice.token))
    assert (await response.json())["positions"] == snapshots[0]["positions"]


async def test_connection_limits_hold_across_nodes(nodes: Nodes, clean_redis: RedisServer) -> None:
    a, b = await nodes(clean_redis)
    alice, bob = await session_for(a, "alice"), await session_for(a, "bob")
    sockets = [(await connect(node, alice))[0] for node in (a, b, a)]  # the user's limit: 3

    for node in (a, b):
        close = await refusal(node, alice)
        assert (close.data, close.extra) == (
            CloseCode.TRY_AGAIN_LATER,
            "Maximum connections exceeded",
        )

    sockets += [(await connect(node, bob))[0] for node in (b, a)]  # the total: 5
    assert (await refusal(b, bob)).data == CloseCode.TRY_AGAIN_LATER

    # A closed socket's slot is back for the whole cluster.
    await sockets[0].close()
    await eventually(lambda: a.app[CLUSTER_KEY].slots.held == 2)  # alice, bob

    async def admitted_on_b() -> bool:
        ws = await b.ws_connect("/ws/portfolio", headers=alice.headers)
        message = await ws.receive()
        if message.type is aiohttp.WSMsgType.TEXT:
            sockets.append(ws)
            return True
        return False

    await eventually(admitted_on_b)


async def test_every_node_answers_the_clusters_stats(
    nodes: Nodes, clean_redis: RedisServer
) -> None:
    a, b = await nodes(clean_redis)
    admin = await session_for(a, "admin", admin=True)
    alice = await session_for(a, "alice")
    await connect(a, alice)
    await connect(b, alice)
    await connect(b, alice)

    async def agreed() -> bool:
        documents = [await stats(node, admin) for node in (a, b)]
        return all(
            d["activeConnections"] == 3
            and d["connectionsByUser"] == {alice.user_id: 3}
            and [row["id"] for row in d["nodes"]] == ["node-a", "node-b"]
            for d in documents
        )

    await eventually(agreed)
    document = await stats(b, admin)
    assert document["node"]["id"] == "node-b" and document["node"]["connections"] == 2
    assert document["cluster"] == {"redis": "connected", "degraded": False}
    assert document["totalMessagesDelivered"] >= 0 and document["status"] == "healthy"


async def test_a_stopped_node_leaves_the_clusters_stats_at_once(
    nodes: Nodes, clean_redis: RedisServer
) -> None:
    a, b = await nodes(clean_redis)
    admin = await session_for(a, "admin", admin=True)

    async def listed(expected: list[str]) -> bool:
        return [row["id"] for row in (await stats(a, admin))["nodes"]] == expected

    await eventually(lambda: listed(["node-a", "node-b"]))
    await b.close()
    assert await listed(["node-a"])


async def test_without_redis_a_node_keeps_its_sockets_and_admits_by_its_own_limits(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    (a,) = await nodes(redis_server, count=1)
    alice = await session_for(a, "alice")
    kept, _ = await connect(a, alice)
    await subscribe(kept, ALL_CHANNELS)
    publish(a, POSITION_UPDATED, position(alice.user_id, "AAPL"))  # this node writes
    await receive_type(kept, "batch")

    redis_server.stop()
    fresh, _ = await connect(a, alice)  # admitted by the node's own limits
    health = (await a.get("/readyz")).status, (await (await a.get("/readyz")).json())["cluster"]
    assert health == (200, {"redis": "unavailable", "degraded": True})
    fourth = [(await connect(a, alice))[0]]
    # The user's limit still holds, locally.
    assert (await refusal(a, alice)).data == CloseCode.TRY_AGAIN_LATER
    assert not kept.closed and not fresh.closed and not fourth[0].closed

    # Back (empty, as a Redis without persistence restarts): the sockets are counted again,
    # the state rebuilt (by this node's broker: here it holds nothing), and what is published
    # from then on reaches them.
    redis_server.start()
    cluster = a.app[CLUSTER_KEY]
    await eventually(lambda: cluster.health.redis == "connected", timeout_s=10)
    await eventually(lambda: cluster.slots.restored == 3, timeout_s=10)
    await eventually(lambda: cluster.bus.status.rebuilds == 1, timeout_s=10)
    resync = await receive_type(kept, "snapshot", limit_s=10)  # the state was read again
    assert resync["positions"] == []  # what the (empty) broker rebuilt
    publish(a, POSITION_UPDATED, position(alice.user_id, "NVDA"))
    batch = await receive_type(kept, "batch", limit_s=10)
    assert [p["symbol"] for p in batch["positions"]] == ["NVDA"]


async def test_a_redis_that_comes_back_empty_is_rebuilt_before_anyone_is_shown_it(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    a, b = await nodes(redis_server)
    alice = await session_for(a, "alice")
    truth = [position(alice.user_id, "AAPL"), position(alice.user_id, "TSLA")]
    for payload in truth:
        publish(a, POSITION_UPDATED, payload)
    rebuilt: list[str] = []

    async def rebuild() -> None:  # what the broker does: the ledger's whole state again
        rebuilt.append("rebuild")
        events = [Event(POSITION_UPDATED, p, 0.0) for p in truth]
        a.app[BUS_KEY].replace_state(alice.user_id, events)  # type: ignore[attr-defined]

    a.app[CLUSTER_KEY].bus.set_rebuild(rebuild)
    watcher, _ = await connect(b, alice)
    _, first = await subscribe(watcher, ALL_CHANNELS)
    assert [p["symbol"] for p in first["positions"]] == ["AAPL", "TSLA"]

    redis_server.stop()
    redis_server.start()  # without its data

    snapshot = await receive_type(watcher, "snapshot", limit_s=15)
    assert rebuilt == ["rebuild"]
    assert [p["symbol"] for p in snapshot["positions"]] == ["AAPL", "TSLA"]
    assert snapshot["seq"] > first["seq"]


async def test_a_gap_in_the_notices_re_snapshots_the_users_sockets(
    nodes: Nodes, clean_redis: RedisServer
) -> None:
    a, b = await nodes(clean_redis)
    alice = await session_for(a, "alice")
    publish(a, POSITION_UPDATED, position(alice.user_id, "AAPL"))
    watcher, _ = await connect(b, alice)
    _, first = await subscribe(watcher, ALL_CHANNELS)
    redis = Redis.from_url(clean_redis.url)
    keys = UserKeys.of(alice.user_id)
    epoch, offset = await redis.hmget(keys.meta, ["e", "o"])
    assert epoch is not None and offset is not None
    # A notice from further on: the ones between never arrived (pub/sub is at-most-once).
    payload = orjson.dumps(position(alice.user_id, "ZZZZ")).decode()
    gap = f'["{epoch.decode()}",{int(offset) + 5},"position:updated",{payload},0,0]'
    await redis.publish(keys.channel, gap)
    await redis.aclose()

    snapshot = await receive_type(watcher, "snapshot")
    assert snapshot["seq"] == first["seq"] + 1
    # Re-read from Redis, which never held the notice that jumped ahead.
    assert [p["symbol"] for p in snapshot["positions"]] == ["AAPL"]
