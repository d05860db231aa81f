"""``portfolio-stream simulate``: the simulated broker on its own, shared by several nodes.

A cluster needs one broker every node talks to, as it would to Alpaca: each node's embedded
simulator would be a broker of its own, with its own fills and prices. This runs the same
``SimulatedBroker`` on SIM_HOST:SIM_PORT with every configured account (ACCOUNTS_FILE, and the
ALPACA_API_KEY/ALPACA_SECRET_KEY single account) under its configured keys, so nodes started
with BROKER=alpaca, the same accounts and the URLs of its start-up line reach it unchanged.
With SIM_CONTROL_TOKEN set, tests in other processes steer and observe it over HTTP
(control_api.py).
"""

from __future__ import annotations

import asyncio
import signal

from alpaca_bridge.accounts import configured_accounts
from alpaca_bridge.simulator.broker import SimulatedBroker
from app.broker import BrokerConfigError
from config.logging import get_logger
from config.settings import Settings

log = get_logger()

# The start-up line's message; its fields are the node settings that point at this broker.
READY_MESSAGE = "[SimulatedBroker] Standalone broker ready"
CONTROL_MESSAGE = "[SimulatedBroker] Control API enabled"


class NoAccounts(BrokerConfigError):
    """Nothing to simulate: no account is configured."""


def standalone_broker(settings: Settings) -> SimulatedBroker:
    """A broker with every configured account registered, not yet started.

    Raises ``AccountsConfigError`` for an accounts file that cannot work and ``NoAccounts`` when
    neither ACCOUNTS_FILE nor ALPACA_API_KEY/ALPACA_SECRET_KEY is set."""
    accounts = configured_accounts(settings)
    if not accounts:
        raise NoAccounts(
            "portfolio-stream simulate needs accounts: set ACCOUNTS_FILE "
            "(or ALPACA_API_KEY, ALPACA_SECRET_KEY and ALPACA_USERNAME)"
        )
    broker = SimulatedBroker(
        host=settings.sim_host,
        port=settings.sim_port,
        tick_interval_s=settings.sim_tick_interval_ms / 1000,
        order_interval_s=settings.sim_order_interval_s,
        seed=settings.sim_seed,
        feed=settings.alpaca_data_feed,
        dead_data_slot_hold_s=settings.sim_data_slot_hold_s,
        control_token=token.get_secret_value() if (token := settings.sim_control_token) else None,
    )
    for account in accounts:
        broker.add_account(
            account.api_key.get_secret_value(),
            account.secret_key.get_secret_value(),
            label=account.username,
        )
    return broker


async def run_standalone(broker: SimulatedBroker, stop: asyncio.Event | None = None) -> None:
    """Serve ``broker`` until SIGTERM/SIGINT (or ``stop`` is set), then close every socket."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        await broker.start()
        try:
            log.info(
                READY_MESSAGE,
                ALPACA_API_URL=broker.base_url,
                ALPACA_STREAM_URL=broker.trading_stream_url,
                ALPACA_DATA_STREAM_URL=broker.data_stream_url,
                accounts=len(broker.accounts),
            )
            if broker.control_url is not None:
                log.info(CONTROL_MESSAGE, url=broker.control_url)
            await stop.wait()
            log.info("[SimulatedBroker] Stopping", url=broker.base_url)
        finally:
            await broker.stop()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    log.info("[SimulatedBroker] Stopped")
