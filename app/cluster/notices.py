"""Change notices: what the write script publishes on a user's channel, and its decoding.

A notice is one JSON array, built by the script around the payload it stored, so the payload
is byte-for-byte what the publisher encoded (money stays exact decimal strings):
``[stateEpoch, offset, eventType, payload, emittedAt, quiet]`` — emittedAt in wall-clock
seconds of the publishing node, quiet 1 for a price tick whose log lines are DEBUG.

One notice is not an event: ``state:reset`` (payload ``{"userId"}``) says the user's whole
state was rewritten under a new epoch; a reader re-reads it rather than applying anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from app.events import (
    EVENT_TYPES,
    ORDER_UPDATED,
    POSITION_CLOSED,
    POSITION_UPDATED,
    TERMINAL_STATUSES,
    Event,
    validate_payload,
)

# The hash field each state-changing event type writes; the others write none.
_FIELD_OF = {POSITION_UPDATED: "symbol", POSITION_CLOSED: "symbol", ORDER_UPDATED: "orderId"}


STATE_RESET: Final = "state:reset"


class BadNotice(ValueError):
    """A message on a user channel that is not a well-formed notice for that user."""


@dataclass(frozen=True, slots=True)
class Notice:
    """``event`` is None for a ``state:reset`` notice."""

    epoch: str
    offset: int
    event: Event | None


def decode_notice(data: bytes, user_id: str) -> Notice:
    """Parse and check one notice published on ``user_id``'s channel."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise BadNotice(f"not JSON: {error}") from None
    if not isinstance(body, list) or len(body) != 6:
        raise BadNotice("not a six-element array")
    epoch, offset, kind, payload, emitted_at, quiet = body
    if not isinstance(epoch, str) or not epoch:
        raise BadNotice("epoch is not a non-empty string")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 1:
        raise BadNotice("offset is not a positive integer")
    if not isinstance(payload, dict) or (kind not in EVENT_TYPES and kind != STATE_RESET):
        raise BadNotice(f"unknown event type {kind!r}")
    if kind == STATE_RESET:
        if payload.get("userId") != user_id:
            raise BadNotice("payload belongs to another user")
        return Notice(epoch, offset, None)
    try:
        validate_payload(kind, payload)
    except ValueError as error:
        raise BadNotice(str(error)) from None
    if payload["userId"] != user_id:
        raise BadNotice("payload belongs to another user")
    if not isinstance(emitted_at, int | float) or isinstance(emitted_at, bool):
        raise BadNotice("emittedAt is not a number")
    return Notice(epoch, offset, Event(kind, payload, float(emitted_at), quiet == 1))


def state_field(event: Event) -> str:
    """The hash field a state-changing event writes: its symbol or order id ("" for none)."""
    name = _FIELD_OF.get(event.type)
    return "" if name is None else str(event.payload[name])


def script_args(event: Event) -> tuple[str, bytes, str, str, str, str]:
    """Event-dependent arguments of the write script: type, payload, field, terminal,
    emitted-at, quiet."""
    payload = event.payload
    terminal = "1" if payload.get("status") in TERMINAL_STATUSES else "0"
    return (
        event.type,
        orjson.dumps(payload),
        state_field(event),
        terminal,
        f"{event.emitted_at:.6f}",
        "1" if event.quiet else "0",
    )


def decode_json_object(data: bytes | str) -> dict[str, Any]:
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise BadNotice("stored state is not a JSON object")
    return value
