"""Placing a market order through an account (the admin test trade, SPEC §6.5).

What can go wrong is told with the broker seam's errors (``app/broker.py``), which the admin API
answers with 404, 422 and 503 (``app/api.py``). A refusal by the broker (4xx: invalid, forbidden,
insufficient buying power) is ``OrderRejected``; a broker that fails (5xx, 429, bad credentials),
cannot be reached or does not answer within the REST timeout is ``BrokerUnavailable``. Messages
are safe to show to an admin: they never contain keys or secrets.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from alpaca_bridge.rest_client import RestTimeout
from app.broker import BrokerUnavailable, OrderRejected

# Answers that say the broker (or the account's access to it) failed, not that it refused.
_UNAVAILABLE_STATUSES = frozenset({401, 429})


def api_error_message(exc: APIError) -> str:
    """Alpaca's own ``message`` from an error body, else the error's text."""
    try:
        return str(exc.message)
    except (ValueError, KeyError, TypeError):
        return str(exc)


async def submit_market_order(
    client: TradingClient, symbol: str, side: str, qty: Decimal, timeout_s: float
) -> dict[str, Any]:
    """A market day order (alpaca-py is blocking: it runs in a worker thread) answered within
    about ``timeout_s``; returns the order's id, client order id, symbol, side, type, qty,
    status and submission time."""
    if side not in ("buy", "sell"):
        raise OrderRejected(f"side must be buy or sell, not {side!r}")
    if not qty.is_finite() or qty <= 0:
        raise OrderRejected("qty must be a positive number")
    # Ours, so an order whose answer never came can still be found at the broker.
    client_order_id = str(uuid.uuid4())
    request = MarketOrderRequest(
        symbol=symbol.strip().upper(),
        qty=float(qty),  # alpaca-py's field is a float; JSON carries it as a number anyway
        side=OrderSide(side),
        time_in_force=TimeInForce.DAY,
        client_order_id=client_order_id,
    )
    try:
        # The client bounds the request itself; this bounds a wait for a free worker thread too
        # (an order still queued when it expires is never sent).
        async with asyncio.timeout(timeout_s):
            order = await asyncio.to_thread(client.submit_order, request)
    except TimeoutError:
        raise BrokerUnavailable(
            f"broker timeout (no answer within {timeout_s:g}s); the order may still be placed "
            f"(clientOrderId={client_order_id})"
        ) from None
    except APIError as exc:
        status = exc.status_code
        if status is None or status >= 500 or status in _UNAVAILABLE_STATUSES:
            message = api_error_message(exc)
            raise BrokerUnavailable(f"broker error (HTTP {status}): {message}") from None
        raise OrderRejected(api_error_message(exc)) from None
    except RestTimeout as exc:
        # The request may have reached the broker: say so rather than imply it was not placed.
        raise BrokerUnavailable(
            f"broker timeout ({exc}); the order may still be placed "
            f"(clientOrderId={client_order_id})"
        ) from None
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
