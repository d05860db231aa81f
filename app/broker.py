"""The broker seam: what the app needs of whatever consumes the brokerage, and its errors.

The app (routes, stats, metrics, readiness, start-up log, shutdown) reaches the broker only
through :class:`Broker`. ``alpaca_bridge.service.BrokerBridge`` is the implementation that speaks
Alpaca (or the simulated broker); :class:`NullBroker` stands in when none runs, so no caller
asks whether there is one. This module imports nothing else of the app: the bridge depends on
it (and on the bus and event contract), never the other way round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, Protocol, TypedDict

# Finds the id of the user a broker account belongs to; None when there is no such user.
UserLookup = Callable[[str], Awaitable[str | None]]

AccountStreamStatus = Literal[
    "connecting",
    "connected",
    "reconnecting",
    "unauthorized",
    "unknown_user",
    "stopped",
    # CONSUME_BROKER_STREAMS=false: another node consumes the account; this one only trades.
    "standby",
]

# The states in which this node consumes an account's stream (the stats' accountsConsumed).
CONSUMING: Final = frozenset({"connecting", "connected", "reconnecting"})

AccountHealth = Literal[
    "ok",
    "starting",
    "disconnected",
    "rest_timeout",
    "reconcile_failed",
    "unauthorized",
    "unknown_user",
    "stopped",
]
"""Whether an account's portfolio can be trusted right now (``alpaca_bridge.health``)."""


class AccountStatus(TypedDict):
    """One account's entry in the stats document; ``reconnects`` counts attempts since start."""

    username: str
    userId: str | None
    status: AccountStreamStatus
    lastEventAt: str | None
    lastReconciledAt: str | None
    reconnects: int
    mode: str
    paper: bool
    health: AccountHealth
    lastError: str | None


class BrokerHealth(TypedDict):
    """``/readyz``'s ``broker`` field: every account ``ok``, and each account's health."""

    ready: bool
    accounts: dict[str, AccountHealth]


class BrokerReport(TypedDict):
    """The stats document's ``broker`` section."""

    mode: str
    accounts: list[AccountStatus]
    prices: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DemoLogin:
    """A demo user the broker has an account for; the app creates the user before start."""

    username: str
    password: str
    is_admin: bool = False


class BrokerError(Exception):
    """A request to the broker that could not be carried out; the message says why and is safe
    to show an admin (never a key or secret)."""


class UnknownAccount(BrokerError):
    """No broker account (or no user for it) for that username: the admin API answers 404."""


class OrderRejected(BrokerError):
    """The broker refused the order, or it was invalid before sending: 422."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached, or none runs: 503."""


class BrokerConfigError(ValueError):
    """Broker configuration that cannot work; raised by ``start``, the message names the
    variable or file. ``serve`` exits with it as an invalid configuration."""


class Broker(Protocol):
    """The brokerage as the app sees it: started and stopped by the app, asked for status."""

    @property
    def ready(self) -> bool:
        """Every account settled (reconciled once, or failed for good): /readyz's broker check."""
        ...

    @property
    def demo_logins(self) -> Sequence[DemoLogin]:
        """The demo users to create before ``start`` (their accounts need an owner)."""
        ...

    async def start(self) -> None:
        """Connect everything; returns at once. Raises :class:`BrokerConfigError`."""
        ...

    async def wait_ready(self) -> None:
        """Return once ``ready`` has been true; use with a timeout."""
        ...

    async def stop(self) -> None:
        """Close every stream, task and socket; idempotent."""
        ...

    def accounts_status(self) -> list[AccountStatus]: ...

    async def rebuild_state(self) -> None:
        """Write every consumed account's whole state to the bus again (``replace_state``):
        a cluster's shared state was lost. Returns once it is published."""
        ...

    def consumable_accounts(self) -> list[str]:
        """Accounts the app may start with ``consume`` (built with ``on_demand``): those with a
        user; empty when the broker starts its accounts itself."""
        ...

    async def consume(self, username: str) -> str | None:
        """Start consuming ``username``'s account here; its user id, or None if unknown."""
        ...

    async def stop_consuming(self, username: str, reason: str) -> None:
        """Stop consuming the account here (nothing of it is published after this returns)."""
        ...

    def start_prices(self, epoch: int) -> None:
        """Run the market-data connection here (the ``prices`` lease, granted at ``epoch``)."""
        ...

    async def stop_prices(self, reason: str) -> None:
        """Close the market-data connection here (the lease ended); idempotent."""
        ...

    def report(self) -> BrokerReport | None:
        """For the stats document; None when there is no broker to report on."""
        ...

    def broker_health(self) -> BrokerHealth | None:
        """For ``/readyz``; None when there is no broker to report on."""
        ...

    async def place_order(
        self, username: str, symbol: str, side: str, qty: Decimal
    ) -> dict[str, Any]:
        """A market day order through ``username``'s account; returns the broker's order.
        Raises :class:`UnknownAccount`, :class:`OrderRejected` or :class:`BrokerUnavailable`."""
        ...


class NullBroker:
    """No broker (events come from elsewhere: tests, benchmarks): ready, no accounts, nothing
    to report, and every order refused as unavailable."""

    ready = True
    demo_logins: Sequence[DemoLogin] = ()

    async def start(self) -> None:
        return None

    async def wait_ready(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def accounts_status(self) -> list[AccountStatus]:
        return []

    async def rebuild_state(self) -> None:
        return None

    def consumable_accounts(self) -> list[str]:
        return []

    async def consume(self, username: str) -> str | None:
        return None

    async def stop_consuming(self, username: str, reason: str) -> None:
        return None

    def start_prices(self, epoch: int) -> None:
        return None

    async def stop_prices(self, reason: str) -> None:
        return None

    def report(self) -> BrokerReport | None:
        return None

    def broker_health(self) -> BrokerHealth | None:
        return None

    async def place_order(
        self, username: str, symbol: str, side: str, qty: Decimal
    ) -> dict[str, Any]:
        raise BrokerUnavailable("No broker bridge is running")


# -- prices --------------------------------------------------------------------------------

# Latest price per symbol, as one coalesced batch of the market-data stream.
PriceSink = Callable[[Mapping[str, Decimal]], None]


class PriceRelay(Protocol):
    """How every node gets the prices of the one market-data connection, and tells its holder
    which symbols it needs.

    Each node says which symbols its consumed accounts hold (``want``, with how many accounts
    hold each). Whichever node runs the market-data connection subscribes to the cluster's
    union (``wanted``; ``on_wanted`` tells it when that changed) and hands each tick batch to
    ``publish``; every node's ``on_prices`` gets it, the publisher's own included.
    :class:`LocalPriceRelay` is the one-process loop; ``app.cluster.price_relay`` the Redis one.
    """

    def want(self, holders: Mapping[str, int]) -> None:
        """This node's held symbols from now on: symbol -> how many of its accounts hold it."""
        ...

    def wanted(self) -> dict[str, int]:
        """The cluster's union: symbol -> accounts holding it, over every live node."""
        ...

    def subscribe(self, on_prices: PriceSink, on_wanted: Callable[[], None]) -> None:
        """``on_prices`` gets every tick batch; ``on_wanted`` is called when ``wanted``
        changed. Call once, before ``start``."""
        ...

    def publish(self, prices: Mapping[str, Decimal], epoch: int) -> None:
        """A tick batch from the market-data connection, run under the ``prices`` lease's
        ``epoch`` (0 without leases): receivers drop batches from an older epoch while the
        newer one is live."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Withdraw this node's symbols and stop relaying; idempotent."""
        ...

    def status(self) -> dict[str, Any]:
        """For the stats document's ``broker.prices.relay``."""
        ...


class LocalPriceRelay:
    """One process: ``want`` is the union, and ``publish`` calls the subscriber directly."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self._on_prices: PriceSink | None = None
        self._on_wanted: Callable[[], None] | None = None

    def want(self, holders: Mapping[str, int]) -> None:
        held = {symbol: count for symbol, count in holders.items() if count > 0}
        if held == self._held:
            return
        self._held = held
        if self._on_wanted is not None:
            self._on_wanted()

    def wanted(self) -> dict[str, int]:
        return dict(self._held)

    def subscribe(self, on_prices: PriceSink, on_wanted: Callable[[], None]) -> None:
        self._on_prices, self._on_wanted = on_prices, on_wanted

    def publish(self, prices: Mapping[str, Decimal], epoch: int) -> None:
        if self._on_prices is not None:
            self._on_prices(prices)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"kind": "local"}
