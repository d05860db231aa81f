"""What a browser does with a node: log in, open `/ws/portfolio`, hold the state it is shown.

``Tab`` is one WebSocket as the reference client uses it (docs/websocket-api.md): it subscribes
to every channel, takes each ``snapshot`` as the whole state and applies each ``batch`` on top,
and records every close code and every ``seq`` gap. ``LiveTab`` is a tab that reconnects after
every close (to the next node, as a load balancer would send it), for restarts under load.
``Admin`` is the operator's session: stats and test trades on a given node.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import aiohttp

ALL_CHANNELS = ["positions", "orders", "account"]
WS_PATH = "/ws/portfolio"
TIMEOUT_S = 10.0
LIMIT_CODE = 1013


def http_session() -> aiohttp.ClientSession:
    """One client for many nodes: cookies are sent by hand, never mixed between hosts."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


def browser_headers(node_url: str, token: str | None = None) -> dict[str, str]:
    headers = {"Origin": node_url}
    if token is not None:
        headers["Cookie"] = f"session={token}"
    return headers


async def login(http: aiohttp.ClientSession, node_url: str, username: str, password: str) -> str:
    """POST /api/auth/login as a browser on that node; returns the session cookie's value."""
    async with http.post(
        f"{node_url}/api/auth/login",
        json={"username": username, "password": password},
        headers=browser_headers(node_url),
    ) as response:
        assert response.status == 200, await response.text()
        return response.cookies["session"].value


async def me_status(http: aiohttp.ClientSession, node_url: str, token: str) -> int:
    async with http.get(
        f"{node_url}/api/auth/me", headers=browser_headers(node_url, token)
    ) as response:
        return response.status


async def logout(http: aiohttp.ClientSession, node_url: str, token: str) -> None:
    async with http.post(
        f"{node_url}/api/auth/logout", json={}, headers=browser_headers(node_url, token)
    ) as response:
        assert response.status == 200, await response.text()


def qty_map(positions: Sequence[dict[str, Any]] | dict[str, dict[str, Any]]) -> dict[str, Decimal]:
    """symbol -> quantity, without flat positions, comparable across formats ("3" == "3.0")."""
    rows = positions.values() if isinstance(positions, dict) else positions
    found = {row["symbol"]: Decimal(str(row["qty"])) for row in rows}
    return {symbol: qty for symbol, qty in found.items() if qty != 0}


def broker_qty(positions: dict[str, str]) -> dict[str, Decimal]:
    return {symbol: Decimal(qty) for symbol, qty in positions.items() if Decimal(qty) != 0}


class Refused(Exception):
    """The node took the upgrade, then closed at once (the limits: 1013)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


class Tab:
    """One open `/ws/portfolio` with the state it has been shown; see the module docstring."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, node_url: str) -> None:
        self.ws = ws
        self.node_url = node_url
        self.connected: dict[str, Any] = {}
        self.positions: dict[str, dict[str, Any]] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        self.account: dict[str, Any] | None = None
        self.snapshots: list[dict[str, Any]] = []
        self.batches = 0
        self.seq = 0
        self.seq_gaps: list[tuple[int, int]] = []
        self.close_code: int | None = None
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        http: aiohttp.ClientSession,
        node_url: str,
        token: str,
        *,
        subscribe: bool = True,
    ) -> Tab:
        """Connect and take ``connected`` (then subscribe and take the first snapshot).
        Raises ``Refused`` when the node closes instead, ``aiohttp.WSServerHandshakeError``
        when it answers the upgrade with an HTTP error (401, 403, 503)."""
        ws = await http.ws_connect(
            f"{node_url}{WS_PATH}",
            headers=browser_headers(node_url, token),
            heartbeat=None,
            autoping=True,
            timeout=aiohttp.ClientWSTimeout(ws_close=2),
        )
        first = await ws.receive(timeout=TIMEOUT_S)
        if first.type != aiohttp.WSMsgType.TEXT:
            await ws.close()
            raise Refused(ws.close_code, str(first.extra or ""))
        tab = cls(ws, node_url)
        tab.connected = first.json()
        assert tab.connected["type"] == "connected", tab.connected
        tab._reader = asyncio.create_task(tab._read(), name=f"tab-{node_url}")
        if subscribe:
            await tab.send({"type": "subscribe", "channels": ALL_CHANNELS})
            await tab.wait(lambda t: len(t.snapshots) >= 1, "the first snapshot")
        return tab

    @property
    def is_open(self) -> bool:
        return self.close_code is None and not self.ws.closed

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_json(message)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    self._apply(message.json())
                    self._changed.set()
        finally:
            self.close_code = self.ws.close_code if self.ws.close_code is not None else 1006
            self._changed.set()

    def _apply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind not in ("snapshot", "batch"):
            return
        seq = int(message["seq"])
        if seq != self.seq + 1:
            self.seq_gaps.append((self.seq, seq))
        self.seq = seq
        if kind == "snapshot":
            self.snapshots.append(message)
            if "positions" in message:
                self.positions = {row["symbol"]: row for row in message["positions"]}
            if "orders" in message:
                self.orders = {row["orderId"]: row for row in message["orders"]}
            if "account" in message:
                self.account = message["account"]
            return
        self.batches += 1
        for row in message.get("positions", []):
            self.positions[row["symbol"]] = row
        for symbol in message.get("closedPositions", []):
            self.positions.pop(symbol, None)
        for row in message.get("orders", []):
            self.orders[row["orderId"]] = row
        if message.get("account") is not None:
            self.account = message["account"]

    def qty(self) -> dict[str, Decimal]:
        return qty_map(self.positions)

    async def wait(
        self, condition: Callable[[Tab], bool], what: str, timeout_s: float = TIMEOUT_S
    ) -> None:
        """Until ``condition(self)`` holds after some message; fails if the socket closes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not condition(self):
            if self.close_code is not None:
                raise AssertionError(f"{self.node_url}: closed {self.close_code} before {what}")
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{self.node_url}: timed out waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def resync(self) -> dict[str, Any]:
        """Ask for a fresh snapshot of every channel and return it."""
        count = len(self.snapshots)
        await self.send({"type": "resync"})
        await self.wait(lambda t: len(t.snapshots) > count, "the resync snapshot")
        return self.snapshots[-1]

    async def until_closed(self) -> int:
        """However long it takes: the close code once the socket has closed."""
        if self._reader is not None:
            await asyncio.shield(self._reader)
        return self.close_code if self.close_code is not None else 1006

    async def wait_closed(self, timeout_s: float = TIMEOUT_S) -> int:
        await self.wait(lambda t: t.close_code is not None, "the close", timeout_s)
        assert self.close_code is not None
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def refused(http: aiohttp.ClientSession, node_url: str, token: str) -> Refused:
    """Open a tab that must be refused after the upgrade; returns how it was closed."""
    try:
        tab = await Tab.open(http, node_url, token, subscribe=False)
    except Refused as refusal:
        return refusal
    await tab.close()
    raise AssertionError(f"{node_url} admitted a connection it should have refused")


async def admitted(http: aiohttp.ClientSession, node_url: str, token: str) -> Tab | None:
    """A tab if the node admits one now, None if it refuses it for the limits (1013)."""
    try:
        return await Tab.open(http, node_url, token, subscribe=False)
    except Refused as refusal:
        if refusal.code == LIMIT_CODE:
            return None
        raise


class LiveTab:
    """A tab that reconnects after every close, as the reference client does (with jitter),
    trying the nodes in turn from its home one; it stops only when told, or on 4001."""

    def __init__(
        self, http: aiohttp.ClientSession, node_urls: Sequence[str], home: int, token: str
    ) -> None:
        self.http = http
        self.node_urls = list(node_urls)
        self.next_node = home
        self.token = token
        self.tab: Tab | None = None
        self.connects = 0
        self.closes: list[int] = []
        self.refusals: list[str] = []
        self._stopping = False
        self._connected = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"live-tab-{home}")

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            url = self.node_urls[self.next_node % len(self.node_urls)]
            try:
                tab = await Tab.open(self.http, url, self.token)
            except (aiohttp.ClientError, Refused, TimeoutError, AssertionError) as error:
                self.refusals.append(f"{url}: {error!r}")
                self.next_node += 1
                attempt += 1
                await asyncio.sleep(random.uniform(0, min(0.5, 0.05 * 2**attempt)))
                continue
            attempt = 0
            self.tab = tab
            self.connects += 1
            self._connected.set()
            code = await tab.until_closed()
            self.closes.append(code)
            if code == 4001:
                return
            self.next_node += 1

    async def wait_connected(self, timeout_s: float = TIMEOUT_S) -> Tab:
        await asyncio.wait_for(self._connected.wait(), timeout_s)
        assert self.tab is not None
        return self.tab

    async def wait_converged(
        self, condition: Callable[[Tab], bool], what: str, timeout_s: float = TIMEOUT_S
    ) -> Tab:
        """Until the currently open tab shows ``condition`` (whatever reconnects it took)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            tab = self.tab
            if tab is not None and tab.is_open and condition(tab):
                return tab
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; refusals: {self.refusals}")
            if tab is not None and tab.is_open:
                with contextlib.suppress(AssertionError):
                    await tab.wait(condition, what, timeout_s=min(0.5, deadline - loop.time()))
            else:
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._stopping = True
        if self.tab is not None:
            await self.tab.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Admin:
    """An admin's session on the cluster (the one cookie works on every node)."""

    def __init__(self, http: aiohttp.ClientSession, token: str) -> None:
        self.http = http
        self.token = token

    async def stats(self, node_url: str) -> dict[str, Any]:
        async with self.http.get(
            f"{node_url}/api/admin/websocket-stats", headers=browser_headers(node_url, self.token)
        ) as response:
            assert response.status == 200, await response.text()
            body: dict[str, Any] = await response.json()
            return body

    async def trade(
        self, node_url: str, username: str, symbol: str, side: str, qty: int | str
    ) -> dict[str, Any]:
        """POST /api/admin/test-trade on that node; the placed order."""
        async with self.http.post(
            f"{node_url}/api/admin/test-trade",
            json={"username": username, "symbol": symbol, "side": side, "qty": str(qty)},
            headers=browser_headers(node_url, self.token),
        ) as response:
            assert response.status == 201, f"{node_url}: {response.status} {await response.text()}"
            order: dict[str, Any] = (await response.json())["order"]
            return order


async def eventually(
    condition: Callable[[], Any], what: str, timeout_s: float = TIMEOUT_S, interval: float = 0.05
) -> Any:
    """Poll ``condition`` (sync or async) until it returns a truthy value, which is returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: Any = None
    while True:
        last = condition()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval)
