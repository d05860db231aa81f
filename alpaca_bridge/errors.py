"""What can go wrong when the service asks the broker to do something (``place_order``).

The admin API answers them with 404, 422 and 503 respectively (``app/api.py``). Messages are
safe to show to an admin: they never contain keys or secrets.
"""

from __future__ import annotations

from alpaca.common.exceptions import APIError


class BrokerError(Exception):
    """A request to the broker that could not be carried out; the message says why."""


class UnknownAccount(BrokerError):
    """No broker account is configured for that username."""


class OrderRejected(BrokerError):
    """The broker refused the order (Alpaca's message), or it was invalid before sending."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached."""


def api_error_message(exc: APIError) -> str:
    """Alpaca's own ``message`` from an error body, else the error's text."""
    try:
        return str(exc.message)
    except (ValueError, KeyError, TypeError):
        return str(exc)
