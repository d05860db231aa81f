"""alpaca-py's ``TradingClient`` with a time limit on every request and no retry sleeps.

As shipped it sends requests with no timeout, so a broker that accepts a connection and never
answers holds the calling worker thread (and whatever awaits it) forever, and it answers a 429
or 504 by sleeping 3 s and retrying up to three times (research §2.4). Here every request
carries ``timeout_s`` (for connecting, and for each wait on the answer) and is tried once: the
callers decide what comes next (reconciliation backs off and retries; a test trade reports the
broker unavailable to the admin at once).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests
from alpaca.trading.client import TradingClient

from alpaca_bridge.accounts import BrokerAccount


class RestTimeout(requests.Timeout):
    """The broker did not answer a REST request within the configured time."""


class BrokerRestClient(TradingClient):
    """A ``TradingClient`` (``raw_data=True``: numbers stay strings) bounded by ``timeout_s``."""

    def __init__(self, account: BrokerAccount, api_url: str, timeout_s: float) -> None:
        super().__init__(
            account.api_key.get_secret_value(),
            account.secret_key.get_secret_value(),
            paper=account.paper,
            raw_data=True,
            url_override=api_url,
        )
        self.timeout_s = timeout_s

    def _one_request(self, method: str, url: str, opts: dict[str, Any], retry: int) -> Any:
        # retry=0: alpaca-py raises the 429/504 as an APIError instead of sleeping to retry it.
        try:
            return super()._one_request(method, url, {**opts, "timeout": self.timeout_s}, 0)
        except requests.Timeout as exc:
            where = f"{method.upper()} {urlsplit(url).path}"
            raise RestTimeout(f"no answer within {self.timeout_s:g}s: {where}") from exc
