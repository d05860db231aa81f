"""The JSON shapes Alpaca puts on the wire, built from the simulator's books.

Every number is a string, every id a UUID, every time RFC 3339 with nanoseconds, and every
enum a value alpaca-py 0.44.0 accepts, because its pydantic models drop a whole message over
one unknown value (research §1.3, §5).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from alpaca_bridge.simulator.ledger import AccountBook, Execution, Holding, PriceOf
from alpaca_bridge.simulator.market import Listing
from alpaca_bridge.simulator.orders import SimOrder

Json = dict[str, Any]
NEW_YORK = ZoneInfo("America/New_York")


def rfc3339(at_ns: int) -> str:
    """``2026-01-06T15:00:00.123456789Z``: Alpaca's nanosecond UTC timestamps."""
    seconds, nanos = divmod(at_ns, 1_000_000_000)
    whole = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{nanos:09d}Z"


def activity_id(at_ns: int, execution_id: str) -> str:
    """``<yyyymmddHHMMSSmmm>::<execution_id>``, the shape of Alpaca's FILL activity ids."""
    moment = datetime.fromtimestamp(at_ns / 1e9, UTC)
    return f"{moment:%Y%m%d%H%M%S}{at_ns // 1_000_000 % 1000:03d}::{execution_id}"


def number(value: Decimal, places: int | None = None) -> str:
    """Positional notation (never ``1E+1``); rounded to ``places`` and trailing zeros dropped."""
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
        if value == value.to_integral_value():
            value = value.quantize(Decimal(1))
        else:
            value = value.normalize()
    text = format(value, "f")
    return "0" if text == "-0" else text


def money(value: Decimal) -> str:
    """Dollar amounts to the cent, as account and position values are shown."""
    text = format(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN), "f")
    return "0.00" if text == "-0.00" else text


def _optional_time(at_ns: int | None) -> str | None:
    return rfc3339(at_ns) if at_ns is not None else None


def order_json(order: SimOrder) -> Json:
    """A REST ``Order`` / the ``order`` object of a trade update."""
    request = order.request
    average = order.filled_avg_price
    return {
        "id": order.id,
        "client_order_id": request.client_order_id,
        "created_at": rfc3339(order.submitted_ns),
        "updated_at": rfc3339(order.updated_ns),
        "submitted_at": rfc3339(order.submitted_ns),
        "filled_at": _optional_time(order.filled_ns),
        "expired_at": None,
        "expires_at": None,
        "canceled_at": _optional_time(order.canceled_ns),
        "failed_at": None,
        "replaced_at": None,
        "replaced_by": None,
        "replaces": None,
        "asset_id": order.asset_id,
        "symbol": request.symbol,
        "asset_class": "us_equity",
        "notional": None,
        "qty": number(request.qty),
        "filled_qty": number(order.filled_qty),
        "filled_avg_price": number(average, 7) if average is not None else None,
        "order_class": "",
        "order_type": request.type,
        "type": request.type,
        "side": request.side,
        "position_intent": order.position_intent,
        "time_in_force": request.time_in_force,
        "limit_price": number(request.limit_price, 7) if request.limit_price is not None else None,
        "stop_price": None,
        "status": order.status,
        "extended_hours": False,
        "legs": None,
        "trail_percent": None,
        "trail_price": None,
        "hwm": None,
        "source": None,
        "subtag": None,
    }


def trade_update(
    event: str, order: SimOrder, at_ns: int, execution_id: str, execution: Execution | None = None
) -> Json:
    """The ``trade_updates`` envelope; fills add this execution's price, qty and position."""
    data: Json = {
        "event": event,
        "execution_id": execution_id,
        "timestamp": rfc3339(at_ns),
        "order": order_json(order),
    }
    if execution is not None:
        data.update(
            price=number(execution.price, 7),
            qty=number(execution.qty),
            position_qty=number(execution.position_qty),
        )
    return {"stream": "trade_updates", "data": data}


def position_json(
    holding: Holding, listing: Listing, price: Decimal, qty_available: Decimal
) -> Json:
    """A REST ``Position``; qty, market value and cost basis are negative for a short."""
    market_value = holding.qty * price
    cost_basis = holding.qty * holding.avg_entry_price
    unrealized = market_value - cost_basis
    plpc = unrealized / abs(cost_basis) if cost_basis else Decimal(0)
    lastday = listing.start_price
    intraday = holding.qty * (price - lastday)
    change = (price - lastday) / lastday
    return {
        "asset_id": holding.asset_id,
        "symbol": holding.symbol,
        "exchange": listing.exchange,
        "asset_class": "us_equity",
        "asset_marginable": True,
        "avg_entry_price": number(holding.avg_entry_price, 7),
        "qty": number(holding.qty),
        "qty_available": number(qty_available),
        "side": "long" if holding.qty > 0 else "short",
        "market_value": money(market_value),
        "cost_basis": money(cost_basis),
        "unrealized_pl": money(unrealized),
        "unrealized_plpc": number(plpc, 10),
        "unrealized_intraday_pl": money(intraday),
        "unrealized_intraday_plpc": number(intraday / abs(holding.qty * lastday), 10),
        "current_price": number(price, 7),
        "lastday_price": number(lastday, 7),
        "change_today": number(change, 10),
    }


def account_json(book: AccountBook, price_of: PriceOf) -> Json:
    """A REST ``TradeAccount`` of a cash account (multiplier 1)."""
    values = book.valuation(price_of)
    equity = money(values.equity)
    gross = values.long_market_value - values.short_market_value
    return {
        "id": book.id,
        "account_number": book.account_number,
        "status": "ACTIVE",
        "crypto_status": "ACTIVE",
        "currency": "USD",
        "buying_power": money(values.buying_power),
        "regt_buying_power": money(values.buying_power),
        "daytrading_buying_power": "0.00",
        "effective_buying_power": money(values.buying_power),
        "non_marginable_buying_power": money(values.buying_power),
        "options_buying_power": money(values.buying_power),
        "bod_dtbp": "0.00",
        "cash": money(values.cash),
        "accrued_fees": "0.00",
        "pending_transfer_in": "0.00",
        "pending_transfer_out": "0.00",
        "portfolio_value": equity,
        "pattern_day_trader": False,
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "created_at": rfc3339(book.opened_ns),
        "trade_suspended_by_user": False,
        "multiplier": "1",
        "shorting_enabled": book.shorting,
        "equity": equity,
        "last_equity": money(book.last_equity),
        "long_market_value": money(values.long_market_value),
        "short_market_value": money(values.short_market_value),
        "position_market_value": money(gross),
        "initial_margin": money(gross),
        "maintenance_margin": money(gross * Decimal("0.25")),
        "last_maintenance_margin": "0.00",
        "sma": "0.00",
        "daytrade_count": 0,
        "balance_asof": datetime.fromtimestamp(book.opened_ns / 1e9, NEW_YORK).date().isoformat(),
        "crypto_tier": 0,
        "options_approved_level": 0,
        "options_trading_level": 0,
    }


def fill_activity_json(execution: Execution) -> Json:
    """A ``GET /v2/account/activities/FILL`` row (no ``account_id`` on the Trading API)."""
    return {
        "id": activity_id(execution.at_ns, execution.id),
        "activity_type": "FILL",
        "transaction_time": rfc3339(execution.at_ns),
        "type": execution.event,
        "price": number(execution.price, 7),
        "qty": number(execution.qty),
        "side": execution.side,
        "symbol": execution.symbol,
        "leaves_qty": number(execution.leaves_qty),
        "order_id": execution.order_id,
        "cum_qty": number(execution.cum_qty),
        "order_status": execution.order_status,
    }


def fill_json(execution: Execution) -> Json:
    """One execution as the control API lists it (not an Alpaca shape): what a test needs
    to check that every fill was counted once."""
    return {
        "execution_id": execution.id,
        "order_id": execution.order_id,
        "event": execution.event,
        "symbol": execution.symbol,
        "side": execution.side,
        "qty": number(execution.qty),
        "price": number(execution.price, 7),
        "position_qty": number(execution.position_qty),
        "timestamp": rfc3339(execution.at_ns),
    }


def clock_json(now: datetime) -> Json:
    """``GET /v2/clock``. The simulated market never closes, so ``is_open`` is always true."""
    local = now.astimezone(NEW_YORK)
    close = local.replace(hour=16, minute=0, second=0, microsecond=0)
    while close <= local or close.weekday() >= 5:
        close = (close + timedelta(days=1)).replace(hour=16)
    opening = (close + timedelta(days=1)).replace(hour=9, minute=30)
    while opening.weekday() >= 5:
        opening += timedelta(days=1)
    return {
        "timestamp": local.isoformat(),
        "is_open": True,
        "next_open": opening.isoformat(),
        "next_close": close.isoformat(),
    }
