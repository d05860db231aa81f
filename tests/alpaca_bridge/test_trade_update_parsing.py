"""Parsing trade_updates frames and REST rows leniently, with exact Decimals."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from alpaca_bridge.wire_parser import (
    MalformedUpdate,
    decode_frame,
    iso_utc,
    parse_account,
    parse_position,
    parse_timestamp,
    parse_trade_update,
)

# Alpaca's documented example (research §1.5), trimmed to the fields that matter.
DOCS_FILL = {
    "stream": "trade_updates",
    "data": {
        "event": "fill",
        "execution_id": "2f63ea93-423d-4169-b3f6-3fdafc10c418",
        "order": {
            "client_order_id": "4642fd68-d59a-47d7-a9ac-e22f536828d1",
            "created_at": "2022-04-19T13:45:04.981350886-04:00",
            "filled_avg_price": "105.8988475",
            "filled_qty": "1790.86",
            "id": "a5be8f5e-fdfa-41f5-a644-7a74fe947a8f",
            "order_class": "",
            "order_type": "market",
            "qty": "1790.86",
            "side": "sell",
            "status": "filled",
            "submitted_at": "2022-04-19T13:45:04.980944666-04:00",
            "symbol": "SOLUSD",
            "time_in_force": "gtc",
            "type": "market",
            "updated_at": "2022-04-19T13:45:05.027690731-04:00",
        },
        "position_qty": "0",
        "price": "105.8988475",
        "qty": "1790.86",
        "timestamp": "2022-04-19T17:45:05.024916716Z",
    },
}


@pytest.mark.parametrize("frame", [orjson.dumps(DOCS_FILL), orjson.dumps(DOCS_FILL).decode()])
def test_text_and_binary_frames_decode_the_same(frame: str | bytes) -> None:
    [envelope] = decode_frame(frame)
    update = parse_trade_update(envelope["data"])
    assert update.price == Decimal("105.8988475")
    assert update.qty == Decimal("1790.86")
    assert update.position_qty == 0
    assert update.order.filled_qty == Decimal("1790.86")
    assert update.is_fill
    assert update.dedup_key == ("execution", "2f63ea93-423d-4169-b3f6-3fdafc10c418")


@pytest.mark.parametrize("frame", [b"\x01", b"", "not json", b"\xff\xfe", "42", '"text"'])
def test_non_json_frames_are_ignored(frame: str | bytes) -> None:
    assert decode_frame(frame) == []


def test_a_list_frame_yields_its_objects() -> None:
    assert decode_frame(b'[{"stream":"a"}, 3, {"stream":"b"}]') == [
        {"stream": "a"},
        {"stream": "b"},
    ]


def test_nanosecond_timestamps_with_offsets_become_utc_microseconds() -> None:
    moment = parse_timestamp("2022-04-19T13:45:05.027690731-04:00")
    assert moment == datetime(2022, 4, 19, 17, 45, 5, 27690, tzinfo=UTC)
    assert iso_utc(moment) == "2022-04-19T17:45:05.027Z"
    assert parse_timestamp("2026-01-04T10:30:00Z") == datetime(2026, 1, 4, 10, 30, tzinfo=UTC)
    assert parse_timestamp("yesterday") is None
    assert parse_timestamp(None) is None


def test_unknown_events_and_statuses_are_kept() -> None:
    update = parse_trade_update(
        {
            "event": "trade_bust",
            "timestamp": "2026-01-04T10:30:00Z",
            "reason": "exchange",
            "order": {"id": "o-1", "status": "brand_new_status", "symbol": "AAPL"},
        }
    )
    assert update.event == "trade_bust"
    assert update.order.status == "brand_new_status"
    assert not update.is_fill
    assert update.dedup_key == ("order", "o-1", "trade_bust", "")


def test_missing_optional_fields_are_tolerated() -> None:
    update = parse_trade_update({"event": "accepted", "order": {"id": "o-2"}})
    assert update.timestamp is None
    assert update.execution_id is None
    assert update.price is None
    assert update.order.filled_qty == 0
    assert update.order.qty is None


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"order": {"id": "x"}},
        {"event": "fill"},
        {"event": "fill", "order": {}},
        {"event": "fill", "order": {"id": "x"}, "price": "abc"},
        {"event": "fill", "order": {"id": "x"}, "qty": "NaN"},
        {"event": "fill", "order": {"id": "x"}, "qty": True},
    ],
)
def test_unusable_updates_are_rejected_with_a_clear_error(data: object) -> None:
    with pytest.raises(MalformedUpdate):
        parse_trade_update(data)


def test_json_numbers_are_read_through_their_decimal_text() -> None:
    update = parse_trade_update({"event": "fill", "order": {"id": "x"}, "price": 0.1, "qty": 3})
    assert update.price == Decimal("0.1")
    assert update.qty == Decimal(3)


def test_rest_rows() -> None:
    short = parse_position(
        {
            "symbol": "AAPL",
            "qty": "5",
            "side": "short",
            "avg_entry_price": "100.0",
            "current_price": "99.5",
        }
    )
    assert short.qty == -5
    assert short.current_price == Decimal("99.5")
    account = parse_account({"cash": "1000.25", "buying_power": "2000.5", "equity": "1500"})
    assert (account.cash, account.buying_power) == (Decimal("1000.25"), Decimal("2000.5"))
    assert parse_account({"cash": "7"}).buying_power == 7
