"""Which node consumes a broker account: two whole services (broker bridge included) on one
Redis and one simulated broker. Exactly one of them streams the account, its writes carry its
lease's epoch, the stats of both say which, and a graceful stop hands the account over at once.

(tests/nodes/test_failover.py does the same with processes, SIGKILL and SIGSTOP.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from alpaca_bridge.simulator import SimulatedBroker
from app.cluster.keys import UserKeys
from app.factory import create_app
from app.keys import STORE_KEY
from config.settings import Settings
from tests.app.support import PASSWORD, Session, cookie
from tests.cluster.redis_server import RedisServer
from tests.cluster.support import eventually

KEY, SECRET = "PKCLUSTER", "cluster-secret"
Client = TestClient[Any, web.Application]


@pytest.fixture
async def broker() -> AsyncIterator[SimulatedBroker]:
    sim = SimulatedBroker(tick_interval_s=0.05, order_interval_s=0, seed=3)
    sim.add_account(KEY, SECRET, label="alice")
    await sim.start()
    yield sim
    await sim.stop()


def node_settings(sim: SimulatedBroker, redis_url: str, tmp_path: Path, node_id: str) -> Settings:
    values: dict[str, Any] = {
        "broker": "alpaca",
        "alpaca_api_key": KEY,
        "alpaca_secret_key": SECRET,
        "alpaca_username": "alice",
        "alpaca_api_url": sim.base_url,
        "alpaca_stream_url": sim.trading_stream_url,
        "alpaca_data_stream_url": sim.data_stream_url,
        "alpaca_backoff_initial_s": 0.05,
        "alpaca_backoff_max_s": 0.2,
        "database_url": f"sqlite:///{tmp_path}/users.db",  # one file: the shared store
        "redis_url": redis_url,
        "node_id": node_id,
        "redis_timeout_s": 1.0,
        "redis_probe_interval_s": 0.2,
        "cluster_node_report_interval_s": 0.2,
        "cluster_entry_ttl_s": 3.0,
        "heartbeat_interval_ms": 2000,
        "lease_ttl_s": 3.0,
        "lease_renew_s": 0.5,
        "batch_window_ms": 50,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def admin_of(node: Client) -> Session:
    store = node.app[STORE_KEY]
    admin = await store.ensure_user("admin", PASSWORD, is_admin=True)
    return Session(await store.create_session(admin.id, 3600), admin.id)


async def accounts(node: Client, admin: Session) -> list[dict[str, Any]]:
    response = await node.get("/api/admin/websocket-stats", headers=cookie(admin.token))
    body: dict[str, Any] = await response.json()
    result: list[dict[str, Any]] = body["broker"]["accounts"]
    return result


async def test_one_node_consumes_an_account_and_hands_it_over_when_it_stops(
    aiohttp_client: Any, broker: SimulatedBroker, redis_server: RedisServer, tmp_path: Path
) -> None:
    first = create_app(node_settings(broker, redis_server.url, tmp_path, "node-a"))
    # The account's user exists before the bridges start (they look it up once).
    a: Client = await aiohttp_client(first)
    await a.app[STORE_KEY].ensure_user("alice", PASSWORD)
    await a.close()
    a = await aiohttp_client(
        create_app(node_settings(broker, redis_server.url, tmp_path, "node-a"))
    )
    b: Client = await aiohttp_client(
        create_app(node_settings(broker, redis_server.url, tmp_path, "node-b"))
    )
    admin = await admin_of(a)

    async def consumer() -> tuple[str | None, int | None]:
        [row] = await accounts(a, admin)
        return row["consumer"], row["epoch"]

    await eventually(lambda: broker.trading_connections(KEY) == 1, timeout_s=10)
    await eventually(lambda: _consumer_known(consumer), timeout_s=10)
    holder, epoch = await consumer()
    assert holder in ("node-a", "node-b") and epoch is not None

    # Both nodes answer the same: the holder's own view of the account, with its epoch (the
    # holder's report reaches the other node within a report interval).
    async def b_sees_the_holders_view() -> bool:
        [row] = await accounts(b, admin)
        return bool(row["status"] == "connected")

    await eventually(b_sees_the_holders_view, timeout_s=5, what="node-b to show the holder's view")
    [seen_by_b] = await accounts(b, admin)
    assert (seen_by_b["consumer"], seen_by_b["epoch"], seen_by_b["status"]) == (
        holder,
        epoch,
        "connected",
    )
    # Its writes carry that epoch.
    redis = Redis.from_url(redis_server.url)
    user = await a.app[STORE_KEY].get_user_by_username("alice")
    assert user is not None
    await eventually(
        lambda: _fencing_epoch(redis, user.id, epoch), timeout_s=10, what="alice's state"
    )

    # The holder stops (gracefully): the other takes over at once, not after the TTL.
    stopping, staying = (a, b) if holder == "node-a" else (b, a)
    await stopping.close()
    admin_b = await admin_of(staying)

    async def taken_over() -> bool:
        [row] = await accounts(staying, admin_b)
        return row["consumer"] not in (None, holder) and row["status"] == "connected"

    await eventually(taken_over, timeout_s=2.5, what="the takeover within the lease's life")
    [row] = await accounts(staying, admin_b)
    assert row["epoch"] > epoch
    await eventually(lambda: broker.trading_connections(KEY) == 1, timeout_s=5)
    await eventually(lambda: _fencing_epoch(redis, user.id, row["epoch"]), timeout_s=10)
    await redis.aclose()


async def _consumer_known(read: Any) -> bool:
    holder, _ = await read()
    return holder is not None


async def _fencing_epoch(redis: Redis, user_id: str, epoch: int) -> bool:
    stored = await redis.hget(UserKeys.of(user_id).meta, "fe")
    return stored is not None and int(stored) == epoch
