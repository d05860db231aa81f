"""What the bridge connects to: real Alpaca accounts, or the embedded simulated broker.

In simulated mode the broker runs on SIM_HOST:SIM_PORT and every account's endpoints point at
it. With SIM_DEMO_USERS the demo users ``admin``, ``alice`` and ``bob`` (those not configured as
accounts already) each get a fresh simulator account; the app creates the users themselves
from ``demo_logins`` before the bridge starts. Accounts from ALPACA_* or ACCOUNTS_FILE are
registered with the simulator too, under their configured keys.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from pydantic import SecretStr

from alpaca_bridge.accounts import (
    DEMO_USERS,
    BrokerAccount,
    Endpoints,
    alpaca_data_stream_url,
    alpaca_endpoints,
    configured_accounts,
)
from alpaca_bridge.simulator import SimulatedBroker
from app.broker import DemoLogin
from config.settings import Settings


@dataclass(frozen=True, slots=True)
class BridgePlan:
    settings: Settings
    accounts: list[BrokerAccount]
    data_stream_url: str
    simulator: SimulatedBroker | None = None
    simulator_endpoints: Endpoints | None = None

    def endpoints(self, account: BrokerAccount) -> Endpoints:
        return self.simulator_endpoints or alpaca_endpoints(self.settings, account.paper)


async def plan_alpaca(settings: Settings) -> BridgePlan:
    return BridgePlan(settings, configured_accounts(settings), alpaca_data_stream_url(settings))


def demo_logins(settings: Settings) -> tuple[DemoLogin, ...]:
    """The demo users simulated mode gives an account: none unless SIM_DEMO_USERS, and none
    named like a configured account (that one keeps its own keys)."""
    if settings.broker_mode != "simulated":
        return ()
    return _unclaimed_demo_logins(settings, configured_accounts(settings))


def _unclaimed_demo_logins(
    settings: Settings, accounts: list[BrokerAccount]
) -> tuple[DemoLogin, ...]:
    if not settings.sim_demo_users:
        return ()
    taken = {account.username.lower() for account in accounts}
    return tuple(DemoLogin(*user) for user in DEMO_USERS if user[0] not in taken)


async def plan_simulated(settings: Settings) -> BridgePlan:
    """Start the simulated broker; the caller stops ``plan.simulator``."""
    accounts = configured_accounts(settings)
    demo = _unclaimed_demo_logins(settings, accounts)
    accounts.extend(
        BrokerAccount(
            login.username,
            SecretStr(f"SIM{secrets.token_hex(8).upper()}"),
            SecretStr(secrets.token_urlsafe(24)),
            paper=True,
        )
        for login in demo
    )
    broker = SimulatedBroker(
        host=settings.sim_host,
        port=settings.sim_port,
        tick_interval_s=settings.sim_tick_interval_ms / 1000,
        order_interval_s=settings.sim_order_interval_s,
        seed=settings.sim_seed,
        feed=settings.alpaca_data_feed,
    )
    for account in accounts:
        broker.add_account(
            account.api_key.get_secret_value(),
            account.secret_key.get_secret_value(),
            label=account.username,
        )
    await broker.start()
    return BridgePlan(
        settings,
        accounts,
        broker.data_stream_url,
        simulator=broker,
        simulator_endpoints=Endpoints(broker.base_url, broker.trading_stream_url),
    )
