"""The `/ws/portfolio` wire contract (pure): channels, client message parsing, the messages the
server sends, and the error and close codes.

Everything a browser can see on the socket is defined here, once; the stream, the batcher and
the portfolio state import it, never the reverse. The HTTP API's error codes are in
app/errors.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import orjson

POSITIONS: Final = "positions"
ORDERS: Final = "orders"
ACCOUNT: Final = "account"
# In the contract's order: ``connected`` lists them so, and ``subscribed`` keeps it.
CHANNELS: Final = (POSITIONS, ORDERS, ACCOUNT)

# Client text echoed back in an error message is cut to this many characters, so a hostile
# client cannot make the server send its own megabytes back.
MAX_ECHOED_CHARS: Final = 64


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_CHANNEL = "unknown_channel"
    UNSUPPORTED_FRAME = "unsupported_frame"


class CloseCode:
    NORMAL: Final = 1000
    GOING_AWAY: Final = 1001
    # A frame that breaks RFC 6455, e.g. one from the client that is not masked (§5.1).
    PROTOCOL_ERROR: Final = 1002
    # Never sent on the wire (RFC 6455 §7.4.1): recorded when the peer vanished without a
    # close frame.
    ABNORMAL: Final = 1006
    POLICY_VIOLATION: Final = 1008
    MESSAGE_TOO_BIG: Final = 1009
    # The server failed while answering this connection (a bug; the traceback is logged).
    INTERNAL_ERROR: Final = 1011
    TRY_AGAIN_LATER: Final = 1013
    # Application range: nothing heard from the client within HEARTBEAT_TIMEOUT_MS.
    HEARTBEAT_TIMEOUT: Final = 4000
    # Application range: the session the socket was opened with has ended (logged out,
    # expired, its user removed); reconnecting cannot help until the user signs in again.
    SESSION_ENDED: Final = 4001


class CloseReason:
    LIMIT: Final = "Maximum connections exceeded"
    RATE: Final = "Rate limit exceeded"
    SHUTDOWN: Final = "Server shutting down"
    HEARTBEAT: Final = "Heartbeat timeout"
    UNMASKED: Final = "Client frames must be masked"
    TOO_BIG: Final = "Message too big"
    INTERNAL: Final = "Internal error"


# The reason sent with SESSION_ENDED, by why the session ended (``app.sessions.RevokedBecause``).
SESSION_END_REASONS: Final = {
    "logout": "Session ended: logged out",
    "expired": "Session expired",
    "user_removed": "User removed",
    "revoked": "Session revoked",
}


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
    # Checked as a string first: a list or an object cannot even be looked up in a set.
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        shown = kind if isinstance(kind, str) else orjson.dumps(kind).decode()
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"Unknown message type: {shown[:MAX_ECHOED_CHARS]}"
        )
    if kind not in ("subscribe", "unsubscribe"):
        return ClientMessage(kind)
    raw = data.get("channels")
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "channels must be a list of strings")
    known = tuple(dict.fromkeys(c for c in raw if c in CHANNELS))
    unknown = tuple(dict.fromkeys(c[:MAX_ECHOED_CHARS] for c in raw if c not in CHANNELS))
    return ClientMessage(kind, known, unknown)


def unknown_channel_error(channels: tuple[str, ...]) -> ProtocolError:
    return ProtocolError(
        ErrorCode.UNKNOWN_CHANNEL,
        f"Unknown channel(s): {', '.join(channels)}; available: {', '.join(CHANNELS)}",
    )


UNSUPPORTED_FRAME = ProtocolError(
    ErrorCode.UNSUPPORTED_FRAME, "Binary frames are not supported; send JSON text frames"
)


# Server messages


def public_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """An event payload as sent to its owner's browser (userId is implied by the connection)."""
    return {key: value for key, value in payload.items() if key != "userId"}


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


def connected_message(
    connection_id: str,
    user_id: str,
    *,
    batch_window_ms: int,
    heartbeat_interval_ms: int,
    server_time: str,
) -> bytes:
    return encode(
        {
            "type": "connected",
            "connectionId": connection_id,
            "userId": user_id,
            "channels": list(CHANNELS),
            "batchWindowMs": batch_window_ms,
            "heartbeatIntervalMs": heartbeat_interval_ms,
            "serverTime": server_time,
        }
    )


def subscribed_message(channels: Sequence[str]) -> bytes:
    return encode({"type": "subscribed", "channels": list(channels)})


def pong_message(server_time: str) -> bytes:
    return b'{"type":"pong","serverTime":"' + server_time.encode() + b'"}'


def error_message(error: ProtocolError) -> bytes:
    return encode(error.frame())


def snapshot_message(seq: int, body: dict[str, Any]) -> bytes:
    return encode({"type": "snapshot", "seq": seq, **body})


def batch_message(seq: int, body: dict[str, Any]) -> bytes:
    return encode({"type": "batch", "seq": seq, **body})


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch serialized once for every connection sharing a channel set; ``seq`` is spliced
    in when it is sent. ``body`` is the JSON object without its type and seq."""

    body: bytes
    deliveries: int

    @classmethod
    def of(cls, body: dict[str, Any]) -> PreparedBatch:
        return cls(encode(body), body["eventCount"])

    def frame(self, seq: int) -> bytes:
        return b'{"type":"batch","seq":%d,%s' % (seq, self.body[1:])
