"""Fixtures for the multi-node tests: one database of users per session, one cluster shared by
the tests that only watch it, and one per test for those that kill, stop or restart a part."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cluster.redis_server import REDIS_SERVER
from tests.nodes.browser import Admin, http_session, login
from tests.nodes.harness import (
    PASSWORD,
    Account,
    Cluster,
    RedisServer,
    Simulator,
    create_users,
    write_accounts,
)
from tests.postgres import TestDatabase, unreachable_reason

# Five traders (four at their per-user limit fill MAX_TOTAL_CONNECTIONS; the fifth is refused)
# and the operator.
TRADERS = ("alice", "bob", "carol", "dave", "erin")
ADMIN = "ops"


@dataclass
class World:
    """What every cluster of the session shares: the users in PostgreSQL, their broker keys."""

    workdir: Path
    database_url: str
    accounts_file: Path
    accounts: list[Account]


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    reason = unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("nodes")
    database = TestDatabase().create()
    try:
        accounts_file = workdir / "accounts.toml"
        accounts = write_accounts(accounts_file, TRADERS)
        create_users(database.url, workdir, TRADERS, admins=(ADMIN,))
        yield World(workdir, database.url, accounts_file, accounts)
    finally:
        database.drop()


@contextlib.contextmanager
def running_cluster(world: World, workdir: Path, **overrides: Any) -> Iterator[Cluster]:
    """A Redis of its own, a simulator of its own and the nodes; all gone at exit."""
    redis = RedisServer(workdir / "redis")
    simulator: Simulator | None = None
    cluster: Cluster | None = None
    try:
        redis.start()
        simulator = Simulator(workdir, world.accounts_file, world.accounts)
        cluster = Cluster(
            workdir,
            redis=redis,
            simulator=simulator,
            database_url=world.database_url,
            accounts_file=world.accounts_file,
            **overrides,
        )
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()
        if simulator is not None:
            simulator.kill()
        redis.stop()


@pytest.fixture(scope="session")
def cluster(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three nodes shared by the tests that only watch them, which leave them as they found
    them (every tab closed): starting a cluster costs more than most of these tests."""
    with running_cluster(world, tmp_path_factory.mktemp("cluster")) as shared:
        yield shared


ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def own_cluster(world: World, tmp_path: Path) -> Iterator[ClusterFactory]:
    """Start a cluster for this test alone (``size`` and setting overrides as keywords)."""
    numbers = itertools.count()
    with contextlib.ExitStack() as stack:

        def start(**overrides: Any) -> Cluster:
            workdir = tmp_path / f"cluster{next(numbers)}"
            return stack.enter_context(running_cluster(world, workdir, **overrides))

        yield start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with http_session() as session:
        yield session


class Sessions:
    """Log users in on a given node (the default: the first); one cookie per user and node."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def token(self, node_url: str, username: str) -> str:
        return await login(self.http, node_url, username, PASSWORD)

    async def admin(self, node_url: str) -> Admin:
        return Admin(self.http, await self.token(node_url, ADMIN))


@pytest.fixture
def sessions(http: aiohttp.ClientSession) -> Sessions:
    return Sessions(http)
