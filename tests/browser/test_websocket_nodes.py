"""/admin/websocket's Nodes section in a real Chromium, with two nodes on a real redis-server.

The nodes are two instances of the service in this process (one SQLite file stands for the
shared user store, as in tests/cluster/test_serving.py), each on its own loopback port.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from tests.browser.conftest import (
    BROWSER_TEST,
    LiveServer,
    PageFactory,
    ServerFactory,
    log_in,
    screenshot,
)
from tests.cluster.redis_server import RedisServer

pytestmark = BROWSER_TEST

# The page refreshes every 3 s; a node's report reaches the others within a refresh or two.
REFRESHED_WITHIN_MS = 8000


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, which it may stop and start again on the same port."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def start_node(live_server: ServerFactory, redis: RedisServer, node_id: str) -> LiveServer:
    values: dict[str, Any] = {
        "redis_url": redis.url,
        "node_id": node_id,
        "redis_timeout_s": 1.0,
        "redis_backoff_initial_s": 0.05,
        "redis_backoff_max_s": 0.2,
        "redis_probe_interval_s": 0.2,
        "cluster_entry_ttl_s": 3.0,
        "heartbeat_interval_ms": 2000,
        "heartbeat_timeout_ms": 60_000,
        "cluster_node_report_interval_s": 0.2,
    }
    return await live_server(**values)


async def test_the_stats_page_lists_every_node_and_marks_the_one_answering(
    redis_server: RedisServer, live_server: ServerFactory, new_page: PageFactory
) -> None:
    """Two nodes: both rows, this node marked, the other's connection counted, Redis connected."""
    a = await start_node(live_server, redis_server, "node-a")
    b = await start_node(live_server, redis_server, "node-b")
    await a.user("admin", admin=True)
    await a.user("alice")

    trader, _ = await new_page(b)
    await log_in(trader, "alice")
    await trader.goto("/admin/positions")
    await expect(trader.locator("#connection")).to_have_attribute("data-state", "live")

    page, console = await new_page(a)
    await log_in(page, "admin")
    await page.goto("/admin/websocket")
    panel = page.locator("#nodes-panel")
    await expect(panel).to_be_visible()
    rows = page.locator("#nodes tbody tr")
    await expect(rows).to_have_count(2, timeout=REFRESHED_WITHIN_MS)
    await expect(rows.nth(0)).to_have_attribute("data-node", "node-a")
    await expect(rows.nth(1)).to_have_attribute("data-node", "node-b")
    here = page.locator('#nodes tr[data-node="node-a"]')
    await expect(here).to_have_attribute("data-answering", "true")
    await expect(here.locator(".this-node")).to_have_text("this node")
    other = page.locator('#nodes tr[data-node="node-b"]')
    await expect(other).not_to_have_attribute("data-answering", "true")
    await expect(other.locator(".this-node")).to_have_count(0)
    await expect(other.locator('td[data-field="connections"]')).to_have_text(
        "1", timeout=REFRESHED_WITHIN_MS
    )
    await expect(other.locator('td[data-field="users"]')).to_have_text("1")
    await expect(here.locator('td[data-field="connections"]')).to_have_text("0")
    await expect(here.locator('td[data-field="lastSeen"]')).to_have_text("now")
    await expect(other.locator('td[data-field="redisRtt"]')).to_have_text(
        re.compile(r"^[\d.]+ ms$"), timeout=REFRESHED_WITHIN_MS
    )
    for row in (here, other):
        await expect(row.locator('td[data-field="state"] .badge')).to_have_text("ok")
    await expect(page.locator("#cluster-redis")).to_have_attribute("data-status", "connected")
    await expect(page.locator("#cluster-warning")).to_be_hidden()
    await expect(page.locator("#node")).to_contain_text("node node-a")
    # The runbook's totals are the cluster's: the socket on node-b counts here too.
    await expect(page.locator("#active")).to_have_text("1")
    await screenshot(page, "admin-websocket-nodes")
    assert console.errors == [], console.errors


async def test_the_stats_page_warns_while_redis_is_unavailable(
    redis_server: RedisServer, live_server: ServerFactory, new_page: PageFactory
) -> None:
    """Redis stopped: a visible warning and an 'unavailable' status; back: the warning goes."""
    a = await start_node(live_server, redis_server, "node-a")
    await a.user("admin", admin=True)
    page, console = await new_page(a)
    await log_in(page, "admin")
    await page.goto("/admin/websocket")
    status = page.locator("#cluster-redis")
    warning = page.locator("#cluster-warning")
    await expect(status).to_have_attribute("data-status", "connected")
    await expect(warning).to_be_hidden()

    redis_server.stop()
    await expect(status).to_have_attribute(
        "data-status", "unavailable", timeout=REFRESHED_WITHIN_MS
    )
    await expect(warning).to_be_visible()
    await expect(warning).to_contain_text("Redis is unavailable")
    await expect(page.locator('#nodes tr[data-node="node-a"] td[data-field="state"]')).to_have_text(
        "degraded"
    )
    await screenshot(page, "admin-websocket-redis-unavailable")

    redis_server.start()
    await expect(status).to_have_attribute("data-status", "connected", timeout=15_000)
    await expect(warning).to_be_hidden()
    assert console.errors == [], console.errors
