"""Every parser and entry point the fault suite attacks, imported in one place.

When a module is renamed or split, this file is the one line to change; the tests import the
names below, never the packages directly.
"""

from __future__ import annotations

from alpaca_bridge.reconcile import fetch_snapshot
from alpaca_bridge.simulator import SimulatedBroker
from alpaca_bridge.wire_parser import (
    MalformedUpdate,
    decode_frame,
    parse_account,
    parse_order,
    parse_position,
    parse_trade_update,
)
from app.protocol import ClientMessage, CloseCode, ErrorCode, ProtocolError, parse_client_message
from config.settings import Settings, describe_validation_error

__all__ = [
    "ClientMessage",
    "CloseCode",
    "ErrorCode",
    "MalformedUpdate",
    "ProtocolError",
    "Settings",
    "SimulatedBroker",
    "decode_frame",
    "describe_validation_error",
    "fetch_snapshot",
    "parse_account",
    "parse_client_message",
    "parse_order",
    "parse_position",
    "parse_trade_update",
]
