"""The browser client when things go wrong: restarts, unreachable or disabled WebSocket, gaps.

Jitter is made deterministic by replacing ``Math.random`` before the page loads, so the logged
delays can be compared with the backoff schedule exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from playwright.async_api import expect

from tests.browser.conftest import (
    BROWSER_TEST,
    ConsoleLog,
    LiveServer,
    PageFactory,
    ServerFactory,
    log_in,
    position,
    screenshot,
)

pytestmark = BROWSER_TEST

RECONNECTING = r"^\[PortfolioStream\] Reconnecting in (\d+)ms \(attempt (\d+)/10\)$"
FALLBACK_WITHIN_S = 5.0
POLL_INTERVAL_S = 5.0

RECORD_STATES = """() => {
  const indicator = document.getElementById("connection");
  window.__states = [indicator.dataset.state];
  new MutationObserver(() => window.__states.push(indicator.dataset.state))
    .observe(indicator, { attributes: true, attributeFilter: ["data-state"] });
}"""


async def open_positions(
    new_page: PageFactory, server: LiveServer, *, random: float | None = None
) -> tuple[Any, ConsoleLog]:
    """A logged-in admin page, not yet navigated (so routes and init scripts apply first)."""
    page, console = await new_page(server)
    if random is not None:
        await page.add_init_script(f"Math.random = () => {random};")
    await log_in(page, "admin")
    return page, console


async def test_reconnects_with_growing_delays_and_recovers_after_restart(
    live_server: ServerFactory, new_page: PageFactory
) -> None:
    """Server stops: 1001, backoff 750/1500/3000 ms, red when REST fails too; restart: live."""
    server = await live_server(batch_window_ms=100)
    admin = await server.user("admin", admin=True)
    page, console = await open_positions(new_page, server, random=0.75)
    await page.goto("/admin/positions")
    indicator = page.locator("#connection")
    await expect(indicator).to_have_attribute("data-state", "live")
    await page.evaluate(RECORD_STATES)

    await server.stop()
    await console.wait_for(
        r"^\[PortfolioStream\] Connection closed: code=1001, reason=Server shutting down$"
    )
    found = await console.wait_for(RECONNECTING, count=3)
    assert [int(m[2]) for m in found[:3]] == [1, 2, 3]
    # Full jitter with random() = 0.75: three quarters of 1000, 2000, 4000 ms.
    assert [int(m[1]) for m in found[:3]] == [750, 1500, 3000]
    await console.wait_for(r"^\[PortfolioStream\] WebSocket connection error$")
    # The REST fallback cannot reach the server either: offline (red), within 5 s.
    await expect(indicator).to_have_attribute(
        "data-state", "offline", timeout=FALLBACK_WITHIN_S * 1000
    )

    await server.start()
    await expect(indicator).to_have_attribute("data-state", "live", timeout=10_000)
    await console.wait_for(r"^\[PortfolioStream\] Connected successfully$", count=2)
    states = await page.evaluate("() => window.__states")
    assert states[0] == "live" and states[-1] == "live"
    assert "reconnecting" in states and "offline" in states
    server.publish("position:updated", position(admin.id, "AAPL", pnl="550.00"))
    await expect(
        page.locator('#positions tr[data-symbol="AAPL"] [data-col="pnl"]')
    ).to_contain_text("+$550.00")


async def test_unreachable_websocket_falls_back_to_polling_and_switches_back(
    live_server: ServerFactory, new_page: PageFactory
) -> None:
    """WebSocket refused while REST works: grey polling within 5 s; socket back: live again."""
    server = await live_server(batch_window_ms=100)
    admin = await server.user("admin", admin=True)
    page, console = await open_positions(new_page, server, random=0.5)
    blocked = True

    async def route(ws: Any) -> None:
        if blocked:
            await ws.close()
        else:
            ws.connect_to_server()

    await page.route_web_socket("**/ws/portfolio", route)
    server.publish("position:updated", position(admin.id, "AAPL", pnl="12.00"))
    started = time.monotonic()
    await page.goto("/admin/positions")
    indicator = page.locator("#connection")
    await expect(indicator).to_have_attribute(
        "data-state", "polling", timeout=FALLBACK_WITHIN_S * 1000
    )
    assert time.monotonic() - started < FALLBACK_WITHIN_S
    await console.wait_for(
        r"^\[PortfolioStream\] Falling back to polling /api/portfolio "
        r"every 5000ms$"
    )
    await expect(page.locator('#positions tr[data-symbol="AAPL"]')).to_be_visible()
    await expect(page.locator("#updated-at")).to_contain_text("(polling)")

    blocked = False
    await expect(indicator).to_have_attribute("data-state", "live", timeout=10_000)
    await console.wait_for(r"^\[PortfolioStream\] Live again; polling stopped$")
    server.publish("position:updated", position(admin.id, "AAPL", pnl="13.00"))
    await expect(
        page.locator('#positions tr[data-symbol="AAPL"] [data-col="pnl"]')
    ).to_contain_text("+$13.00", timeout=2000)


async def test_close_1013_backs_off_longer(
    live_server: ServerFactory, new_page: PageFactory
) -> None:
    """A 1013 close (connection limit) is retried after half to all of five times the ceiling."""
    server = await live_server()
    await server.user("admin", admin=True)
    page, console = await open_positions(new_page, server, random=0.0)

    async def at_limit(ws: Any) -> None:
        await ws.close(code=1013, reason="Maximum connections exceeded")

    await page.route_web_socket("**/ws/portfolio", at_limit)
    await page.goto("/admin/positions")
    found = await console.wait_for(RECONNECTING)
    # Ordinary failures with random() = 0 would retry at once; after 1013 the floor is 2500 ms.
    assert (int(found[0][1]), int(found[0][2])) == (2500, 1)


async def test_logging_out_elsewhere_ends_the_stream_and_sends_the_page_to_sign_in(
    live_server: ServerFactory, new_page: PageFactory
) -> None:
    """The server closes the socket of a logged-out session with 4001: the client does not
    reconnect (it would only be refused) and the page goes to the login form."""
    server = await live_server()
    await server.user("admin", admin=True)
    page, console = await open_positions(new_page, server)
    await page.goto("/admin/positions")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    # Another tab of the same browser logs out: same cookie, same origin, JSON.
    await page.evaluate(
        """() => fetch("/api/auth/logout", {method: "POST", credentials: "same-origin",
                 headers: {"Content-Type": "application/json"}, body: "{}"})"""
    )
    await console.wait_for(r"^\[PortfolioStream\] Session ended; not reconnecting$")
    await page.wait_for_url("**/login?next=*", timeout=5000)
    assert not any(line.startswith("[PortfolioStream] Reconnecting") for line in console.lines)
    assert "code=4001, reason=Session ended: logged out" in "\n".join(console.lines)


async def test_sequence_gap_asks_for_resync(
    live_server: ServerFactory, new_page: PageFactory
) -> None:
    """A batch lost in transit is noticed by its seq; the client asks for and applies a snapshot."""
    server = await live_server(batch_window_ms=50)
    admin = await server.user("admin", admin=True)
    page, console = await open_positions(new_page, server)
    drop_batches = 0
    dropped = asyncio.Event()
    sent_by_client: list[dict[str, Any]] = []

    async def relay(ws: Any) -> None:
        upstream = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            nonlocal drop_batches
            if drop_batches and json.loads(message).get("type") == "batch":
                drop_batches -= 1
                dropped.set()
                return
            ws.send(message)

        def from_client(message: str | bytes) -> None:
            sent_by_client.append(json.loads(message))
            upstream.send(message)

        upstream.on_message(from_server)
        ws.on_message(from_client)

    await page.route_web_socket("**/ws/portfolio", relay)
    await page.goto("/admin/positions")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await console.wait_for(r"^\[PortfolioStream\] Subscribed to channels")

    drop_batches = 1
    server.publish("position:updated", position(admin.id, "AAPL", pnl="1.00"))
    await asyncio.wait_for(dropped.wait(), 5)
    server.publish("position:updated", position(admin.id, "MSFT", pnl="2.00"))
    await console.wait_for(
        r"^\[PortfolioStream\] Sequence gap: expected seq 2, got 3; requesting resync$"
    )
    # AAPL only ever travelled in the dropped batch: the resync snapshot brings it.
    await expect(page.locator('#positions tr[data-symbol="AAPL"]')).to_be_visible()
    await expect(page.locator('#positions tr[data-symbol="MSFT"]')).to_be_visible()
    assert {"type": "resync"} in sent_by_client


async def test_disabled_flag_polls_every_five_seconds(
    live_server: ServerFactory, new_page: PageFactory
) -> None:
    """ENABLE_REALTIME_PORTFOLIO=false: no socket attempts, grey polling, a fetch every 5 s."""
    server = await live_server(enable_realtime_portfolio=False)
    admin = await server.user("admin", admin=True)
    page, console = await open_positions(new_page, server)
    polls: list[float] = []
    page.on(
        "request",
        lambda request: (
            polls.append(time.monotonic()) if request.url.endswith("/api/portfolio") else None
        ),
    )

    await page.goto("/admin/positions")
    indicator = page.locator("#connection")
    await expect(indicator).to_have_attribute(
        "data-state", "polling", timeout=FALLBACK_WITHIN_S * 1000
    )
    await console.wait_for(r"^\[PortfolioStream\] Realtime updates are disabled on the server$")
    server.publish("position:updated", position(admin.id, "AAPL", pnl="550.00"))
    await expect(
        page.locator('#positions tr[data-symbol="AAPL"] [data-col="pnl"]')
    ).to_contain_text("+$550.00", timeout=(POLL_INTERVAL_S + 1.5) * 1000)
    assert len(polls) >= 2
    gap = polls[1] - polls[0]
    assert POLL_INTERVAL_S - 0.5 < gap < POLL_INTERVAL_S + 1.5, gap
    assert console.matching(r"Connecting to:") == []  # the flag says no: the socket is not tried
    await expect(indicator).to_have_attribute(
        "title", "Live stream unavailable; refreshing every 5 s"
    )
    await screenshot(page, "admin-positions-polling")


async def test_the_client_polls_at_the_servers_poll_interval(
    live_server: ServerFactory, new_page: PageFactory
) -> None:
    """POLL_INTERVAL_MS reaches the browser through /api/realtime/config: polls and the label."""
    server = await live_server(enable_realtime_portfolio=False, poll_interval_ms=1000)
    await server.user("admin", admin=True)
    page, _ = await open_positions(new_page, server)
    polls: list[float] = []
    page.on(
        "request",
        lambda request: (
            polls.append(time.monotonic()) if request.url.endswith("/api/portfolio") else None
        ),
    )
    await page.goto("/admin/positions")
    indicator = page.locator("#connection")
    await expect(indicator).to_have_attribute(
        "title", "Live stream unavailable; refreshing every 1 s", timeout=FALLBACK_WITHIN_S * 1000
    )
    for _ in range(2):  # two more polls, each within about a second
        async with page.expect_request(lambda r: r.url.endswith("/api/portfolio"), timeout=3000):
            pass
    assert len(polls) >= 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(polls)]
    assert all(0.7 < gap < 2.0 for gap in gaps), gaps
