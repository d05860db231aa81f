"""/admin/websocket in a real Chromium: admins only, refreshed stats, plots, per-user table."""

from __future__ import annotations

import re

from playwright.async_api import expect

from tests.browser.conftest import (
    BROWSER_TEST,
    PageFactory,
    ServerFactory,
    log_in,
    position,
    screenshot,
)

pytestmark = BROWSER_TEST


async def test_non_admin_gets_no_stats_page(
    live_server: ServerFactory, new_page: PageFactory
) -> None:
    """A trader asking for the stats page gets a 403 page; a visitor is sent to log in."""
    server = await live_server()
    await server.user("bob")
    page, _ = await new_page(server)
    await page.goto("/admin/websocket")
    await page.wait_for_url("**/login?next=/admin/websocket")

    await log_in(page, "bob")
    response = await page.goto("/admin/websocket")
    assert response is not None and response.status == 403
    await expect(page.locator("h1")).to_have_text("403 · Admins only")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    stats = await page.request.get("/api/admin/websocket-stats")
    assert stats.status == 403
    await screenshot(page, "websocket-forbidden")


async def test_admin_sees_refreshed_stats_plots_and_connections(
    live_server: ServerFactory, new_page: PageFactory
) -> None:
    """Stats refresh every few seconds; plots gain points; a trader's tabs show in the table."""
    server = await live_server(batch_window_ms=100)
    await server.user("admin", admin=True)
    alice = await server.user("alice")

    trader, _ = await new_page(server)
    await log_in(trader, "alice")
    await trader.goto("/admin/positions")
    await expect(trader.locator("#connection")).to_have_attribute("data-state", "live")
    for pnl in ("1.00", "2.00", "3.00"):
        server.publish("position:updated", position(alice.id, "AAPL", pnl=pnl))

    page, console = await new_page(server)
    await log_in(page, "admin")
    response = await page.goto("/admin/websocket")
    assert response is not None and response.status == 200
    await expect(page.locator("#status")).to_have_attribute("data-status", "healthy")
    await expect(page.locator("#active")).to_have_text("1")
    await expect(page.locator(f'#by-user tr[data-user="{alice.id}"] td.num')).to_have_text("1")
    await expect(page.locator("#capacity")).to_have_text("of 100 (1% of capacity)")
    await expect(page.locator("#checks li")).to_have_count(4)
    # Two refreshes give the connections plot two points and the rate plot its first.
    await expect(page.locator("#chart-connections")).to_have_attribute(
        "data-points", "2", timeout=8000
    )
    await expect(page.locator("#chart-messages polyline")).to_have_count(1)
    await expect(page.locator("#chart-connections polyline")).to_have_count(1)
    await expect(page.locator("#broker-panel")).to_be_hidden()  # no bridge in this server
    # A single node (no REDIS_URL): no Nodes section, no cluster warning, the node named.
    await expect(page.locator("#nodes-panel")).to_be_hidden()
    await expect(page.locator("#cluster-warning")).to_be_hidden()
    await expect(page.locator("#node")).to_have_text(re.compile(r"^ · node [^\s\[]+ · up "))
    await screenshot(page, "admin-websocket")
    assert console.errors == [], console.errors
