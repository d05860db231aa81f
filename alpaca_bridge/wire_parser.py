"""What the broker tells us, parsed leniently into plain dataclasses with exact Decimals.

alpaca-py's own ``TradeUpdate`` turns ``price``/``qty``/``position_qty`` into floats and drops a
whole message when one enum value is new to it (research §1.3), so the stream and REST payloads
are parsed here instead: numbers stay ``Decimal``, unknown events and statuses are kept as
strings, and only an update without an order id is rejected. The same order parser reads REST
``/v2/orders`` rows, so stream and reconciliation agree on one shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from app.events import TERMINAL_STATUSES

FILL_EVENTS = frozenset({"fill", "partial_fill"})

# RFC 3339 with up to nanoseconds; Python keeps microseconds, so the tail is cut.
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


class MalformedUpdate(ValueError):
    """A broker message that cannot be understood at all (e.g. no order id)."""


def parse_decimal(value: object) -> Decimal | None:
    """An exact Decimal from a JSON string/number; None for null or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise MalformedUpdate(f"not a number: {value!r}")
    try:
        # str() first: a JSON float becomes its shortest repr, never binary noise.
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise MalformedUpdate(f"not a number: {value!r}") from exc
    if not number.is_finite():
        raise MalformedUpdate(f"not a finite number: {value!r}")
    return number


def parse_timestamp(value: object) -> datetime | None:
    """An aware UTC datetime from RFC 3339 (nanoseconds truncated); None if absent or invalid."""
    if not isinstance(value, str) or not value:
        return None
    match = _TIMESTAMP.match(value.strip())
    if match is None:
        return None
    whole, fraction, offset = match.groups()
    text = whole + (f".{fraction[:6].ljust(6, '0')}" if fraction else "")
    text += "+00:00" if offset in (None, "Z") else offset
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return None


def iso_utc(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a Z, the format of every time on the bus."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_from_epoch(seconds: float) -> str:
    return iso_utc(datetime.fromtimestamp(seconds, UTC))


def decimal_text(value: Decimal) -> str:
    """Plain positional notation (never ``1E+2``), as Alpaca writes numbers."""
    text = format(value, "f")
    return "0" if text in ("-0", "") else text


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class OrderState:
    """One order as the broker last described it (stream ``order`` object or REST row)."""

    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    qty: Decimal | None
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    status: str
    updated_at: str
    submitted_at: datetime | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class TradeUpdate:
    """One ``trade_updates`` message. ``qty``/``price`` are this execution's, not the order's."""

    event: str
    order: OrderState
    timestamp: datetime | None
    execution_id: str | None
    price: Decimal | None
    qty: Decimal | None
    position_qty: Decimal | None

    @property
    def is_fill(self) -> bool:
        return self.event in FILL_EVENTS

    @property
    def dedup_key(self) -> tuple[str, ...]:
        """Executions are unique by id; other events by (order, event, order version)."""
        if self.is_fill and self.execution_id:
            return ("execution", self.execution_id)
        return ("order", self.order.id, self.event, self.order.updated_at)


@dataclass(frozen=True, slots=True)
class PositionState:
    """One REST ``/v2/positions`` row; ``qty`` is signed (negative for shorts)."""

    symbol: str
    qty: Decimal
    avg_entry_price: Decimal
    current_price: Decimal | None


@dataclass(frozen=True, slots=True)
class AccountState:
    """The parts of REST ``/v2/account`` the portfolio needs."""

    cash: Decimal
    buying_power: Decimal
    equity: Decimal | None


def parse_order(data: object) -> OrderState:
    if not isinstance(data, Mapping) or not data.get("id"):
        raise MalformedUpdate("order without an id")
    return OrderState(
        id=str(data["id"]),
        client_order_id=_text(data, "client_order_id"),
        symbol=_text(data, "symbol"),
        side=_text(data, "side"),
        type=_text(data, "type") or _text(data, "order_type"),
        qty=parse_decimal(data.get("qty")),
        filled_qty=parse_decimal(data.get("filled_qty")) or Decimal(0),
        filled_avg_price=parse_decimal(data.get("filled_avg_price")),
        status=_text(data, "status"),
        updated_at=_text(data, "updated_at"),
        submitted_at=parse_timestamp(data.get("submitted_at")),
    )


def parse_trade_update(data: object) -> TradeUpdate:
    """The ``data`` object of a ``trade_updates`` frame; unknown events are kept as they are."""
    if not isinstance(data, Mapping):
        raise MalformedUpdate("trade update is not an object")
    event = data.get("event")
    if not isinstance(event, str) or not event:
        raise MalformedUpdate("trade update without an event")
    execution_id = data.get("execution_id")
    return TradeUpdate(
        event=event,
        order=parse_order(data.get("order")),
        timestamp=parse_timestamp(data.get("timestamp")),
        execution_id=str(execution_id) if execution_id else None,
        price=parse_decimal(data.get("price")),
        qty=parse_decimal(data.get("qty")),
        position_qty=parse_decimal(data.get("position_qty")),
    )


def parse_position(data: object) -> PositionState:
    if not isinstance(data, Mapping) or not data.get("symbol"):
        raise MalformedUpdate("position without a symbol")
    qty = parse_decimal(data.get("qty")) or Decimal(0)
    # Alpaca documents `side`; make the sign follow it whichever way `qty` is written.
    if data.get("side") == "short" and qty > 0:
        qty = -qty
    return PositionState(
        symbol=str(data["symbol"]),
        qty=qty,
        avg_entry_price=parse_decimal(data.get("avg_entry_price")) or Decimal(0),
        current_price=parse_decimal(data.get("current_price")),
    )


def parse_account(data: object) -> AccountState:
    if not isinstance(data, Mapping):
        raise MalformedUpdate("account is not an object")
    cash = parse_decimal(data.get("cash")) or Decimal(0)
    return AccountState(
        cash=cash,
        buying_power=parse_decimal(data.get("buying_power")) or cash,
        equity=parse_decimal(data.get("equity")),
    )


def decode_frame(data: str | bytes) -> list[dict[str, Any]]:
    """The JSON objects in one websocket frame; [] for anything else (e.g. a ``b"\\x01"`` ping)."""
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return []
    if isinstance(decoded, dict):
        return [decoded]
    if isinstance(decoded, list):
        return [item for item in decoded if isinstance(item, dict)]
    return []
