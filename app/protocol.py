"""The `/ws/portfolio` wire protocol: client message parsing and error/close codes (pure).

WebSocket error and close codes are defined here, once; the HTTP API's are in app/errors.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import orjson

from app.batching import CHANNELS


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_CHANNEL = "unknown_channel"
    UNSUPPORTED_FRAME = "unsupported_frame"


class CloseCode:
    NORMAL: Final = 1000
    GOING_AWAY: Final = 1001
    POLICY_VIOLATION: Final = 1008
    MESSAGE_TOO_BIG: Final = 1009
    TRY_AGAIN_LATER: Final = 1013
    # Application range: nothing heard from the client within HEARTBEAT_TIMEOUT_MS.
    HEARTBEAT_TIMEOUT: Final = 4000


class CloseReason:
    LIMIT: Final = "Maximum connections exceeded"
    RATE: Final = "Rate limit exceeded"
    SHUTDOWN: Final = "Server shutting down"
    HEARTBEAT: Final = "Heartbeat timeout"


CLIENT_TYPES: Final = frozenset({"subscribe", "unsubscribe", "ping", "resync"})


@dataclass(frozen=True, slots=True)
class ClientMessage:
    type: str
    channels: tuple[str, ...] = ()
    unknown_channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProtocolError(Exception):
    code: ErrorCode
    message: str

    def frame(self) -> dict[str, Any]:
        return {"type": "error", "code": str(self.code), "message": self.message}


def parse_client_message(text: str) -> ClientMessage:
    """Parse one client text frame; raises ProtocolError with the code to report."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError(ErrorCode.INVALID_JSON, "Message is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "Message must be a JSON object")
    kind = data.get("type")
    if kind not in CLIENT_TYPES:
        shown = kind if isinstance(kind, str) else repr(kind)
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"Unknown message type: {shown[:64]}")
    if kind not in ("subscribe", "unsubscribe"):
        return ClientMessage(kind)
    raw = data.get("channels")
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "channels must be a list of strings")
    known = tuple(dict.fromkeys(c for c in raw if c in CHANNELS))
    unknown = tuple(dict.fromkeys(c[:64] for c in raw if c not in CHANNELS))
    return ClientMessage(kind, known, unknown)


def unknown_channel_error(channels: tuple[str, ...]) -> ProtocolError:
    return ProtocolError(
        ErrorCode.UNKNOWN_CHANNEL,
        f"Unknown channel(s): {', '.join(channels)}; available: {', '.join(CHANNELS)}",
    )


UNSUPPORTED_FRAME = ProtocolError(
    ErrorCode.UNSUPPORTED_FRAME, "Binary frames are not supported; send JSON text frames"
)
