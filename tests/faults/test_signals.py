"""Signals under load: clients connected, fills and price ticks flowing.

SIGTERM: every client gets 1001 Going Away and the process exits 0 within SHUTDOWN_TIMEOUT_S.
SIGKILL: nothing is flushed, but the store is intact and every session still valid after a
restart, and the clients reconnect to a server that serves them again.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.faults.clients import Crowd
from tests.faults.harness import (
    PASSWORD,
    Live,
    OrderFlow,
    Server,
    http_status,
    live_service,
    wait_until,
)

pytestmark = pytest.mark.slow

TRADERS = [f"trader{i}" for i in range(8)]
PER_TRADER = 25
SHUTDOWN_TIMEOUT_S = 5


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with live_service(
        tmp_path, TRADERS, SHUTDOWN_TIMEOUT_S=SHUTDOWN_TIMEOUT_S, BATCH_WINDOW_MS=200
    ) as running:
        for trader in TRADERS:
            running.broker.submit(trader, "MSFT", "buy", 5)
        yield running


def crowd_of(live: Live) -> Crowd:
    cookies = [(t, live.sessions[t].cookie) for t in TRADERS for _ in range(PER_TRADER)]
    return Crowd(live.server.base_url, cookies)


def test_sigterm_under_load_closes_every_client_1001_and_exits_0_in_time(live: Live) -> None:
    with crowd_of(live) as crowd, OrderFlow(live.broker, TRADERS) as flow:
        wait_until(lambda: all(m.batches >= 2 for m in crowd.members), 30, "batches for all")
        live.server.signal(signal.SIGTERM)
        code, took = live.server.wait_exit(timeout=SHUTDOWN_TIMEOUT_S + 5)
        crowd.wait_ended(timeout=5)
        codes = crowd.close_codes()
    assert flow.placed > 0
    assert code == 0 and took <= SHUTDOWN_TIMEOUT_S, (code, took)
    assert codes == {1001: len(TRADERS) * PER_TRADER}, codes
    live.server.assert_no_traceback()


def test_sigkill_under_load_leaves_the_store_intact_and_sessions_valid(live: Live) -> None:
    login = asyncio.run(_login(live.server.base_url, TRADERS[0]))
    with crowd_of(live) as crowd, OrderFlow(live.broker, TRADERS):
        wait_until(lambda: all(m.batches >= 1 for m in crowd.members), 30, "batches for all")
        live.server.signal(signal.SIGKILL)
        live.server.wait_exit(timeout=10)
        crowd.wait_ended(timeout=10)
        codes = crowd.close_codes()
    assert set(codes) <= {None, 1006}, codes  # dropped, no close frame: nothing ran
    database = live.env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    restarted = Server(live.env, live.server.log_path.with_name("restarted.log"))
    try:
        restarted.wait_ready()
        base = restarted.base_url
        for session in [*live.sessions.values(), login]:
            assert http_status(f"{base}/api/auth/me", headers=session.headers) == 200
        with Crowd(base, [(t, live.sessions[t].cookie) for t in TRADERS]) as again:
            wait_until(lambda: all(m.messages >= 2 for m in again.members), 30, "reconnected")
        restarted.assert_no_traceback()
    finally:
        restarted.kill()


class _Login:
    def __init__(self, token: str) -> None:
        self.headers = {"Cookie": f"session={token}"}


async def _login(base: str, username: str) -> _Login:
    """A session made through the login route (not the store), to survive the kill."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/api/auth/login",
            json={"username": username, "password": PASSWORD},
            headers={"Origin": base},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return _Login(response.cookies["session"].value)
