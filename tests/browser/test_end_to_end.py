"""The whole path in a real browser: simulated broker -> alpaca-py clients -> bridge -> bus ->
batcher -> /ws/portfolio -> portfolio-stream.js -> the positions table."""

from __future__ import annotations

import asyncio
import time

from playwright.async_api import expect

from app.keys import BROKER_KEY
from tests.browser.conftest import (
    BROWSER_TEST,
    PageFactory,
    ServerFactory,
    screenshot,
)

pytestmark = BROWSER_TEST

BATCH_WINDOW_MS = 1000  # the production default
# Order fill in the simulator, the trade_updates hop, a DOM update, on a shared CI machine.
MARGIN_S = 1.5


async def test_test_trade_through_the_page_reaches_the_table_within_the_batch_window(
    live_server: ServerFactory, new_page: PageFactory
) -> None:
    """Demo admin logs in, goes live, places test trades from the page and sees the rows move."""
    server = await live_server(
        with_bridge=True,
        sim_demo_users=True,
        sim_order_interval_s=0,  # no random demo orders: every change here is ours
        sim_tick_interval_ms=500,
        batch_window_ms=BATCH_WINDOW_MS,
    )
    await asyncio.wait_for(server.app[BROKER_KEY].wait_ready(), 15)
    page, console = await new_page(server)

    await page.goto("/login")
    await page.fill("#username", "admin")
    await page.fill("#password", "admin-demo")
    await page.click("#login-submit")
    await page.wait_for_url(server.url("/admin/positions"))
    indicator = page.locator("#connection")
    await expect(indicator).to_have_attribute("data-state", "live")
    await expect(page.locator("#equity")).not_to_have_text("—")

    form = page.locator("#test-trade")
    qty_cell = page.locator('#positions tr[data-symbol="NVDA"] [data-col="qty"]')
    for symbol, side, qty, expected_qty in (
        ("NVDA", "buy", "40", "40"),
        ("AAPL", "buy", "10", None),
        ("MSFT", "buy", "5", None),
        ("NVDA", "sell", "15", "25"),
    ):
        await form.locator('input[name="symbol"]').fill(symbol)
        await form.locator('select[name="side"]').select_option(side)
        await form.locator('input[name="qty"]').fill(qty)
        started = time.monotonic()
        async with page.expect_response("**/api/admin/test-trade") as placed:
            await form.locator("button").click()
        assert (await placed.value).status == 201, await (await placed.value).text()
        await expect(page.locator("#test-trade-result")).to_contain_text("Order placed")
        if expected_qty is not None:
            await expect(qty_cell).to_have_text(expected_qty)
            elapsed = time.monotonic() - started
            assert elapsed < BATCH_WINDOW_MS / 1000 + MARGIN_S, elapsed
        await console.wait_for(rf"^\[Realtime\] Position updated: {symbol} [+-]\$\d+\.\d\d$")

    await expect(page.locator("#positions tbody tr")).to_have_count(3)
    await expect(page.locator('#orders tbody tr[data-status="filled"]')).to_have_count(4)
    await console.wait_for(r"^\[Realtime\] Account updated: equity = \d+\.\d\d$")
    # Ticks move prices; P&L cells follow without any new order.
    pnl = page.locator('#positions tr[data-symbol="AAPL"] [data-col="pnl"]')
    first = await pnl.text_content()
    await expect(pnl).not_to_have_text(first or "", timeout=10_000)

    await screenshot(page, "admin-positions-live")

    stats, _ = await new_page(server)
    await stats.context.add_cookies(await page.context.cookies())
    await stats.goto("/admin/websocket")
    await expect(stats.locator("#broker-panel")).to_be_visible()
    for user in ("admin", "alice", "bob"):
        account = stats.locator(f'#broker tr[data-account="{user}"] .badge')
        await expect(account).to_have_attribute("data-status", "connected")
    await expect(stats.locator("#active")).to_have_text("1")
    await screenshot(stats, "admin-websocket-live")
