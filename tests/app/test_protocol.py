"""The `/ws/portfolio` wire contract (pure): client message parsing, error codes, and the
batch message spliced per connection."""

from __future__ import annotations

import pytest

from app.protocol import (
    UNSUPPORTED_FRAME,
    ErrorCode,
    PreparedBatch,
    ProtocolError,
    batch_message,
    parse_client_message,
    unknown_channel_error,
)


@pytest.mark.parametrize("kind", ["ping", "resync"])
def test_simple_messages_parse(kind: str) -> None:
    message = parse_client_message(f'{{"type":"{kind}"}}')
    assert message.type == kind and message.channels == ()


def test_subscribe_splits_known_and_unknown_channels_without_duplicates() -> None:
    message = parse_client_message(
        '{"type":"subscribe","channels":["positions","trades","orders","positions","trades"]}'
    )
    assert message.type == "subscribe"
    assert message.channels == ("positions", "orders")
    assert message.unknown_channels == ("trades",)


def test_unsubscribe_parses() -> None:
    message = parse_client_message('{"type":"unsubscribe","channels":["account"]}')
    assert (message.type, message.channels) == ("unsubscribe", ("account",))


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", ErrorCode.INVALID_JSON),
        ("", ErrorCode.INVALID_JSON),
        ("[1, 2]", ErrorCode.INVALID_MESSAGE),
        ('"subscribe"', ErrorCode.INVALID_MESSAGE),
        ('{"type":"explode"}', ErrorCode.UNKNOWN_TYPE),
        ('{"channels":["positions"]}', ErrorCode.UNKNOWN_TYPE),
        ('{"type":42}', ErrorCode.UNKNOWN_TYPE),
        ('{"type":"subscribe"}', ErrorCode.INVALID_MESSAGE),
        ('{"type":"subscribe","channels":"positions"}', ErrorCode.INVALID_MESSAGE),
        ('{"type":"subscribe","channels":[1]}', ErrorCode.INVALID_MESSAGE),
    ],
)
def test_bad_messages_raise_the_error_to_report(text: str, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(text)
    assert caught.value.code == code


def test_error_frames_carry_code_and_message() -> None:
    frame = unknown_channel_error(("trades",)).frame()
    assert frame["type"] == "error" and frame["code"] == "unknown_channel"
    assert "trades" in frame["message"] and "positions" in frame["message"]
    assert UNSUPPORTED_FRAME.frame()["code"] == "unsupported_frame"


def test_a_huge_unknown_type_is_truncated_in_the_error() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message('{"type":"' + "x" * 10_000 + '"}')
    assert len(caught.value.message) < 200


def test_prepared_batches_splice_each_connections_seq() -> None:
    body = {"positions": [], "eventCount": 1, "ts": "t"}
    batch = PreparedBatch.of(body)
    assert batch.deliveries == 1
    assert batch.frame(7) == b'{"type":"batch","seq":7,"positions":[],"eventCount":1,"ts":"t"}'
    assert batch.frame(8) == batch_message(8, body)  # the same bytes as encoding it whole
