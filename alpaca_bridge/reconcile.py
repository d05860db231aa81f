"""REST truth for one account: what reconciliation compares the ledger against.

Alpaca's trade_updates stream has no replay (research §3.1), so after every (re)connect the
account, its open orders, every order we still believed open, and its positions are fetched
through alpaca-py's ``TradingClient`` (synchronous ``requests``: call ``fetch_snapshot`` in a
worker thread; each request is bounded by the REST timeout, see ``rest_client``). The client is
built with ``raw_data=True`` so numbers stay strings and become ``Decimal`` in our parser rather
than floats.

Orders submitted since the gap began come from ``GET /v2/orders?status=all&after=`` (the most
recent ones on the first connect); orders we believed open are re-fetched one by one because
``after`` filters on submission time, so an order submitted before a gap and filled during it is
not in that list. Orders are read first and positions last, so a fill the order list shows is
always in the positions too (the ledger then counts it once).

A record that cannot be read (a bad number, a missing field, an order id alpaca-py refuses to
look up because it is not a UUID) is skipped and reported in ``BrokerSnapshot.skipped``; the
rest of the snapshot still counts, and what could not be read is left as the ledger has it
(an unreadable position is not taken for a closed one).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest

from alpaca_bridge.accounts import BrokerAccount
from alpaca_bridge.rest_client import BrokerRestClient
from alpaca_bridge.wire_parser import (
    AccountState,
    MalformedUpdate,
    OrderState,
    PositionState,
    parse_account,
    parse_order,
    parse_position,
)

T = TypeVar("T")

# Alpaca's maximum page size for GET /v2/orders.
ORDERS_PAGE_LIMIT = 500
# Closed orders loaded on the first connect, so the portfolio shows some history at once.
RECENT_ORDERS = 50


# Fields without which a REST record means nothing to the portfolio.
_REQUIRED = {
    "order": ("id", "symbol", "side", "status"),
    "position": ("symbol", "qty", "avg_entry_price"),
    "account": ("cash",),
}
# Answers about one order that say "this record is bad", not "the broker is down".
_RECORD_STATUSES = frozenset({400, 404, 422})


@dataclass(frozen=True, slots=True)
class SkippedRecord:
    kind: str  # order | position | account
    ident: str  # the order id or symbol; "?" when even that is missing
    reason: str


@dataclass(frozen=True, slots=True)
class BrokerSnapshot:
    account: AccountState | None  # None: unreadable, keep the figures we have
    positions: list[PositionState]
    orders: list[OrderState]
    unreadable_symbols: frozenset[str] = frozenset()
    skipped: tuple[SkippedRecord, ...] = ()


@dataclass(slots=True)
class _Reader:
    """Parses REST records one at a time, setting aside the ones it cannot read."""

    skipped: list[SkippedRecord] = field(default_factory=list)
    unreadable_symbols: set[str] = field(default_factory=set)

    def skip(self, kind: str, ident: str, reason: str) -> None:
        # The reason may quote the broker's bytes; a log line need not carry all of them.
        self.skipped.append(SkippedRecord(kind, ident, reason[:200]))

    def one(self, kind: str, row: object, parse: Callable[[object], T]) -> T | None:
        ident = _ident(row, "symbol" if kind == "position" else "id")
        try:
            if not isinstance(row, Mapping):
                raise MalformedUpdate(f"not an object but {type(row).__name__}")
            missing = [name for name in _REQUIRED[kind] if row.get(name) in (None, "")]
            if missing:
                raise MalformedUpdate(f"missing {', '.join(missing)}")
            return parse(row)
        except (ValueError, TypeError, ArithmeticError) as exc:  # MalformedUpdate is a ValueError
            self.skip(kind, ident, str(exc) or type(exc).__name__)
            if kind == "position" and ident != "?":
                self.unreadable_symbols.add(ident)
            return None

    def many(self, kind: str, rows: object, parse: Callable[[object], T]) -> list[T]:
        parsed = (self.one(kind, row, parse) for row in _array(rows))
        return [item for item in parsed if item is not None]


def trading_client(account: BrokerAccount, api_url: str, timeout_s: float) -> TradingClient:
    """The account's REST client: every request bounded by ``timeout_s`` (see rest_client)."""
    return BrokerRestClient(account, api_url, timeout_s)


def fetch_snapshot(
    client: TradingClient,
    believed_open: Iterable[str],
    since: datetime | None,
) -> BrokerSnapshot:
    """Blocking: orders (submitted since ``since`` or the most recent, the open ones, each one
    believed open), then the account, then positions. Later reads of an order win."""
    read = _Reader()
    recent = (
        GetOrdersRequest(status=QueryOrderStatus.ALL, limit=RECENT_ORDERS)
        if since is None
        else GetOrdersRequest(
            status=QueryOrderStatus.ALL, after=since, direction=Sort.ASC, limit=ORDERS_PAGE_LIMIT
        )
    )
    orders = {o.id: o for o in read.many("order", client.get_orders(recent), parse_order)}
    rows = client.get_orders(
        GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=ORDERS_PAGE_LIMIT)
    )
    open_now = read.many("order", rows, parse_order)
    orders.update((order.id, order) for order in open_now)
    open_ids = {order.id for order in open_now}
    for order_id in dict.fromkeys(believed_open):
        known = orders.get(order_id)
        if order_id in open_ids or (known is not None and known.terminal):
            continue  # its latest state was just read
        order = _refetch(client, order_id, read)
        if order is not None:
            orders[order_id] = order
    account = read.one("account", client.get_account(), parse_account)
    positions = read.many("position", client.get_all_positions(), parse_position)
    return BrokerSnapshot(
        account,
        positions,
        list(orders.values()),
        frozenset(read.unreadable_symbols),
        tuple(read.skipped),
    )


def _refetch(client: TradingClient, order_id: str, read: _Reader) -> OrderState | None:
    """The broker's latest word on one order; None when it has none we can use."""
    try:
        uuid.UUID(order_id)
    except ValueError:
        # alpaca-py refuses to send the request (ValueError), so it could never succeed.
        read.skip("order", order_id, "id is not a UUID, so it cannot be looked up")
        return None
    try:
        row = client.get_order_by_id(order_id)
    except APIError as exc:
        if exc.status_code == 404:
            return None  # unknown to the broker: nothing to correct
        if exc.status_code in _RECORD_STATUSES:
            read.skip("order", order_id, f"HTTP {exc.status_code} when looked up")
            return None
        raise
    return read.one("order", row, parse_order)


def _ident(row: object, key: str) -> str:
    value = row.get(key) if isinstance(row, Mapping) else None
    return str(value)[:64] if value not in (None, "") else "?"


def _array(value: object) -> list[Any]:
    # raw_data=True hands back the decoded JSON; alpaca-py annotates it as a dict regardless.
    if not isinstance(value, list):
        raise MalformedUpdate(f"expected a JSON array from the broker, got {type(value).__name__}")
    return value
