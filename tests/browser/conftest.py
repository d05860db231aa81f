"""Browser tests: Debian's headless Chromium driven by Playwright against the real server.

The service runs in-process on a real loopback port (``LiveServer``), so a test can publish bus
events directly, stop the server and start it again on the same port. Screenshots go to
``tests/artifacts/`` (gitignored) for a person to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import TimeoutError as PlaywrightTimeoutError
from playwright.async_api import async_playwright

from app.factory import create_app
from app.keys import BUS_KEY, STORE_KEY
from app.store import User
from tests.conftest import make_settings

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
PASSWORD = "correct horse"
# The marks every browser test module applies: selectable with -m browser, and on the loop
# that the shared browser lives on.
BROWSER_TEST = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """The real app on a fixed loopback port; can be stopped and started again on that port.

    Every start builds a fresh app from the same Settings, so the SQLite file (users and
    sessions) survives a restart the way it does in production.
    """

    def __init__(self, tmp_path: Path, *, with_bridge: bool = False, **overrides: Any) -> None:
        self.settings = make_settings(tmp_path, **overrides)
        self.with_bridge = with_bridge
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._app: web.Application | None = None

    @property
    def app(self) -> web.Application:
        assert self._app is not None, "server is not running"
        return self._app

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = create_app(self.settings, with_bridge=self.with_bridge)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._app, self._runner = app, runner

    async def stop(self) -> None:
        """Graceful stop, as on SIGTERM: sockets are closed with 1001."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def user(self, username: str, *, admin: bool = False) -> User:
        return await self.app[STORE_KEY].ensure_user(username, PASSWORD, is_admin=admin)

    def publish(self, event_type: str, payload: dict[str, Any]) -> None:
        self.app[BUS_KEY].publish(event_type, payload)


ServerFactory = Callable[..., Awaitable[LiveServer]]


@pytest_asyncio.fixture(loop_scope="session")
async def live_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start a LiveServer with Settings overrides; every one started is stopped afterwards."""
    servers: list[LiveServer] = []

    async def start(*, with_bridge: bool = False, **overrides: Any) -> LiveServer:
        server = LiveServer(tmp_path, with_bridge=with_bridge, **overrides)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, launched through Playwright (no downloaded browser).

    One browser serves the whole session (each test gets its own context, so its own cookies);
    that is why browser tests run on the session's event loop (see ``BROWSER_TEST``).
    """
    if not HAVE_CHROMIUM:
        pytest.skip(f"{CHROMIUM} is not installed (.ci/run installs Debian's chromium)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class ConsoleLog:
    """Every console message of a page, with a way to await one."""

    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def attach(self, page: Any) -> ConsoleLog:
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self._record(f"pageerror: {error}", error=True))
        return self

    def _on_console(self, message: Any) -> None:
        self._record(message.text, error=message.type == "error")

    def _record(self, text: str, *, error: bool = False) -> None:
        self.lines.append(text)
        if error:
            self.errors.append(text)
        self._changed.set()

    def matching(self, pattern: str) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        return [m for m in (regex.search(line) for line in self.lines) if m]

    async def wait_for(
        self, pattern: str, *, count: int = 1, within_s: float = 10
    ) -> list[re.Match[str]]:
        """Wait until ``count`` lines match ``pattern``; returns the matches."""

        async def until() -> list[re.Match[str]]:
            while True:
                found = self.matching(pattern)
                if len(found) >= count:
                    return found
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(until(), within_s)
        except TimeoutError:
            tail = "\n".join(self.lines[-30:])
            raise AssertionError(
                f"no {count} console line(s) matching {pattern!r}; last lines:\n{tail}"
            ) from None


PageFactory = Callable[..., Awaitable[tuple[Any, ConsoleLog]]]


@pytest_asyncio.fixture(loop_scope="session")
async def new_page(browser: Any) -> AsyncIterator[PageFactory]:
    """Open a page in a fresh browser context (own cookies), its console collected.

    ``await new_page(server, width=390, mobile=True)``; every context is closed after the test.
    """
    contexts: list[Any] = []

    async def open_page(
        server: LiveServer, *, width: int = 1280, height: int = 860, mobile: bool = False
    ) -> tuple[Any, ConsoleLog]:
        context = await browser.new_context(
            viewport={"width": width, "height": height},
            is_mobile=mobile,
            has_touch=mobile,
            base_url=server.url(),
        )
        contexts.append(context)
        context.set_default_timeout(10_000)
        page = await context.new_page()
        return page, ConsoleLog().attach(page)

    yield open_page
    for context in contexts:
        await context.close()


async def log_in(page: Any, username: str, password: str = PASSWORD) -> None:
    """Log in through the API with the page's own cookie jar (faster than the form)."""
    response = await page.request.post(
        "/api/auth/login", data={"username": username, "password": password}
    )
    assert response.status == 200, await response.text()


async def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot to tests/artifacts/ (to be looked at, not compared)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # Let the change flashes finish so the picture shows the page at rest; on a page whose
    # prices tick faster than a flash lasts, take it anyway after a moment.
    with contextlib.suppress(PlaywrightTimeoutError):
        await page.wait_for_function(
            "() => document.getAnimations().every(a => a.playState !== 'running'"
            " || a.effect?.getTiming().iterations === Infinity)",
            timeout=3000,
        )
    await page.screenshot(path=str(path), full_page=True)
    return path


def position(
    user_id: str,
    symbol: str,
    *,
    qty: str = "10",
    avg: str = "150.00",
    price: str = "205.00",
    pnl: str = "550.00",
    pct: str = "36.67",
) -> dict[str, str]:
    """A position:updated payload (money as exact decimal strings)."""
    market_value = f"{float(qty) * float(price):.2f}"
    return {
        "userId": user_id,
        "symbol": symbol,
        "qty": qty,
        "side": "long",
        "avgEntryPrice": avg,
        "currentPrice": price,
        "marketValue": market_value,
        "costBasis": f"{float(qty) * float(avg):.2f}",
        "unrealizedPnl": pnl,
        "unrealizedPnlPercent": pct,
        "updatedAt": "2026-01-04T10:30:00.000Z",
    }


def account(user_id: str, equity: str = "104550.00", cash: str = "98500.00") -> dict[str, str]:
    return {
        "userId": user_id,
        "equity": equity,
        "cash": cash,
        "buyingPower": "197000.00",
        "updatedAt": "2026-01-04T10:30:00.000Z",
    }


def order(
    user_id: str,
    order_id: str,
    symbol: str = "AAPL",
    *,
    status: str = "filled",
    side: str = "buy",
    qty: str = "10",
) -> dict[str, str]:
    filled = status == "filled"
    return {
        "userId": user_id,
        "orderId": order_id,
        "clientOrderId": f"c-{order_id}",
        "symbol": symbol,
        "side": side,
        "type": "market",
        "qty": qty,
        "filledQty": qty if filled else "0",
        "filledAvgPrice": "150.00" if filled else None,
        "status": status,
        "event": "fill" if filled else "new",
        "timestamp": "2026-01-04T10:30:00.000Z",
    }
