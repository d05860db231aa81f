"""A PostgreSQL store that cannot be used: at start one line naming DATABASE_URL (no traceback,
no password); while serving 503 ``store_unavailable`` within DATABASE_TIMEOUT_S and ``/readyz``
saying so — never a request held — until the server answers again.

The shared test server is never stopped: a relay in front of it (tests/tcp_proxy.py) is
paused (a hung or partitioned server) or killed (a server gone), or the URL names a port
nothing listens on.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.keys import STORE_KEY
from app.pg_store import PostgresStore
from app.store_health import StoreUnavailable
from tests.app.support import PASSWORD, Client, cookie
from tests.conftest import ClientFactory
from tests.ops.conftest import CLI, service_env
from tests.postgres import TestDatabase, with_database
from tests.tcp_proxy import TcpProxy

STORE_BACKENDS = ("postgresql",)
TIMEOUT_S = 1.0  # DATABASE_TIMEOUT_S here: a refusal must come about this fast
BOUND_S = 5.0  # "not held": well under psycopg's own cancellation (up to 10 s more)


@pytest.fixture
async def proxy(postgres: TestDatabase) -> AsyncIterator[TcpProxy]:
    target = urlsplit(postgres.url)
    relay = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await relay.start()
    yield relay
    await relay.close()


def through(proxy: TcpProxy, url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()


@pytest.fixture
async def node(
    app_client: ClientFactory, database_url: Callable[[], str], proxy: TcpProxy
) -> Client:
    """The service on the template users, reaching PostgreSQL through the relay."""
    return await app_client(
        database_url=through(proxy, database_url()), database_timeout_s=TIMEOUT_S
    )


async def login(client: Client) -> tuple[int, dict[str, str], float]:
    started = time.monotonic()
    response = await client.post(
        "/api/auth/login", json={"username": "alice", "password": PASSWORD}
    )
    body = await response.json()
    client.session.cookie_jar.clear()
    return response.status, body, time.monotonic() - started


async def ready(client: Client) -> tuple[int, dict[str, object]]:
    response = await client.get("/readyz")
    return response.status, await response.json()


async def until_ready(client: Client, limit_s: float = 15.0) -> None:
    async with asyncio.timeout(limit_s):
        # Recovery is the pool reconnecting on its own: no event to await, only its effect.
        while (await ready(client))[0] != 200:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_a_server_that_stops_answering_is_503_at_once_then_recovers(
    node: Client, proxy: TcpProxy, log_lines: io.StringIO
) -> None:
    token = await node.app[STORE_KEY].create_session("user-2", 3600)
    assert (await login(node))[0] == 200

    proxy.pause()
    for _ in range(2):
        status, body, took = await login(node)
        assert status == 503 and body["error"] == "store_unavailable", body
        assert took < BOUND_S
    started = time.monotonic()
    me = await node.get("/api/auth/me", headers=cookie(token))
    assert me.status == 503 and time.monotonic() - started < BOUND_S
    assert me.headers["Retry-After"]
    status, readiness = await ready(node)
    assert status == 503 and readiness["store"]["state"] == "unavailable"  # type: ignore[index]
    assert readiness["checks"]["store"] is False  # type: ignore[index]

    proxy.resume()
    await until_ready(node)
    assert (await login(node))[0] == 200
    assert (await node.get("/api/auth/me", headers=cookie(token))).status == 200
    text = log_lines.getvalue()
    assert text.count("ERROR [Store] Database unavailable: ") == 1, text
    assert text.count("INFO [Store] Database available again: ") == 1, text
    assert "Traceback" not in text


async def test_a_server_gone_is_503_and_its_return_is_noticed(
    node: Client, proxy: TcpProxy
) -> None:
    assert (await login(node))[0] == 200
    await proxy.kill()  # every connection reset, the port closed
    status, body, took = await login(node)
    assert status == 503 and body["error"] == "store_unavailable" and took < BOUND_S
    assert (await ready(node))[0] == 503
    await proxy.start()  # the server is back (same address)
    await until_ready(node)
    assert (await login(node))[0] == 200


async def test_start_up_errors_name_database_url_in_one_line(postgres: TestDatabase) -> None:
    cases = {
        "postgresql://app:s3cret@127.0.0.1:1/portfolio": "refused",
        with_database(postgres.url, "no_such_database_here"): "does not exist",
        "postgresql://127.0.0.1:notaport/x": "port",
        "postgresql://app:s3cret@[::1/x": "not a usable PostgreSQL URL",  # libpq echoes it
    }
    for url, says in cases.items():
        store = PostgresStore(url, timeout_s=TIMEOUT_S)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await store.open()
        message = str(caught.value)
        assert message.startswith("DATABASE_URL=postgresql://"), message
        assert "\n" not in message and "s3cret" not in message and says in message
        assert time.monotonic() - started < BOUND_S


def serve_failure(env: dict[str, str], cwd: Path) -> str:
    """``portfolio-stream serve`` that must stop at once: its one line on stderr."""
    result = subprocess.run(
        [CLI, "serve"], env=env, cwd=cwd, text=True, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("cannot start: DATABASE_URL=postgresql://"), line
    return line


async def test_serve_refuses_to_start_on_an_unreachable_or_refusing_server(
    postgres: TestDatabase, tmp_path: Path
) -> None:
    closed = service_env(tmp_path, DATABASE_URL="postgresql://app:s3cret@127.0.0.1:1/portfolio")
    line = await asyncio.to_thread(serve_failure, closed, tmp_path)
    assert "app:***@" in line and "s3cret" not in line and "refused" in line.lower()
    # An authentication failure: trust auth here, so a role the server does not know.
    nobody = urlsplit(postgres.url)._replace(netloc="nobody_at_all@127.0.0.1:5432").geturl()
    line = await asyncio.to_thread(
        serve_failure, service_env(tmp_path, DATABASE_URL=nobody), tmp_path
    )
    assert 'role "nobody_at_all" does not exist' in line


async def test_serve_does_not_hang_on_a_server_that_never_answers(
    proxy: TcpProxy, postgres: TestDatabase, tmp_path: Path
) -> None:
    proxy.pause()
    env = service_env(
        tmp_path, DATABASE_URL=through(proxy, postgres.url), DATABASE_TIMEOUT_S=str(TIMEOUT_S)
    )
    started = time.monotonic()
    line = await asyncio.to_thread(serve_failure, env, tmp_path)
    assert time.monotonic() - started < 30  # connect_timeout is 2 s at least (libpq's floor)
    assert "timeout" in line.lower() or "in time" in line


async def test_connections_the_server_closed_cost_no_request(
    app_client: ClientFactory, postgres: TestDatabase
) -> None:
    """A server restart or failover closes every pooled connection: the first request after it
    finds its connection dead, has the pool checked and reads again, so it still succeeds."""
    node = await app_client()
    token = await node.app[STORE_KEY].create_session("user-1", 3600)
    assert (await node.get("/api/auth/me", headers=cookie(token))).status == 200
    ended = postgres.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    assert len(ended) >= 2  # the pool's connections and the listening one
    assert (await node.get("/api/auth/me", headers=cookie(token))).status == 200
    assert (await login(node))[0] == 200
