"""Property-based fuzzing of every parser: each input yields its value or its documented error,
never another exception (issue 10: one unhashable ``type`` crashed the connection)."""

from __future__ import annotations

import json
import os
from typing import Any
from unittest import mock

from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.faults import strategies as s
from tests.faults.targets import (
    ClientMessage,
    ErrorCode,
    MalformedUpdate,
    ProtocolError,
    Settings,
    decode_frame,
    describe_validation_error,
    fetch_snapshot,
    parse_account,
    parse_client_message,
    parse_order,
    parse_position,
    parse_trade_update,
)

# The longest error message a client can make the server write back (the echoed type or
# channel names are cut to 64 characters each).
MAX_ERROR_MESSAGE = 64 * 1024


def outcome(text: str) -> ClientMessage | ProtocolError:
    try:
        return parse_client_message(text)
    except ProtocolError as error:
        return error


def assert_documented(result: ClientMessage | ProtocolError) -> None:
    if isinstance(result, ProtocolError):
        assert result.code in set(ErrorCode)
        assert len(result.message) <= MAX_ERROR_MESSAGE
        frame = result.frame()
        assert frame["type"] == "error" and frame["code"] == str(result.code)
        return
    assert result.type in s.CLIENT_TYPES
    assert set(result.channels) <= set(s.CHANNELS)
    assert len(set(result.channels)) == len(result.channels)
    assert not set(result.unknown_channels) & set(s.CHANNELS)


# ---- /ws/portfolio client messages --------------------------------------------------------


@given(
    st.one_of(s.client_texts.filter(lambda t: '"type"' not in t), s.well_formed_client.map(s.dumps))
)
def test_client_frames_without_a_hostile_type_get_a_message_or_a_documented_error(
    text: str,
) -> None:
    assert_documented(outcome(text))


@given(s.client_texts)
@example('{"type": {}}')
@example('{"type": []}')
def test_every_client_frame_gets_a_message_or_a_documented_error(text: str) -> None:
    assert_documented(outcome(text))


@given(s.json_values.filter(lambda v: not isinstance(v, str) or v not in s.CLIENT_TYPES))
@example({})
@example([])
def test_any_type_that_is_not_one_of_the_four_is_unknown_type(kind: Any) -> None:
    result = outcome(s.dumps({"type": kind, "channels": ["positions"]}))
    assert isinstance(result, ProtocolError) and result.code is ErrorCode.UNKNOWN_TYPE


@given(s.json_values.filter(lambda v: not isinstance(v, dict)))
def test_json_that_is_not_an_object_is_invalid_message(value: Any) -> None:
    result = outcome(s.dumps(value))
    assert isinstance(result, ProtocolError) and result.code is ErrorCode.INVALID_MESSAGE


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


@given(st.text(max_size=200).filter(_not_json))
def test_text_that_is_not_json_is_invalid_json(text: str) -> None:
    result = outcome(text)
    assert isinstance(result, ProtocolError) and result.code is ErrorCode.INVALID_JSON


@given(s.deep_nesting)
def test_deep_nesting_is_an_error_at_any_depth(text: str) -> None:
    # Too deep for the decoder is invalid_json; shallower, a list or an object without a type.
    result = outcome(text)
    assert isinstance(result, ProtocolError)
    assert result.code in (
        ErrorCode.INVALID_JSON,
        ErrorCode.INVALID_MESSAGE,
        ErrorCode.UNKNOWN_TYPE,
    )


@given(
    st.sampled_from(("subscribe", "unsubscribe")),
    st.lists(st.one_of(st.sampled_from(s.CHANNELS), st.text(max_size=80)), max_size=8),
)
def test_known_channels_apply_and_unknown_ones_are_reported_once_each(
    kind: str, channels: list[str]
) -> None:
    result = outcome(s.dumps({"type": kind, "channels": channels}))
    assert isinstance(result, ClientMessage)
    assert set(result.channels) == set(channels) & set(s.CHANNELS)
    assert set(result.unknown_channels) == {c[:64] for c in channels if c not in s.CHANNELS}


# ---- Alpaca trade_updates frames ----------------------------------------------------------


@given(st.one_of(s.trade_update_frames, s.binary_junk))
def test_every_broker_frame_decodes_to_objects_or_nothing(frame: str | bytes) -> None:
    objects = decode_frame(frame)
    assert isinstance(objects, list) and all(isinstance(o, dict) for o in objects)


@given(s.trade_update_frames)
def test_every_trade_update_parses_or_is_malformed_never_another_error(frame: str | bytes) -> None:
    for envelope in decode_frame(frame):
        try:
            update = parse_trade_update(envelope.get("data"))
        except MalformedUpdate:
            continue
        assert update.order.id and isinstance(update.event, str) and update.event
        assert update.dedup_key[0] in ("execution", "order")


@given(s.well_formed_update)
def test_a_well_formed_update_always_parses(data: dict[str, Any]) -> None:
    update = parse_trade_update(json.loads(s.dumps(data)))
    assert update.order.id == data["order"]["id"]
    assert update.execution_id == data["execution_id"]


# ---- REST rows the reconciliation reads ---------------------------------------------------


def _as_rest(value: Any) -> Any:
    # The REST client decodes with the standard library, not orjson.
    return json.loads(json.dumps(value))


@given(s.orders)
def test_every_rest_order_parses_or_is_malformed(row: Any) -> None:
    try:
        order = parse_order(_as_rest(row))
    except MalformedUpdate:
        return
    assert order.id and order.filled_qty.is_finite()


@given(s.positions)
def test_every_rest_position_parses_or_is_malformed(row: Any) -> None:
    try:
        position = parse_position(_as_rest(row))
    except MalformedUpdate:
        return
    assert position.symbol and position.qty.is_finite()


@given(s.accounts)
def test_every_rest_account_parses_or_is_malformed(row: Any) -> None:
    try:
        account = parse_account(_as_rest(row))
    except MalformedUpdate:
        return
    assert account.cash.is_finite() and account.buying_power.is_finite()


class RestRows:
    """A TradingClient stand-in that answers every call with the rows it was given."""

    def __init__(self, orders: list[Any], account: Any, positions: list[Any]) -> None:
        self._orders = [_as_rest(o) for o in orders]
        self._account = _as_rest(account)
        self._positions = [_as_rest(p) for p in positions]

    def get_orders(self, _request: object) -> list[Any]:
        return self._orders

    def get_order_by_id(self, order_id: str) -> Any:
        return next(
            (o for o in self._orders if isinstance(o, dict) and o.get("id") == order_id), {}
        )

    def get_account(self) -> Any:
        return self._account

    def get_all_positions(self) -> list[Any]:
        return self._positions


@given(
    st.lists(s.well_formed_order, max_size=4, unique_by=lambda o: o["id"]),
    st.lists(s.orders, max_size=4),
    st.randoms(use_true_random=False),
    s.accounts,
    st.lists(s.positions, max_size=3),
)
@example(
    [],
    [{"id": "not-a-uuid", "symbol": 7}, {"symbol": "AAPL"}],
    None,
    {"cash": "1"},
    [{"qty": "1"}],
)
def test_reconciliation_skips_bad_rest_records_and_keeps_the_good_ones(
    good: list[dict[str, Any]],
    bad: list[Any],
    shuffle: Any,
    account: Any,
    positions: list[Any],
) -> None:
    rows = [*good, *bad]
    if shuffle is not None:
        shuffle.shuffle(rows)
    snapshot = fetch_snapshot(RestRows(rows, account, positions), [], None)  # type: ignore[arg-type]
    assert {o.id for o in snapshot.orders} >= {o["id"] for o in good}
    for position in snapshot.positions:
        assert position.qty.is_finite()


# ---- Settings from any environment --------------------------------------------------------

FIELDS = sorted(Settings.model_fields)
SECRETS = ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "METRICS_TOKEN")


@given(st.dictionaries(s.env_names(FIELDS), s.env_values, max_size=8))
def test_any_environment_gives_settings_or_one_line_naming_the_variable(
    env: dict[str, str],
) -> None:
    with mock.patch.dict(os.environ, env, clear=True):
        try:
            Settings(_env_file=None)  # type: ignore[call-arg]
        except ValidationError as error:
            line = describe_validation_error(error)
        else:
            return
    assert line.startswith("invalid configuration: ") and "\n" not in line
    assert any(field.upper() in line for field in FIELDS), line
    for name, value in env.items():
        if name.upper() in SECRETS and len(value) >= 8:
            assert value not in line, f"{name} echoed"
