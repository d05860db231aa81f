"""Properties of the client-message parser (SPEC §4, bad input): whatever a client sends, the
parser answers a ClientMessage or the ProtocolError to report, never another exception; and
every ``type`` that is not one of the four message names, whatever its JSON kind, is
``unknown_type``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.protocol import (
    CHANNELS,
    CLIENT_TYPES,
    ClientMessage,
    ErrorCode,
    ProtocolError,
    parse_client_message,
)

# Reproducible and bounded: the same inputs on every run, a few hundred per property.
PARSER = settings(derandomize=True, database=None, max_examples=300, deadline=None)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=12,
)
# Everything a ``type`` may hold but one of the four message names.
not_a_message_type = json_values.filter(lambda v: not (isinstance(v, str) and v in CLIENT_TYPES))


def parse(value: Any) -> Any:
    return parse_client_message(orjson.dumps(value).decode())


def outcome(text: str) -> ClientMessage | ProtocolError:
    """The parsed message, or the error it raised (any other exception fails the test)."""
    try:
        return parse_client_message(text)
    except ProtocolError as error:
        return error


@PARSER
@given(not_a_message_type, st.dictionaries(st.text(max_size=10), json_values, max_size=3))
@example({}, {})
@example([], {})
@example({"type": "ping"}, {})
@example(["subscribe"], {"channels": ["positions"]})
def test_any_type_that_is_not_a_message_name_is_unknown_type(
    kind: Any, others: dict[str, Any]
) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse({**others, "type": kind})
    assert caught.value.code == ErrorCode.UNKNOWN_TYPE
    assert len(caught.value.message) < 200  # the echo of the client's value is cut short


@PARSER
@given(st.text(max_size=200))
def test_any_text_parses_or_raises_the_error_to_report(text: str) -> None:
    result = outcome(text)
    if isinstance(result, ProtocolError):
        assert result.code in ErrorCode
    else:
        assert result.type in CLIENT_TYPES


@PARSER
@given(st.sampled_from(sorted(CLIENT_TYPES)), json_values)
def test_any_channels_value_parses_or_is_invalid_message(kind: str, channels: Any) -> None:
    result = outcome(orjson.dumps({"type": kind, "channels": channels}).decode())
    if isinstance(result, ProtocolError):
        assert result.code == ErrorCode.INVALID_MESSAGE
        assert kind in ("subscribe", "unsubscribe")
    else:
        assert set(result.channels) <= set(CHANNELS)
        assert not set(result.unknown_channels) & set(CHANNELS)
