"""Orders as the simulated broker keeps them, and the validation of new ones.

Validation answers the way Alpaca does: HTTP 422 (code 40010001) for a malformed request and
403 (code 40310000) for one the account cannot afford; the REST layer turns
:class:`SimApiError` into that JSON body, and the in-process ``submit_order`` raises it as is.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

OPEN_STATUSES = frozenset({"new", "partially_filled", "accepted", "pending_new"})
TIME_IN_FORCE = frozenset({"day", "gtc", "opg", "cls", "ioc", "fok"})
ORDER_TYPES = frozenset({"market", "limit"})
SIDES = frozenset({"buy", "sell"})
MAX_QTY_PLACES = 9  # Alpaca accepts fractional shares to nine decimal places


class SimApiError(Exception):
    """A request Alpaca would refuse (invalid, unaffordable, unknown or final order):
    ``status`` is the HTTP status, ``code`` Alpaca's error code."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


def invalid(message: str) -> SimApiError:
    return SimApiError(422, 40010001, message)


def forbidden(message: str) -> SimApiError:
    return SimApiError(403, 40310000, message)


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A syntactically valid order request; affordability is checked by the account book."""

    symbol: str
    side: str
    qty: Decimal
    type: str
    time_in_force: str
    limit_price: Decimal | None
    client_order_id: str


def _decimal(value: object, name: str) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise invalid(f"{name} is invalid")
    try:
        # str() first so a JSON float such as 1.1 means 1.1, not its binary neighbour.
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise invalid(f"{name} is invalid") from exc
    if not number.is_finite():
        raise invalid(f"{name} is invalid")
    return number


def parse_order_request(body: Mapping[str, Any]) -> OrderRequest:
    """Validate a ``POST /v2/orders`` body (qty/limit_price as JSON numbers or strings)."""
    symbol = body.get("symbol")
    if not isinstance(symbol, str) or not symbol.strip():
        raise invalid("symbol is required")
    side = body.get("side")
    if side not in SIDES:
        raise invalid(f"invalid side: {side!r}")
    order_type = body.get("type", body.get("order_type"))
    if order_type not in ORDER_TYPES:
        raise invalid(f"invalid order type: {order_type!r}")
    tif = body.get("time_in_force")
    if tif not in TIME_IN_FORCE:
        raise invalid(f"invalid time_in_force: {tif!r}")
    if body.get("notional") not in (None, ""):
        raise invalid("notional orders are not supported by this broker")
    qty = _decimal(body.get("qty"), "qty")
    if qty is None:
        raise invalid("qty is required")
    if qty <= 0:
        raise invalid("qty must be > 0")
    exponent = qty.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_QTY_PLACES:
        raise invalid(f"qty must have at most {MAX_QTY_PLACES} decimal places")
    limit_price = _decimal(body.get("limit_price"), "limit_price")
    if order_type == "limit" and (limit_price is None or limit_price <= 0):
        raise invalid("limit_price must be > 0 for limit orders")
    if order_type == "market":
        limit_price = None
    client_order_id = body.get("client_order_id") or str(uuid.uuid4())
    if not isinstance(client_order_id, str) or len(client_order_id) > 128:
        raise invalid("client_order_id must be a string of at most 128 characters")
    return OrderRequest(
        symbol=symbol.strip().upper(),
        side=str(side),
        # "10.0" and "10" are the same order; keep one spelling for the wire.
        qty=qty.quantize(Decimal(1)) if qty == qty.to_integral_value() else qty.normalize(),
        type=str(order_type),
        time_in_force=str(tif),
        limit_price=limit_price,
        client_order_id=client_order_id,
    )


@dataclass(slots=True)
class SimOrder:
    """An order's mutable state; timestamps are epoch nanoseconds (``None`` until it happens)."""

    request: OrderRequest
    asset_id: str
    submitted_ns: int
    position_intent: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: str = "new"
    filled_qty: Decimal = Decimal(0)
    filled_notional: Decimal = Decimal(0)
    updated_ns: int = 0
    filled_ns: int | None = None
    canceled_ns: int | None = None

    def __post_init__(self) -> None:
        self.updated_ns = self.updated_ns or self.submitted_ns

    @property
    def symbol(self) -> str:
        return self.request.symbol

    @property
    def side(self) -> str:
        return self.request.side

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def leaves_qty(self) -> Decimal:
        return self.request.qty - self.filled_qty if self.is_open else Decimal(0)

    @property
    def filled_avg_price(self) -> Decimal | None:
        return self.filled_notional / self.filled_qty if self.filled_qty else None

    @property
    def signed_leaves(self) -> Decimal:
        """Remaining quantity with the sign of its effect on the position."""
        return self.leaves_qty if self.side == "buy" else -self.leaves_qty
