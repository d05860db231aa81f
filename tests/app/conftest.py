"""Fixtures for the service-core tests.

Every test app here starts with the same users already in its store (alice, bob, carol and the
admin ``root``, password ``correct horse``): an argon2 hash costs ~100 ms of CPU, so the users
are hashed once per run into a template database that each test copies.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.store import Store
from tests.app.support import PASSWORD
from tests.conftest import ClientFactory

USERS = {"alice": False, "bob": False, "carol": False, "root": True}
DB_NAME = "portfolio-stream.db"  # the file tests/conftest.py's settings point at


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


@pytest.fixture
async def app_client(
    app_client: ClientFactory, tmp_path: Path, users_template: Path
) -> ClientFactory:
    """tests/conftest.py's ``app_client``, its store seeded with the template users."""

    async def build(**overrides: Any) -> TestClient[Any, web.Application]:
        database = tmp_path / DB_NAME
        if "database_url" not in overrides and not database.exists():
            shutil.copyfile(users_template, database)
        return await app_client(**overrides)

    return build
