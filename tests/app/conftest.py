"""Fixtures for the service-core tests.

Every test app here starts with the same users already in its store (alice, bob, carol and the
admin ``root``, password ``correct horse``): an argon2 hash costs ~100 ms of CPU, so the users
are hashed once per run into a template database that each test copies.

A module that sets ``STORE_BACKENDS = ("sqlite", "postgresql")`` runs each of its tests that
uses a store once per backend: the app's ``DATABASE_URL`` (``app_client``) and ``open_store``
then point at a SQLite file or at this run's PostgreSQL test database (tests/postgres.py).
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.pg_store import PostgresStore
from app.store import Store
from app.user_store import UserStore
from tests.app.support import PASSWORD, WallClock
from tests.conftest import ClientFactory
from tests.postgres import StoreFactory, TestDatabase, unreachable_reason

USERS = {"alice": False, "bob": False, "carol": False, "root": True}
DB_NAME = "portfolio-stream.db"  # the file tests/conftest.py's settings point at


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = getattr(metafunc.module, "STORE_BACKENDS", None)
    if backends and "store_backend" in metafunc.fixturenames:
        metafunc.parametrize("store_backend", backends, indirect=True)


@pytest.fixture
def store_backend(request: pytest.FixtureRequest) -> str:
    """The store's backend for this test: SQLite unless the module asks for both."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def users_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("users") / DB_NAME

    async def create() -> None:
        store = Store(path)
        await store.open()
        for username, admin in USERS.items():
            await store.create_user(username, PASSWORD, is_admin=admin)
        await store.close()

    asyncio.run(create())
    return path


def template_rows(template: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(template) as db:
        return db.execute(
            "SELECT seq, id, username, password_hash, is_admin, created_at FROM users"
        ).fetchall()


@pytest.fixture(scope="session")
def postgres() -> Iterator[TestDatabase]:
    """This run's PostgreSQL database, with the store's schema; skips when no server answers."""
    reason = unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    database = TestDatabase().create()

    async def migrate() -> None:
        store = PostgresStore(database.url)
        await store.open()
        await store.close()

    try:
        # On a thread of its own: this may be set up from inside a test's running loop.
        with ThreadPoolExecutor(max_workers=1) as thread:
            thread.submit(asyncio.run, migrate()).result()
        yield database
    finally:
        database.drop()


@pytest.fixture
def database_url(
    store_backend: str, tmp_path: Path, users_template: Path, request: pytest.FixtureRequest
) -> Callable[[], str]:
    """Makes the DATABASE_URL of this test's app, holding the template users (when the app is
    built, so that a test may prepare its own SQLite file first)."""
    if store_backend == "sqlite":

        def sqlite_url() -> str:
            database = tmp_path / DB_NAME
            if not database.exists():
                shutil.copyfile(users_template, database)
            return f"sqlite:///{database}"

        return sqlite_url
    postgres: TestDatabase = request.getfixturevalue("postgres")
    seeded = False

    def postgres_url() -> str:
        nonlocal seeded
        if not seeded:
            postgres.reset(template_rows(users_template))
            seeded = True
        return postgres.url

    return postgres_url


@pytest.fixture
async def app_client(app_client: ClientFactory, database_url: Callable[[], str]) -> ClientFactory:
    """tests/conftest.py's ``app_client``, its store seeded with the template users."""

    async def build(**overrides: Any) -> TestClient[Any, web.Application]:
        if "database_url" not in overrides:
            overrides["database_url"] = database_url()
        return await app_client(**overrides)

    return build


@pytest.fixture
async def open_store(
    store_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[StoreFactory]:
    """Opens stores on one empty database of this test's backend (a second call: another
    process or node on the same database); all are closed at the end."""
    opened: list[UserStore] = []
    if store_backend == "postgresql":
        postgres: TestDatabase = request.getfixturevalue("postgres")
        postgres.reset()

    async def open_one(**options: Any) -> UserStore:
        store: UserStore
        if store_backend == "postgresql":
            store = PostgresStore(postgres.url, **options)
        else:
            store = Store(tmp_path / "db" / "store.db", **options)
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in reversed(opened):
        await store.close()


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


@pytest.fixture
async def store(open_store: StoreFactory, clock: WallClock) -> UserStore:
    """One store of this test's backend on ``clock``'s time."""
    return await open_store(clock=clock)


@pytest.fixture
def stored_rows(
    store_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[[str], list[tuple[Any, ...]]]:
    """Runs a query on ``open_store``'s database directly, as an attacker with a copy would."""

    def run(query: str) -> list[tuple[Any, ...]]:
        if store_backend == "postgresql":
            postgres: TestDatabase = request.getfixturevalue("postgres")
            return postgres.query(query)
        with sqlite3.connect(tmp_path / "db" / "store.db") as db:
            return db.execute(query).fetchall()

    return run
