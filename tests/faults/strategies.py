"""Hypothesis strategies for hostile input: JSON of every shape, client frames, broker frames,
REST rows and environments.

Each strategy mixes three kinds of input: well-formed messages (so deep paths are reached),
well-formed messages with one field swapped for any JSON value, and raw junk.
"""

from __future__ import annotations

import string
from typing import Any

import orjson
from hypothesis import strategies as st

CLIENT_TYPES = ("subscribe", "unsubscribe", "ping", "resync")
CHANNELS = ("positions", "orders", "account")
# Big but finite: orjson refuses what does not fit a double, and huge integers as text must be
# handled without ``int()``'s digit limit being reached somewhere downstream.
HUGE_NUMBERS = ("1e308", "-1e308", "1e400", "9" * 400, "-" + "9" * 30, "1e-400", "0.1e999999")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=12), children, max_size=5),
    ),
    max_leaves=20,
)


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _replace(obj: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    return {**obj, key: value}


def _nested(depth: int, opener: str) -> str:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "{":
        return '{"a":' * depth + "1" + "}" * depth
    return opener * depth + closer * depth


deep_nesting = st.builds(_nested, st.integers(min_value=1, max_value=3000), st.sampled_from("[{"))

well_formed_client = st.one_of(
    st.builds(
        lambda kind, channels: {"type": kind, "channels": channels},
        st.sampled_from(("subscribe", "unsubscribe")),
        st.lists(st.one_of(st.sampled_from(CHANNELS), st.text(max_size=70)), max_size=6),
    ),
    st.builds(lambda kind: {"type": kind}, st.sampled_from(CLIENT_TYPES)),
)
client_objects = st.one_of(
    well_formed_client,
    st.builds(_replace, well_formed_client, st.just("type"), json_values),
    st.builds(_replace, well_formed_client, st.just("channels"), json_values),
    st.dictionaries(st.text(max_size=12), json_values, max_size=4),
)
# Every text frame a client might send: the object kinds above, any JSON value, raw junk.
client_texts = st.one_of(
    client_objects.map(dumps),
    json_values.map(dumps),
    st.text(max_size=200),
    deep_nesting,
    st.sampled_from(HUGE_NUMBERS).map(lambda n: '{"type": N}'.replace("N", n)),
    st.sampled_from(HUGE_NUMBERS).map(
        lambda n: '{"type":"subscribe","channels":[N]}'.replace("N", n)
    ),
)

# ---- Alpaca trade_updates ----------------------------------------------------------------

decimals_as_sent = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
    st.sampled_from(("0", "1", "-5", "")),
)
timestamps = st.one_of(
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.sampled_from(("2022-04-19T13:45:05.027690731-04:00", "not a time", "")),
)
well_formed_order = st.fixed_dictionaries(
    {
        "id": st.uuids().map(str),
        "client_order_id": st.uuids().map(str),
        "symbol": st.sampled_from(("AAPL", "MSFT", "BRK.B", "SOLUSD")),
        "side": st.sampled_from(("buy", "sell")),
        "type": st.sampled_from(("market", "limit")),
        "qty": decimals_as_sent,
        "filled_qty": decimals_as_sent,
        "filled_avg_price": st.one_of(st.none(), decimals_as_sent),
        "status": st.sampled_from(("new", "filled", "partially_filled", "canceled", "held")),
        "updated_at": timestamps,
        "submitted_at": timestamps,
    }
)
ORDER_KEYS = (
    "id",
    "client_order_id",
    "symbol",
    "side",
    "type",
    "qty",
    "filled_qty",
    "filled_avg_price",
    "status",
    "updated_at",
    "submitted_at",
)
orders = st.one_of(
    well_formed_order,
    st.builds(_replace, well_formed_order, st.sampled_from(ORDER_KEYS), json_values),
    json_values,
)
well_formed_update = st.fixed_dictionaries(
    {
        "event": st.sampled_from(("fill", "partial_fill", "new", "canceled", "replaced", "bogus")),
        "execution_id": st.uuids().map(str),
        "order": well_formed_order,
        "timestamp": timestamps,
        "price": decimals_as_sent,
        "qty": decimals_as_sent,
        "position_qty": decimals_as_sent,
    }
)
UPDATE_KEYS = ("event", "execution_id", "order", "timestamp", "price", "qty", "position_qty")
trade_update_data = st.one_of(
    well_formed_update,
    st.builds(_replace, well_formed_update, st.just("order"), orders),
    st.builds(_replace, well_formed_update, st.sampled_from(UPDATE_KEYS), json_values),
    json_values,
)
# What arrives in one websocket frame: an envelope, a list of them, junk, in text or bytes.
trade_update_frames = st.one_of(
    st.builds(lambda data: {"stream": "trade_updates", "data": data}, trade_update_data).map(dumps),
    st.lists(
        st.builds(lambda data: {"stream": "trade_updates", "data": data}, trade_update_data),
        max_size=3,
    ).map(dumps),
    json_values.map(dumps),
    st.text(max_size=100),
    deep_nesting,
    st.sampled_from(HUGE_NUMBERS).map(
        lambda n: (
            '{"stream":"trade_updates","data":{"event":"fill","price":N,"order":{"id":"x"}}}'.replace(
                "N", n
            )
        )
    ),
).flatmap(lambda text: st.sampled_from((text, text.encode())))
binary_junk = st.binary(max_size=64)

# ---- REST rows (decoded JSON, as the REST client hands them over) ------------------------

well_formed_position = st.fixed_dictionaries(
    {
        "symbol": st.sampled_from(("AAPL", "MSFT")),
        "qty": decimals_as_sent,
        "side": st.sampled_from(("long", "short")),
        "avg_entry_price": decimals_as_sent,
        "current_price": decimals_as_sent,
    }
)
positions = st.one_of(
    well_formed_position,
    st.builds(
        _replace,
        well_formed_position,
        st.sampled_from(("symbol", "qty", "side", "avg_entry_price", "current_price")),
        json_values,
    ),
    json_values,
)
well_formed_account = st.fixed_dictionaries(
    {"cash": decimals_as_sent, "buying_power": decimals_as_sent, "equity": decimals_as_sent}
)
accounts = st.one_of(
    well_formed_account,
    st.builds(
        _replace,
        well_formed_account,
        st.sampled_from(("cash", "buying_power", "equity")),
        json_values,
    ),
    json_values,
)

# ---- Environments ------------------------------------------------------------------------

# os.environ cannot hold NUL or lone surrogates; everything else is fair.
env_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30
)
interesting_values = st.sampled_from(
    (
        "",
        "0",
        "-1",
        "1",
        "65536",
        "true",
        "false",
        "yes",
        "nan",
        "inf",
        "1e3",
        "9" * 60,
        "1,2",
        "1,2,3",
        "a,b,c",
        "sqlite:///./x.db",
        "postgresql://u:p@h/db",
        "simulated",
        "alpaca",
        "json",
        "DEBUG",
        " ",
        "[]",
        "{}",
    )
)
env_values = st.one_of(interesting_values, env_text, st.integers().map(str))


def env_names(fields: list[str]) -> st.SearchStrategy[str]:
    """A settings field's variable name in any case, or some other variable."""
    return st.one_of(
        st.sampled_from(fields).flatmap(
            lambda f: st.sampled_from((f.upper(), f.lower(), f.title()))
        ),
        st.text(alphabet=string.ascii_uppercase + "_", min_size=1, max_size=12),
    )
