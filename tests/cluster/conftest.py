"""Fixtures for the cluster tests: real Redis servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.cluster.client import command_client
from tests.cluster.redis_server import RedisServer
from tests.cluster.support import cluster_settings


@pytest.fixture(scope="session")
def shared_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the tests that never stop it; each test starts from an empty database."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own, which it may stop and start again on the same port."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(shared_redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A node's command client (its timeouts, retries and cancellation behaviour)."""
    client = command_client(cluster_settings(shared_redis_server.url), "test")
    await client.flushall()
    await client.config_resetstat()
    yield client
    await client.aclose()


@pytest.fixture
def redis_url(shared_redis_server: RedisServer) -> str:
    return shared_redis_server.url
