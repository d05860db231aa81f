"""Placing a market order through an account (the admin test trade, SPEC §6.5).

What can go wrong is told with the broker seam's errors (``app/broker.py``): the order refused
(``OrderRejected``) or the broker unreachable (``BrokerUnavailable``).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from app.broker import BrokerUnavailable, OrderRejected


def api_error_message(exc: APIError) -> str:
    """Alpaca's own ``message`` from an error body, else the error's text."""
    try:
        return str(exc.message)
    except (ValueError, KeyError, TypeError):
        return str(exc)


async def submit_market_order(
    client: TradingClient, symbol: str, side: str, qty: Decimal
) -> dict[str, Any]:
    """A market day order (alpaca-py is blocking: it runs in a worker thread); returns the
    order's id, client order id, symbol, side, type, qty, status and submission time."""
    if side not in ("buy", "sell"):
        raise OrderRejected(f"side must be buy or sell, not {side!r}")
    if not qty.is_finite() or qty <= 0:
        raise OrderRejected("qty must be a positive number")
    request = MarketOrderRequest(
        symbol=symbol.strip().upper(),
        qty=float(qty),  # alpaca-py's field is a float; JSON carries it as a number anyway
        side=OrderSide(side),
        time_in_force=TimeInForce.DAY,
    )
    try:
        order = await asyncio.to_thread(client.submit_order, request)
    except APIError as exc:
        raise OrderRejected(api_error_message(exc)) from None
    except requests.RequestException as exc:
        raise BrokerUnavailable(f"broker unreachable: {type(exc).__name__}") from None
    if not isinstance(order, dict):
        raise BrokerUnavailable("unexpected order response from the broker")
    return {
        "orderId": order.get("id"),
        "clientOrderId": order.get("client_order_id"),
        "symbol": order.get("symbol"),
        "side": order.get("side"),
        "type": order.get("type"),
        "qty": order.get("qty"),
        "status": order.get("status"),
        "submittedAt": order.get("submitted_at"),
    }
