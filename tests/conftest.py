"""Shared fixtures: the real app built by the factory with explicit Settings."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.factory import create_app
from app.keys import BUS_KEY, STORE_KEY
from config.logging import configure_logging
from config.settings import Settings


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test: a private SQLite file, short windows, no .env, no broker."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/portfolio-stream.db",
        "batch_window_ms": 50,
        "heartbeat_interval_ms": 10_000,
        "heartbeat_timeout_ms": 20_000,
        "shutdown_timeout_s": 5,
        "broker": "simulated",
        "sim_order_interval_s": 0,
        "sim_demo_users": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def log_lines(tmp_path: Path) -> io.StringIO:
    """Everything the service logs during the test, rendered exactly as in production."""
    stream = io.StringIO()
    configure_logging(make_settings(tmp_path), extra_streams=[stream])
    return stream


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]


@pytest.fixture
async def app_client(aiohttp_client: Any, tmp_path: Path) -> ClientFactory:
    """Build the real app (no broker bridge) with overrides and return a test client;
    ``server_kwargs`` go to aiohttp's TestServer (e.g. a ``socket_factory``)."""

    async def build(
        *, server_kwargs: dict[str, Any] | None = None, **overrides: Any
    ) -> TestClient[Any, web.Application]:
        app = create_app(make_settings(tmp_path, **overrides), with_bridge=False)
        client: TestClient[Any, web.Application] = await aiohttp_client(
            app, server_kwargs=server_kwargs
        )
        return client

    return build


async def login(
    client: TestClient[Any, web.Application],
    username: str,
    password: str = "correct horse",
    *,
    admin: bool = False,
) -> str:
    """Create a user through the store, log in through the API, return the session id."""
    store = client.app[STORE_KEY]
    await store.ensure_user(username, password, is_admin=admin)
    response = await client.post(
        "/api/auth/login", json={"username": username, "password": password}
    )
    assert response.status == 200, await response.text()
    return response.cookies["session"].value


def publish(
    client: TestClient[Any, web.Application],
    event_type: str,
    payload: dict[str, Any],
    *,
    quiet: bool = False,
) -> None:
    client.app[BUS_KEY].publish(event_type, payload, quiet=quiet)
