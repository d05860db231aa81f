"""A simulated Alpaca-compatible broker: REST, ``trade_updates`` and market data on loopback.

The service's embedded default broker and the fake its tests run against; the real alpaca-py
clients talk to it unchanged (``url_override`` = ``base_url`` / ``trading_stream_url`` /
``data_stream_url``).
"""

from alpaca_bridge.simulator.broker import SimulatedBroker
from alpaca_bridge.simulator.ledger import SimAccount
from alpaca_bridge.simulator.orders import SimApiError

__all__ = ["SimAccount", "SimApiError", "SimulatedBroker"]
