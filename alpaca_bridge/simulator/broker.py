"""``SimulatedBroker``: an Alpaca-compatible broker on loopback, for demos and tests.

One aiohttp server speaks the Trading REST API (``/v2/...``), the ``trade_updates`` websocket
(``/stream``) and the stock data websocket (``/v2/{feed}``), all backed by one order desk and
one market, so the real alpaca-py clients and our own consumer run against it unchanged.
Controls are plain methods on the event loop that runs it.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Coroutine, Sequence
from decimal import Decimal
from typing import Any, Literal

import structlog
from aiohttp import web

from alpaca_bridge.simulator.control_api import CONTROL_PREFIX, ControlApi
from alpaca_bridge.simulator.controls import StreamControls
from alpaca_bridge.simulator.data_ws import FEEDS, MarketDataHub
from alpaca_bridge.simulator.demo import DemoTrader
from alpaca_bridge.simulator.desk import OrderDesk
from alpaca_bridge.simulator.faults import RestFaults
from alpaca_bridge.simulator.ledger import AccountBook, SimAccount
from alpaca_bridge.simulator.market import MarketEngine, Print
from alpaca_bridge.simulator.rest import TradingRest, json_errors, place_order
from alpaca_bridge.simulator.trading_ws import TradingStreamHub
from alpaca_bridge.simulator.wire import Json, account_json, order_json

log = structlog.get_logger()


class SimulatedBroker(StreamControls):
    """A local Alpaca: accounts, a moving market, order fills, REST and both websockets."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tick_interval_s: float = 0.5,
        order_interval_s: float = 4.0,
        seed: int | None = None,
        symbols: Sequence[str] | None = None,
        starting_cash: Decimal = Decimal("100000"),
        feed: str = "iex",
        fill_delay_s: float = 0.05,
        trading_frames: Literal["binary", "text"] = "binary",
        single_connection: bool = True,
        shorting: bool = False,
        dead_data_slot_hold_s: float = 0.0,
        control_token: str | None = None,
    ) -> None:
        if feed not in FEEDS:
            raise ValueError(f"unknown data feed {feed!r}; one of {sorted(FEEDS)}")
        self.host, self.port = host, port
        self.tick_interval_s = tick_interval_s
        self.starting_cash = starting_cash
        self.feed = feed
        self.shorting = shorting
        self._accounts: dict[str, SimAccount] = {}
        self._market = MarketEngine(symbols, seed=seed)
        self._trading = TradingStreamHub(
            self._authenticate,
            binary=trading_frames == "binary",
            single_connection=single_connection,
        )
        self._data = MarketDataHub(
            self._authenticate,
            self._trading.behaviour,
            single_connection=single_connection,
            dead_slot_hold_s=dead_data_slot_hold_s,
        )
        self._desk = OrderDesk(self._market, self._trading.publish, fill_delay_s=fill_delay_s)
        self._demo = DemoTrader(self._desk, order_interval_s, seed)
        self._faults = RestFaults()
        self._control = None if not control_token else ControlApi(self, control_token)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def trading_stream_url(self) -> str:
        return f"ws://{self.host}:{self.port}/stream"

    @property
    def data_stream_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v2/{self.feed}"

    @property
    def control_url(self) -> str | None:
        """Where the HTTP control API answers, when a control token enables it."""
        return None if self._control is None else self.base_url + CONTROL_PREFIX

    def build_app(self) -> web.Application:
        """The aiohttp application serving REST and both websockets."""
        app = web.Application(middlewares=[self._faults.middleware, json_errors])
        if self._control is not None:
            self._control.add_routes(app.router)
        app.router.add_get("/stream", self._trading.handle)
        TradingRest(self._desk, self._authenticate).add_routes(app.router)
        app.router.add_get("/v2/{feed:iex|sip|delayed_sip|test}", self._data.handle)
        return app

    async def start(self) -> None:
        """Listen on host:port (0 picks a free port, then ``port`` holds it) and start trading."""
        if self._runner is not None:
            raise RuntimeError("already started")
        runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        if self.tick_interval_s > 0:
            self._spawn(self._run_ticks(), "sim-market-ticks")
        self._spawn(self._demo.run(), "sim-random-orders")  # idle while its interval is 0
        log.info("[SimulatedBroker] Listening", url=self.base_url, accounts=len(self._accounts))

    async def stop(self) -> None:
        """Close every socket and stop every task; returns within about a second."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._desk.close()
        self._faults.clear()
        await asyncio.gather(self._trading.close_all(), self._data.close_all())
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimulatedBroker:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=name))

    # ---- accounts --------------------------------------------------------------------------

    def add_account(
        self, api_key: str, secret_key: str, label: str = "", cash: Decimal | None = None
    ) -> SimAccount:
        """Open an account (before or after ``start``); re-adding the same key is an error."""
        if api_key in self._accounts:
            raise ValueError(f"account {api_key!r} already exists")
        account = SimAccount(api_key, secret_key, label)
        self._accounts[api_key] = account
        self._desk.open_book(
            AccountBook(
                account,
                self.starting_cash if cash is None else cash,
                opened_ns=time.time_ns(),
                shorting=self.shorting,
            )
        )
        return account

    def _authenticate(self, api_key: str, secret_key: str) -> bool:
        account = self._accounts.get(api_key)
        return account is not None and hmac.compare_digest(
            account.secret_key.encode(), secret_key.encode()
        )

    # ---- market ----------------------------------------------------------------------------

    def price(self, symbol: str) -> Decimal:
        return self._market.price(symbol.upper())

    @property
    def symbols(self) -> list[str]:
        return self._market.symbols

    def set_price(self, symbol: str, price: Decimal) -> None:
        """Trade ``symbol`` at ``price`` now: subscribers get the tick, limit orders may fill."""
        self._publish([self._market.set_price(symbol.upper(), price)])

    def tick(self) -> None:
        """Advance the market one step now (as the tick timer does)."""
        self._publish(self._market.step())

    def _publish(self, prints: list[Print]) -> None:
        for item in prints:
            self._desk.on_price(item.symbol)
        self._data.publish(prints)

    async def _run_ticks(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval_s)
            try:
                self.tick()
            except Exception:
                log.exception("[SimulatedBroker] Market tick failed")

    # ---- orders ----------------------------------------------------------------------------

    async def submit_order(
        self,
        api_key: str,
        symbol: str,
        side: str,
        qty: Decimal,
        type: str = "market",
        limit_price: Decimal | None = None,
        client_order_id: str | None = None,
        time_in_force: str = "day",
    ) -> Json:
        """Place an order exactly as ``POST /v2/orders`` would; raises SimApiError."""
        body: dict[str, Any] = {
            "symbol": symbol,
            "side": side,
            "qty": str(qty),
            "type": type,
            "time_in_force": time_in_force,
            "limit_price": None if limit_price is None else str(limit_price),
            "client_order_id": client_order_id,
        }
        return place_order(self._desk, api_key, body)

    def cancel_order(self, api_key: str, order_id: str) -> Json:
        """Cancel as ``DELETE /v2/orders/{id}`` would; raises SimApiError."""
        return order_json(self._desk.cancel(api_key, order_id))

    def set_partial_fills(self, enabled: bool) -> None:
        """When on, orders of 2+ shares fill in two executions: partial_fill, then fill."""
        self._desk.partial_fills = enabled

    def pause_random_orders(self) -> None:
        self._demo.pause()

    def resume_random_orders(self) -> None:
        self._demo.pause(False)

    def place_random_orders(self) -> list[Json]:
        """One round of demo orders (one per account where sensible), as the timer places."""
        return self._demo.place_round()

    # ---- REST-shaped views -----------------------------------------------------------------

    def account(self, api_key: str) -> Json:
        return account_json(self._desk.book(api_key), self._market.price)

    def orders(self, api_key: str, status: Literal["open", "closed", "all"] = "all") -> list[Json]:
        """REST-shaped orders, oldest first (unlike REST, which defaults to newest first)."""
        return [
            order_json(o)
            for o in self._desk.book(api_key).orders.values()
            if status == "all" or o.is_open == (status == "open")
        ]

    def trade_updates(self, api_key: str) -> list[Json]:
        """Every trade update announced for the account (delivered or lost), oldest first."""
        return self._desk.history(api_key)
