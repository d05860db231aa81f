"""A misbehaving broker for a server process: the simulated Alpaca behind a fault-injecting link.

The simulated broker (the protocol-faithful one the service embeds) runs on a background
thread's event loop in the test process, and the server under test reaches it with
``BROKER=alpaca`` through a small proxy that can, on command, hold the ``trade_updates`` frames
and release them in another order, deliver them twice, cut the stream, and make REST calls fail
(HTTP 500), hang, slow down or carry a record no parser expects. Market data goes straight to
the broker. Everything the test asks of it runs on that loop (``call``/``run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from tests.faults.targets import SimulatedBroker

T = TypeVar("T")
RestFaultKind = Literal["500", "hang", "slow", "poison"]
FILL_EVENTS = ("fill", "partial_fill")


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    api_key: str
    secret_key: str


@dataclass(slots=True)
class RestFault:
    """Applies to requests whose method and path start as given, ``times`` times (None: all)."""

    kind: RestFaultKind
    method: str = "GET"
    path: str = "/v2/"
    seconds: float = 0.0
    record: Any = None
    times: int | None = None
    hits: int = 0

    def matches(self, request: web.Request) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return request.method == self.method and request.path.startswith(self.path)


@dataclass(slots=True)
class StreamLink:
    """One proxied trade_updates connection: the server's side and the broker's."""

    downstream: web.WebSocketResponse
    upstream: aiohttp.ClientWebSocketResponse
    held: list[tuple[WSMsgType, str | bytes]] = field(default_factory=list)


class FaultyBroker:
    """See the module docstring. Use as a context manager; ``env()`` is for the server."""

    def __init__(
        self,
        usernames: list[str],
        *,
        tick_interval_s: float = 0.05,
        fill_delay_s: float = 0.02,
        partial_fills: bool = False,
    ) -> None:
        self.accounts = [
            Account(name, f"PK{index:04d}{name.upper()[:10]}", f"secret-{index}-{name}")
            for index, name in enumerate(usernames)
        ]
        self._tick_interval_s = tick_interval_s
        self._fill_delay_s = fill_delay_s
        self._partial_fills = partial_fills
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faulty-broker")
        self.broker: SimulatedBroker | None = None
        self.rest_faults: list[RestFault] = []
        self.holding = False
        self.duplicating = False
        self.links: list[StreamLink] = []
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.proxy_url = ""
        self.rest_requests = 0

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FaultyBroker:
        self._thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(Exception):
            self.run(self._stop(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    def call(self, action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async def invoke() -> T:
            return action(*args, **kwargs)

        return self.run(invoke())

    async def _start(self) -> None:
        broker = SimulatedBroker(
            tick_interval_s=self._tick_interval_s,
            order_interval_s=0,
            fill_delay_s=self._fill_delay_s,
            seed=7,
        )
        for account in self.accounts:
            broker.add_account(account.api_key, account.secret_key, label=account.username)
        broker.set_partial_fills(self._partial_fills)
        await broker.start()
        self.broker = broker
        self._http = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_get("/stream", self._proxy_stream)
        app.router.add_route("*", "/{tail:.*}", self._proxy_rest)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.proxy_url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def _stop(self) -> None:
        for link in list(self.links):
            await link.downstream.close()
            await link.upstream.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()
        if self.broker is not None:
            await self.broker.stop()

    def env(self, tmp_path: Path) -> dict[str, str]:
        """The server's broker settings: these accounts, through the proxy."""
        assert self.broker is not None
        accounts = tmp_path / "accounts.toml"
        accounts.write_text(
            "".join(
                f'[[accounts]]\nusername = "{a.username}"\napi_key = "{a.api_key}"\n'
                f'secret_key = "{a.secret_key}"\npaper = true\n\n'
                for a in self.accounts
            )
        )
        return {
            "BROKER": "alpaca",
            "ACCOUNTS_FILE": str(accounts),
            "ALPACA_API_URL": self.proxy_url,
            "ALPACA_STREAM_URL": self.proxy_url.replace("http", "ws") + "/stream",
            "ALPACA_DATA_STREAM_URL": self.broker.data_stream_url,
            "ALPACA_BACKOFF_INITIAL_S": "0.05",
            "ALPACA_BACKOFF_MAX_S": "0.5",
        }

    def account(self, username: str) -> Account:
        return next(a for a in self.accounts if a.username == username)

    # ---- orders and what the broker knows --------------------------------------------------

    def submit(self, username: str, symbol: str, side: str, qty: int) -> dict[str, Any]:
        broker = self.broker
        assert broker is not None
        key = self.account(username).api_key

        async def place() -> dict[str, Any]:
            return await broker.submit_order(key, symbol, side, Decimal(qty))

        return self.run(place())

    def fills(self, username: str) -> list[dict[str, Any]]:
        """Every execution the broker announced for the account (delivered or not)."""
        assert self.broker is not None
        history = self.call(self.broker.trade_updates, self.account(username).api_key)
        return [u["data"] for u in history if u["data"]["event"] in FILL_EVENTS]

    def positions(self, username: str) -> dict[str, str]:
        assert self.broker is not None
        rows = self.call(self.broker.positions, self.account(username).api_key)
        return {row["symbol"]: row["qty"] for row in rows}

    def orders(self, username: str) -> list[dict[str, Any]]:
        assert self.broker is not None
        return self.call(self.broker.orders, self.account(username).api_key)

    def wait_listening(self, username: str, timeout: float = 20) -> None:
        assert self.broker is not None
        self.run(
            asyncio.wait_for(
                self.broker.wait_trading_listener(self.account(username).api_key), timeout
            ),
            timeout + 1,
        )

    # ---- stream faults ---------------------------------------------------------------------

    def drop_streams(self) -> None:
        """Cut every trade_updates connection at the broker (TCP reset, no close frame)."""
        assert self.broker is not None
        self.call(self.broker.drop_trading_streams)

    def resend_last_fill(self, username: str) -> None:
        assert self.broker is not None
        self.call(self.broker.resend_last_fill, self.account(username).api_key)

    def hold(self) -> None:
        """Keep broker frames in the link instead of delivering them."""
        self.call(setattr, self, "holding", True)

    def release(self, order: Literal["reversed", "as_sent"] = "reversed") -> int:
        """Deliver the held frames (newest first by default); returns how many."""

        async def flush() -> int:
            self.holding = False
            count = 0
            for link in self.links:
                frames = link.held[::-1] if order == "reversed" else link.held
                link.held = []
                for kind, data in frames:
                    await _forward(link.downstream, kind, data)
                    count += 1
            return count

        return self.run(flush())

    def lose_held_and_drop(self) -> int:
        """Cut the stream with the held frames undelivered: the fills in them happened at the
        broker, but only a reconciliation can tell the server. Returns how many were lost."""

        async def lose() -> int:
            lost = sum(len(link.held) for link in self.links)
            for link in self.links:
                link.held = []
            self.holding = False
            assert self.broker is not None
            self.broker.drop_trading_streams()
            return lost

        return self.run(lose())

    def held(self) -> int:
        return self.call(lambda: sum(len(link.held) for link in self.links))

    async def _proxy_stream(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None and self.broker is not None
        headers = {k: v for k, v in request.headers.items() if k.upper().startswith("APCA-")}
        try:
            upstream = await self._http.ws_connect(self.broker.trading_stream_url, headers=headers)
        except aiohttp.WSServerHandshakeError as error:
            return web.Response(status=error.status, text=error.message)
        downstream = web.WebSocketResponse()
        await downstream.prepare(request)
        link = StreamLink(downstream, upstream)
        self.links.append(link)
        to_broker = asyncio.ensure_future(self._pump_up(link))
        try:
            async for message in upstream:
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                if self.holding:
                    link.held.append((message.type, message.data))
                    continue
                await _forward(downstream, message.type, message.data)
                if self.duplicating:
                    await _forward(downstream, message.type, message.data)
        finally:
            to_broker.cancel()
            self.links.remove(link)
            await upstream.close()
            transport = request.transport
            if upstream.close_code in (None, 1006) and transport is not None:
                transport.abort()  # the broker reset the link: so does the proxy
            else:
                await downstream.close(code=upstream.close_code or 1000)
        return downstream

    async def _pump_up(self, link: StreamLink) -> None:
        async for message in link.downstream:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await _forward(link.upstream, message.type, message.data)
        await link.upstream.close()

    # ---- REST faults -----------------------------------------------------------------------

    def add_rest_fault(self, fault: RestFault) -> RestFault:
        self.call(self.rest_faults.append, fault)
        return fault

    def clear_rest_faults(self) -> None:
        self.call(self.rest_faults.clear)

    def rest_hits(self, fault: RestFault) -> int:
        return self.call(lambda: fault.hits)

    async def _proxy_rest(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None and self.broker is not None
        self.rest_requests += 1
        fault = next((f for f in self.rest_faults if f.matches(request)), None)
        if fault is not None:
            fault.hits += 1
            if fault.kind == "500":
                return web.json_response(
                    {"code": 50010000, "message": "internal server error"}, status=500
                )
            if fault.kind in ("hang", "slow"):
                # Then answered normally: a hung call that the client did not give up on
                # still takes effect at the broker, late.
                await asyncio.sleep(fault.seconds)
        headers = {k: v for k, v in request.headers.items() if k.upper().startswith("APCA-")}
        headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
        async with self._http.request(
            request.method,
            self.broker.base_url + request.path_qs,
            headers=headers,
            data=await request.read(),
        ) as response:
            body = await response.read()
            status = response.status
        if fault is not None and fault.kind == "poison" and status == 200:
            decoded = orjson.loads(body)
            if isinstance(decoded, list):
                body = orjson.dumps([*decoded, fault.record])
        return web.Response(body=body, status=status, content_type="application/json")


async def _forward(
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, kind: WSMsgType, data: Any
) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        if kind is WSMsgType.TEXT:
            await ws.send_str(data)
        else:
            await ws.send_bytes(data)
