"""REST truth for one account: what reconciliation compares the ledger against.

Alpaca's trade_updates stream has no replay (research §3.1), so after every (re)connect the
account, its open orders, every order we still believed open, and its positions are fetched
through alpaca-py's ``TradingClient`` (synchronous ``requests``: call ``fetch_snapshot`` in a
worker thread). The client is built with ``raw_data=True`` so numbers stay strings and become
``Decimal`` in our parser rather than floats.

Orders submitted since the gap began come from ``GET /v2/orders?status=all&after=`` (the most
recent ones on the first connect); orders we believed open are re-fetched one by one because
``after`` filters on submission time, so an order submitted before a gap and filled during it is
not in that list. Orders are read first and positions last, so a fill the order list shows is
always in the positions too (the ledger then counts it once).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest

from alpaca_bridge.accounts import BrokerAccount
from alpaca_bridge.wire_parser import (
    AccountState,
    MalformedUpdate,
    OrderState,
    PositionState,
    parse_account,
    parse_order,
    parse_position,
)

# Alpaca's maximum page size for GET /v2/orders.
ORDERS_PAGE_LIMIT = 500
# Closed orders loaded on the first connect, so the portfolio shows some history at once.
RECENT_ORDERS = 50


@dataclass(frozen=True, slots=True)
class BrokerSnapshot:
    account: AccountState
    positions: list[PositionState]
    orders: list[OrderState]


def trading_client(account: BrokerAccount, api_url: str) -> TradingClient:
    return TradingClient(
        account.api_key.get_secret_value(),
        account.secret_key.get_secret_value(),
        paper=account.paper,
        raw_data=True,
        url_override=api_url,
    )


def fetch_snapshot(
    client: TradingClient,
    believed_open: Iterable[str],
    since: datetime | None,
) -> BrokerSnapshot:
    """Blocking: orders (submitted since ``since`` or the most recent, the open ones, each one
    believed open), then the account, then positions. Later reads of an order win."""
    recent = (
        GetOrdersRequest(status=QueryOrderStatus.ALL, limit=RECENT_ORDERS)
        if since is None
        else GetOrdersRequest(
            status=QueryOrderStatus.ALL, after=since, direction=Sort.ASC, limit=ORDERS_PAGE_LIMIT
        )
    )
    orders = {order.id: order for order in map(parse_order, _array(client.get_orders(recent)))}
    rows = client.get_orders(
        GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=ORDERS_PAGE_LIMIT)
    )
    open_now = [parse_order(row) for row in _array(rows)]
    orders.update((order.id, order) for order in open_now)
    open_ids = {order.id for order in open_now}
    for order_id in dict.fromkeys(believed_open):
        known = orders.get(order_id)
        if order_id in open_ids or (known is not None and known.terminal):
            continue  # its latest state was just read
        try:
            orders[order_id] = parse_order(client.get_order_by_id(order_id))
        except APIError as exc:
            if exc.status_code != 404:
                raise
    account = parse_account(client.get_account())
    positions = [parse_position(row) for row in _array(client.get_all_positions())]
    return BrokerSnapshot(account, positions, list(orders.values()))


def _array(value: object) -> list[Any]:
    # raw_data=True hands back the decoded JSON; alpaca-py annotates it as a dict regardless.
    if not isinstance(value, list):
        raise MalformedUpdate(f"expected a JSON array from the broker, got {type(value).__name__}")
    return value
