"""What the bridge connects to: real Alpaca accounts, or the embedded simulated broker.

In simulated mode the broker runs on SIM_HOST:SIM_PORT and every account's endpoints point at
it. With SIM_DEMO_USERS the demo users ``admin``, ``alice`` and ``bob`` are created (if absent)
with their demo passwords, each with a fresh simulator account; accounts from ALPACA_* or
ACCOUNTS_FILE are registered with the simulator too, under their configured keys.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import SecretStr

from alpaca_bridge.accounts import (
    DEMO_USERS,
    BrokerAccount,
    Endpoints,
    alpaca_data_stream_url,
    alpaca_endpoints,
    configured_accounts,
)
from app.store import Store
from config.settings import Settings

if TYPE_CHECKING:
    from alpaca_bridge.simulator import SimulatedBroker


@dataclass(frozen=True, slots=True)
class BridgePlan:
    settings: Settings
    accounts: list[BrokerAccount]
    data_stream_url: str
    simulator: SimulatedBroker | None = None
    demo_logins: tuple[tuple[str, str], ...] = ()
    simulator_endpoints: Endpoints | None = None

    def endpoints(self, account: BrokerAccount) -> Endpoints:
        return self.simulator_endpoints or alpaca_endpoints(self.settings, account.paper)


async def plan_alpaca(settings: Settings) -> BridgePlan:
    return BridgePlan(settings, configured_accounts(settings), alpaca_data_stream_url(settings))


async def plan_simulated(settings: Settings, store: Store) -> BridgePlan:
    """Start the simulated broker (and demo users); the caller stops ``plan.simulator``."""
    from alpaca_bridge.simulator import SimulatedBroker  # only simulated mode needs it loaded

    accounts = configured_accounts(settings)
    taken = {account.username.lower() for account in accounts}
    logins: list[tuple[str, str]] = []
    if settings.sim_demo_users:
        for username, password, is_admin in DEMO_USERS:
            if username in taken:
                continue
            await store.ensure_user(username, password, is_admin=is_admin)
            accounts.append(
                BrokerAccount(
                    username,
                    SecretStr(f"SIM{secrets.token_hex(8).upper()}"),
                    SecretStr(secrets.token_urlsafe(24)),
                    paper=True,
                )
            )
            # An existing user keeps its own password: only advertise logins that work.
            if await store.authenticate(username, password) is not None:
                logins.append((username, password))
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
        demo_logins=tuple(logins),
        simulator_endpoints=Endpoints(broker.base_url, broker.trading_stream_url),
    )
