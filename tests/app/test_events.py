"""The event contract (SPEC §3) is defined once: the type names and one TypedDict per payload."""

from __future__ import annotations

from typing import get_args

from app.events import EVENT_TYPES, PAYLOAD_TYPES, REQUIRED_FIELDS, EventType


def test_the_type_names_the_literal_and_the_payloads_agree() -> None:
    assert sorted(get_args(EventType)) == sorted(EVENT_TYPES)
    assert set(PAYLOAD_TYPES) == set(EVENT_TYPES) == set(REQUIRED_FIELDS)


def test_required_fields_are_the_typed_payloads_in_the_contracts_order() -> None:
    assert REQUIRED_FIELDS["trade:executed"] == (
        "userId", "tradeId", "orderId", "symbol", "side", "qty", "price", "positionQty", "event",
        "timestamp",
    )  # fmt: skip
    assert REQUIRED_FIELDS["position:closed"] == ("userId", "symbol", "closedAt")
    for kind, payload in PAYLOAD_TYPES.items():
        assert frozenset(REQUIRED_FIELDS[kind]) == payload.__required_keys__, kind
