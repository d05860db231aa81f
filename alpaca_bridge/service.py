"""The broker bridge: every configured account's stream, ledger and reconciliation, one price
feed, and (in simulated mode) the embedded broker with its demo users.

``bridge_ctx`` is the app's cleanup context: it builds the bridge from ``app[SETTINGS_KEY]``,
``app[BUS_KEY]`` and ``app[STORE_KEY]``, starts it, exposes it as ``app[BRIDGE_KEY]`` and stops
it (everything closed within about a second) on the way out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import requests
from aiohttp import web
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from alpaca_bridge.account_sync import AccountSync
from alpaca_bridge.accounts import BrokerAccount
from alpaca_bridge.backoff import Backoff
from alpaca_bridge.errors import (
    BrokerError,
    BrokerUnavailable,
    OrderRejected,
    UnknownAccount,
    api_error_message,
)
from alpaca_bridge.models import decimal_text, iso_from_epoch
from alpaca_bridge.prices import PriceFeed
from alpaca_bridge.reconcile import trading_client
from alpaca_bridge.setup import BridgePlan, plan_alpaca, plan_simulated
from alpaca_bridge.trade_stream import StreamState, TradeUpdatesStream
from app.bus import EventBus
from app.keys import BRIDGE_KEY, BUS_KEY, SETTINGS_KEY, STORE_KEY
from app.store import Store
from config.logging import get_logger
from config.settings import Settings

if TYPE_CHECKING:
    from alpaca_bridge.simulator import SimulatedBroker

log = get_logger()

__all__ = [
    "BrokerBridge",
    "BrokerError",
    "BrokerUnavailable",
    "OrderRejected",
    "UnknownAccount",
    "bridge_ctx",
]

AccountStatus = Literal[
    "connecting", "connected", "reconnecting", "unauthorized", "unknown_user", "stopped"
]


@dataclass(slots=True)
class _Account:
    account: BrokerAccount
    client: TradingClient
    user_id: str | None = None
    sync: AccountSync | None = None
    stream: TradeUpdatesStream | None = None


class BrokerBridge:
    """Runs the Alpaca side of the service; see the module docstring."""

    def __init__(self, settings: Settings, bus: EventBus, store: Store) -> None:
        self.mode: Literal["alpaca", "simulated"] = settings.broker_mode
        self._settings = settings
        self._bus = bus
        self._store = store
        self._accounts: dict[str, _Account] = {}
        self._prices: PriceFeed | None = None
        self._http: aiohttp.ClientSession | None = None
        self._plan: BridgePlan | None = None
        self._running = False
        self._ready = asyncio.Event()

    @property
    def simulator(self) -> SimulatedBroker | None:
        return self._plan.simulator if self._plan else None

    @property
    def demo_logins(self) -> list[tuple[str, str]]:
        return list(self._plan.demo_logins) if self._plan else []

    @property
    def ready(self) -> bool:
        """Store open and every account settled: reconciled once, or definitively failed."""
        return (
            self._running
            and self._store.is_open
            and all(
                entry.sync is None
                or entry.sync.reconciled_at is not None
                or (entry.stream is not None and entry.stream.state is StreamState.UNAUTHORIZED)
                for entry in self._accounts.values()
            )
        )

    async def wait_ready(self) -> None:
        """Return once ``ready`` (see there) has been true; use with a timeout."""
        await self._ready.wait()

    def _state_changed(self, *_: object) -> None:
        if self.ready:
            self._ready.set()

    async def start(self) -> None:
        settings = self._settings
        plan = await (
            plan_simulated(settings, self._store)
            if self.mode == "simulated"
            else plan_alpaca(settings)
        )
        self._plan = plan
        self._http = aiohttp.ClientSession()
        self._running = True
        try:
            await self._start_accounts(plan)
        except BaseException:
            await self.stop()
            raise
        log.info("[AlpacaStream] Bridge started", mode=self.mode, accounts=len(self._accounts))

    async def _start_accounts(self, plan: BridgePlan) -> None:
        for account in plan.accounts:
            entry = _Account(account, trading_client(account, plan.endpoints(account).api_url))
            self._accounts[account.username.lower()] = entry
            user = await self._store.get_user_by_username(account.username)
            if user is None:
                log.error(
                    "[AlpacaStream] No user for broker account; its events are not "
                    "streamed until the user exists and the service restarts",
                    account=account.username,
                )
                continue
            entry.user_id = user.id
            self._start_account(entry, plan)
        feeders = [e.account for e in self._accounts.values() if e.sync is not None]
        if feeders:
            # One market-data connection per key is the plan limit; the first account's will do.
            self._prices = PriceFeed(
                url=plan.data_stream_url,
                feed=self._settings.alpaca_data_feed,
                key_id=feeders[0].api_key,
                secret_key=feeders[0].secret_key,
                on_prices=self._on_prices,
            )
            self._prices.start()
            self._on_symbols_changed()
        self._state_changed()

    def _start_account(self, entry: _Account, plan: BridgePlan) -> None:
        settings = self._settings
        assert entry.user_id is not None
        assert self._http is not None
        sync = AccountSync(
            account=entry.account.username,
            user_id=entry.user_id,
            client=entry.client,
            bus=self._bus,
            on_symbols_changed=self._on_symbols_changed,
            on_reconciled=self._state_changed,
            backoff=Backoff(settings.alpaca_backoff_initial_s, settings.alpaca_backoff_max_s),
        )
        stream = TradeUpdatesStream(
            account=entry.account.username,
            url=plan.endpoints(entry.account).stream_url,
            key_id=entry.account.api_key,
            secret_key=entry.account.secret_key,
            session=self._http,
            auth_timeout_s=settings.alpaca_auth_timeout_s,
            backoff=Backoff(settings.alpaca_backoff_initial_s, settings.alpaca_backoff_max_s),
            on_update=sync.on_update,
            on_connected=sync.on_connected,
            on_state=self._state_changed,
        )
        entry.sync, entry.stream = sync, stream
        stream.start()

    async def stop(self) -> None:
        """Close every stream, task and socket; returns within about a second."""
        if not self._running:
            return
        self._running = False
        entries = list(self._accounts.values())
        await asyncio.gather(
            *(e.stream.stop() for e in entries if e.stream is not None),
            *(e.sync.stop() for e in entries if e.sync is not None),
            *([self._prices.stop()] if self._prices is not None else []),
        )
        if self._http is not None:
            await self._http.close()
        if self._plan is not None and self._plan.simulator is not None:
            await self._plan.simulator.stop()
        log.info("[AlpacaStream] Bridge stopped", mode=self.mode, accounts=len(entries))

    def accounts_status(self) -> list[dict[str, Any]]:
        return [self._account_status(entry) for entry in self._accounts.values()]

    def _account_status(self, entry: _Account) -> dict[str, Any]:
        stream, sync = entry.stream, entry.sync
        status: AccountStatus = (
            "unknown_user"
            if entry.user_id is None
            else (stream.state.value if stream is not None else "stopped")
        )
        last = stream.last_event_at if stream is not None else None
        reconciled = sync.reconciled_at if sync is not None else None
        return {
            "username": entry.account.username,
            "userId": entry.user_id,
            "status": status,
            "lastEventAt": None if last is None else iso_from_epoch(last),
            "lastReconciledAt": None if reconciled is None else iso_from_epoch(reconciled),
            "reconnects": stream.reconnects if stream is not None else 0,
            "mode": self.mode,
            "paper": entry.account.paper,
        }

    def price_stream_status(self) -> dict[str, Any]:
        if self._prices is None:
            return {"status": "idle", "symbols": [], "ticks": 0, "lastTickAt": None}
        return self._prices.status()

    async def place_order(
        self, username: str, symbol: str, side: str, qty: Decimal
    ) -> dict[str, Any]:
        """A market day order through ``username``'s account; returns the broker's order."""
        entry = self._accounts.get(username.strip().lower())
        if entry is None:
            raise UnknownAccount(f"no broker account for user {username!r}")
        if entry.user_id is None:
            raise UnknownAccount(f"broker account {username!r} has no user; create it first")
        if side not in ("buy", "sell"):
            raise OrderRejected(f"side must be buy or sell, not {side!r}")
        if not qty.is_finite() or qty <= 0:
            raise OrderRejected("qty must be a positive number")
        request = MarketOrderRequest(
            symbol=symbol.strip().upper(),
            qty=float(qty),
            side=OrderSide(side),
            time_in_force=TimeInForce.DAY,
        )
        try:
            order = await asyncio.to_thread(entry.client.submit_order, request)
        except APIError as exc:
            raise OrderRejected(api_error_message(exc)) from None
        except requests.RequestException as exc:
            raise BrokerUnavailable(f"broker unreachable: {type(exc).__name__}") from None
        if not isinstance(order, dict):
            raise BrokerUnavailable("unexpected order response from the broker")
        log.info(
            "[AlpacaStream] Order placed",
            account=entry.account.username,
            orderId=order.get("id"),
            symbol=order.get("symbol"),
            side=side,
            qty=decimal_text(qty),
        )
        return {
            "username": entry.account.username,
            "userId": entry.user_id,
            "orderId": order.get("id"),
            "clientOrderId": order.get("client_order_id"),
            "symbol": order.get("symbol"),
            "side": order.get("side"),
            "type": order.get("type"),
            "qty": order.get("qty"),
            "status": order.get("status"),
            "submittedAt": order.get("submitted_at"),
        }

    def _on_prices(self, prices: dict[str, Decimal]) -> None:
        for entry in self._accounts.values():
            if entry.sync is not None:
                entry.sync.on_prices(prices)

    def _on_symbols_changed(self) -> None:
        if self._prices is not None:
            self._prices.want(
                set().union(
                    *(e.sync.ledger.symbols for e in self._accounts.values() if e.sync is not None)
                )
            )


async def bridge_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: start the bridge, expose it as ``app[BRIDGE_KEY]``, stop it."""
    bridge = BrokerBridge(app[SETTINGS_KEY], app[BUS_KEY], app[STORE_KEY])
    await bridge.start()
    app[BRIDGE_KEY] = bridge
    try:
        yield
    finally:
        await bridge.stop()
