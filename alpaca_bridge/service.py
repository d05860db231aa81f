"""The broker bridge: every configured account's stream, ledger and reconciliation, one price
feed, and (in simulated mode) the embedded broker with accounts for its demo users.

With CONSUME_BROKER_STREAMS=false the node is a standby for every account: it keeps each
account's REST client (test trades) but starts no stream, reconciliation or price feed, since
another node of the cluster consumes them and publishes their events for all.

Prices: the node's accounts' held symbols go to a ``PriceRelay`` (``app/broker.py``), and
ticks come back from it. Without a relay given, it is the in-process one and the bridge runs the
market-data connection itself while any account streams. Given one (a cluster), the connection
runs only between ``start_prices(epoch)`` and ``stop_prices(reason)``, which the ``prices``
lease's holder calls: one connection for the cluster, on the union of every node's symbols.

``BrokerBridge`` implements the app's ``Broker`` seam (``app/broker.py``); the app builds it,
creates the users it reports in ``demo_logins``, starts it and stops it. It publishes on the
bus it is given and finds an account's user through the lookup it is given.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from functools import cached_property
from typing import Any, Literal

import aiohttp

from alpaca_bridge.account_runtime import AccountRuntime
from alpaca_bridge.account_sync import AccountSync
from alpaca_bridge.orders import submit_market_order
from alpaca_bridge.plan import BridgePlan, demo_logins, plan_alpaca, plan_simulated
from alpaca_bridge.prices import PriceFeed
from alpaca_bridge.reconcile import trading_client
from alpaca_bridge.simulator import SimulatedBroker
from alpaca_bridge.trade_stream import TradeUpdatesStream
from alpaca_bridge.wire_parser import decimal_text
from app.backoff import Backoff
from app.broker import (
    AccountStatus,
    BrokerHealth,
    BrokerReport,
    DemoLogin,
    LocalPriceRelay,
    PriceRelay,
    UnknownAccount,
    UserLookup,
)
from app.bus import EventBus
from config.logging import get_logger
from config.settings import Settings

log = get_logger()

# Threads for reconciliation's REST calls (at most one per account at a time).
MAX_RECONCILE_THREADS = 32


class BrokerBridge:
    """Runs the Alpaca side of the service; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        bus: EventBus,
        find_user_id: UserLookup,
        *,
        on_demand: bool = False,
        price_relay: PriceRelay | None = None,
    ) -> None:
        """``on_demand``: start no account at ``start``; the app calls ``consume`` and
        ``stop_consuming`` per account (a cluster's leases decide which node consumes it).
        ``price_relay``: the cluster's price relay; the market-data connection then runs only
        between ``start_prices`` and ``stop_prices`` (the ``prices`` lease)."""
        self.mode: Literal["alpaca", "simulated"] = settings.broker_mode
        self.consumes_streams = settings.consume_broker_streams
        self.on_demand = on_demand and self.consumes_streams
        self._settings = settings
        self._bus = bus
        self._find_user_id = find_user_id
        self._accounts: dict[str, AccountRuntime] = {}
        self._prices: PriceFeed | None = None
        # A relay given: the prices lease decides when this node runs the feed.
        self._prices_by_lease = price_relay is not None
        self._relay: PriceRelay = price_relay or LocalPriceRelay()
        self._prices_epoch = 0
        self._http: aiohttp.ClientSession | None = None
        self._rest_pool: ThreadPoolExecutor | None = None
        self._plan: BridgePlan | None = None
        self._running = False
        self._ready = asyncio.Event()

    @property
    def simulator(self) -> SimulatedBroker | None:
        return self._plan.simulator if self._plan else None

    @cached_property
    def demo_logins(self) -> tuple[DemoLogin, ...]:
        """The demo users simulated mode has accounts for; their users must exist before
        ``start``. Raises ``AccountsConfigError`` like ``start``."""
        return demo_logins(self._settings)

    @property
    def ready(self) -> bool:
        """Started, and every account settled: reconciled once, or definitively failed."""
        return self._running and all(a.settled for a in self._accounts.values())

    async def wait_ready(self) -> None:
        """Return once ``ready`` (see there) has been true; use with a timeout."""
        await self._ready.wait()

    def _state_changed(self, *_: object) -> None:
        if self.ready:
            self._ready.set()

    async def start(self) -> None:
        """Start the embedded broker (simulated mode), every account's stream and the price
        feed; returns at once (``wait_ready`` for the first reconciliations). Raises
        ``AccountsConfigError`` for account configuration that cannot work."""
        settings = self._settings
        plan = await (
            plan_simulated(settings) if self.mode == "simulated" else plan_alpaca(settings)
        )
        self._plan = plan
        # Each account holds one stream socket for as long as it runs: aiohttp's default pool of
        # 100 left every account past the 100th waiting for a slot forever. Twice the accounts
        # leaves room for sockets still closing.
        pool = aiohttp.TCPConnector(limit=2 * max(len(plan.accounts), 1))
        self._http = aiohttp.ClientSession(connector=pool)
        # Reconciliation's blocking REST calls get threads of their own: when the broker hangs
        # they are all stuck, and test trades and the price feed must not queue behind them.
        self._rest_pool = ThreadPoolExecutor(
            max_workers=min(MAX_RECONCILE_THREADS, max(len(plan.accounts), 1)),
            thread_name_prefix="broker-rest",
        )
        self._running = True
        try:
            await self._start_accounts(plan)
        except BaseException:
            await self.stop()
            raise
        if not self.consumes_streams:
            log.info(
                "[AlpacaStream] This node consumes no broker streams "
                "(CONSUME_BROKER_STREAMS=false): another node streams every account; "
                "test trades still go to the broker",
                accounts=len(self._accounts),
            )
        log.info("[AlpacaStream] Bridge started", mode=self.mode, accounts=len(self._accounts))

    async def _start_accounts(self, plan: BridgePlan) -> None:
        for account in plan.accounts:
            api_url = plan.endpoints(account).api_url
            client = trading_client(account, api_url, self._settings.broker_rest_timeout_s)
            entry = AccountRuntime(
                account, client, standby=self.on_demand or not self.consumes_streams
            )
            self._accounts[account.username.lower()] = entry
            user_id = await self._find_user_id(account.username)
            if user_id is None:
                log.error(
                    "[AlpacaStream] No user for broker account; its events are not "
                    "streamed until the user exists and the service restarts",
                    account=account.username,
                )
                continue
            entry.user_id = user_id
            if self.consumes_streams and not self.on_demand:
                self._start_account(entry, plan)
        self._relay.subscribe(self._on_prices, self._on_wanted_changed)
        await self._relay.start()
        if not self._prices_by_lease and any(e.sync is not None for e in self._accounts.values()):
            self.start_prices(0)
        self._on_symbols_changed()
        self._state_changed()

    def start_prices(self, epoch: int) -> None:
        """Run the market-data connection (this node holds the ``prices`` lease under
        ``epoch``) on the cluster's wanted symbols; a call while it runs takes the new epoch."""
        self._prices_epoch = epoch
        plan = self._plan
        if not self._running or plan is None or not plan.accounts or self._prices is not None:
            return
        settings = self._settings
        # One market-data connection per key is the plan limit. Every node picks the same
        # account's key (the first configured), so a handover frees the slot the next takes.
        account = plan.accounts[0]
        self._prices = PriceFeed(
            url=plan.data_stream_url,
            feed=settings.alpaca_data_feed,
            key_id=account.api_key,
            secret_key=account.secret_key,
            on_prices=self._on_feed_prices,
            coalesce_s=settings.price_coalesce_ms / 1000,
            symbol_limit=settings.alpaca_data_symbol_limit,
            backoff_initial_s=settings.alpaca_backoff_initial_s,
            backoff_max_s=settings.alpaca_backoff_max_s,
        )
        self._prices.start()
        self._prices.want(self._relay.wanted())
        if self._prices_by_lease:
            log.info("[AlpacaStream] Price stream started on this node", epoch=epoch)

    async def stop_prices(self, reason: str) -> None:
        """Close the market-data connection (cleanly, so the next holder gets the slot at
        once); the ``prices`` lease was lost or is being given back. Idempotent."""
        feed, self._prices = self._prices, None
        if feed is None:
            return
        await feed.stop()
        log.info("[AlpacaStream] Price stream stopped on this node", reason=reason)

    def consumable_accounts(self) -> list[str]:
        """The accounts this node may consume on demand: those with a user (lower-cased)."""
        if not self.on_demand:
            return []
        return [name for name, e in self._accounts.items() if e.user_id is not None]

    async def consume(self, username: str) -> str | None:
        """Start consuming an account (its lease was granted here): its stream, then a
        reconciliation whose result replaces the account's shared state, then the live
        updates held meanwhile. Returns the account's user id (None: unknown account)."""
        entry = self._accounts.get(username.lower())
        if entry is None or entry.user_id is None or self._plan is None or not self._running:
            return None
        if entry.stream is None:
            entry.standby = False
            # The previous holder may have stopped up to a lease's life (and a renewal) ago:
            # the orders and fills of that time are read from REST.
            since = time.time() - 2 * self._settings.lease_ttl_s
            self._start_account(entry, self._plan, gap_started_at=since)
            if not self._prices_by_lease:
                self.start_prices(0)
            self._on_symbols_changed()
            self._state_changed()
            log.info("[AlpacaStream] Consuming account", account=entry.account.username)
        return entry.user_id

    async def stop_consuming(self, username: str, reason: str) -> None:
        """Stop an account's stream and ledger (its lease ended here): nothing more of it is
        published by this node until ``consume`` again, which starts from REST afresh."""
        entry = self._accounts.get(username.lower())
        if entry is None or (entry.stream is None and entry.sync is None):
            return
        stream, sync = entry.stream, entry.sync
        entry.stream = entry.sync = None
        entry.standby = True
        await asyncio.gather(
            *([stream.stop()] if stream is not None else []),
            *([sync.stop()] if sync is not None else []),
        )
        self._on_symbols_changed()
        self._state_changed()
        log.info(
            "[AlpacaStream] Stopped consuming account",
            account=entry.account.username,
            reason=reason,
        )

    def _start_account(
        self, entry: AccountRuntime, plan: BridgePlan, gap_started_at: float | None = None
    ) -> None:
        settings = self._settings
        assert entry.user_id is not None
        assert self._http is not None
        sync = AccountSync(
            account=entry.account.username,
            user_id=entry.user_id,
            client=entry.client,
            bus=self._bus,
            on_symbols_changed=self._on_symbols_changed,
            on_settled=self._state_changed,
            backoff=Backoff(settings.alpaca_backoff_initial_s, settings.alpaca_backoff_max_s),
            executor=self._rest_pool,
            hold_until_reconciled=self.on_demand,
            gap_started_at=gap_started_at,
        )
        stream = TradeUpdatesStream(
            account=entry.account.username,
            url=plan.endpoints(entry.account).stream_url,
            key_id=entry.account.api_key,
            secret_key=entry.account.secret_key,
            session=self._http,
            auth_timeout_s=settings.alpaca_auth_timeout_s,
            heartbeat_s=settings.alpaca_stream_heartbeat_s,
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
        await self._relay.stop()
        if self._http is not None:
            await self._http.close()
        if self._rest_pool is not None:
            # Threads still blocked on a hung broker end within the REST timeout on their own.
            self._rest_pool.shutdown(wait=False, cancel_futures=True)
        if self._plan is not None and self._plan.simulator is not None:
            await self._plan.simulator.stop()
        log.info("[AlpacaStream] Bridge stopped", mode=self.mode, accounts=len(entries))

    def accounts_status(self) -> list[AccountStatus]:
        return [entry.status(self.mode) for entry in self._accounts.values()]

    async def rebuild_state(self) -> None:
        """Every consumed account's ledger written again, then checked against REST."""
        for entry in self._accounts.values():
            if entry.sync is not None:
                entry.sync.rebuild()

    def report(self) -> BrokerReport:
        return {
            "mode": self.mode,
            "accounts": self.accounts_status(),
            "prices": self.price_stream_status(),
        }

    def broker_health(self) -> BrokerHealth:
        """Per-account health (see ``alpaca_bridge.health``) and ``ready``: every account ok."""
        accounts = {
            e.account.username: e.status(self.mode)["health"] for e in self._accounts.values()
        }
        return {
            "ready": self._running and all(h == "ok" for h in accounts.values()),
            "accounts": accounts,
        }

    def price_stream_status(self) -> dict[str, Any]:
        """The market-data connection when this node runs it; else ``relayed`` (another node
        of the cluster does) or ``idle``. ``relay`` is the relay's own figures."""
        relay = {"relay": self._relay.status()}
        if self._prices is None:
            state = "relayed" if self._prices_by_lease and self._running else "idle"
            return {"status": state, "symbols": [], "ticks": 0, "lastTickAt": None, **relay}
        return {**self._prices.status(), "epoch": self._prices_epoch, **relay}

    async def place_order(
        self, username: str, symbol: str, side: str, qty: Decimal
    ) -> dict[str, Any]:
        """A market day order through ``username``'s account; returns the broker's order."""
        entry = self._accounts.get(username.strip().lower())
        if entry is None:
            raise UnknownAccount(f"no broker account for user {username!r}")
        if entry.user_id is None:
            raise UnknownAccount(f"broker account {username!r} has no user; create it first")
        timeout_s = self._settings.broker_rest_timeout_s
        order = await submit_market_order(entry.client, symbol, side, qty, timeout_s)
        log.info(
            "[AlpacaStream] Order placed",
            account=entry.account.username,
            orderId=order["orderId"],
            symbol=order["symbol"],
            side=side,
            qty=decimal_text(qty),
        )
        return {"username": entry.account.username, "userId": entry.user_id, **order}

    def _on_prices(self, prices: Mapping[str, Decimal]) -> None:
        """Ticks from the relay (this node's feed or another's) for every consumed account."""
        batch = dict(prices)
        for entry in self._accounts.values():
            if entry.sync is not None:
                entry.sync.on_prices(batch)

    def _on_feed_prices(self, prices: dict[str, Decimal]) -> None:
        self._relay.publish(prices, self._prices_epoch)

    def _on_wanted_changed(self) -> None:
        if self._prices is not None:
            self._prices.want(self._relay.wanted())

    def _on_symbols_changed(self) -> None:
        """Tell the relay which symbols this node's accounts hold, and by how many each."""
        holders: Counter[str] = Counter()
        for entry in self._accounts.values():
            if entry.sync is not None:
                holders.update(entry.sync.ledger.symbols)
        self._relay.want(holders)
