"""RFC 6455 frames as a server writes them straight to the transport (pure).

Only what the server writes itself: unfragmented text frames, pings and pongs (the raw-write
fast path) and its close frame, unmasked as every server-to-client frame must be (§5.1).
Everything else goes through aiohttp.
"""

from __future__ import annotations

from typing import Final

FIN: Final = 0x80
OPCODE_TEXT: Final = 0x1
OPCODE_CLOSE: Final = 0x8
OPCODE_PING: Final = 0x9
OPCODE_PONG: Final = 0xA
# Payload lengths (§5.2): up to 125 fit in the second byte; 126 announces a 16-bit length and
# 127 a 64-bit one.
MAX_SHORT_LENGTH: Final = 125
LENGTH_16: Final = 126
LENGTH_64: Final = 127

_TEXT: Final = FIN | OPCODE_TEXT
_TEXT_16: Final = bytes((_TEXT, LENGTH_16))
_TEXT_64: Final = bytes((_TEXT, LENGTH_64))

PING_FRAME: Final = bytes((FIN | OPCODE_PING, 0))  # empty payload (§5.5.2)
# Control frames carry at most 125 bytes (§5.5): a close frame's code takes two of them.
MAX_CLOSE_REASON_BYTES: Final = MAX_SHORT_LENGTH - 2


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame carrying ``payload`` (UTF-8 JSON)."""
    size = len(payload)
    if size <= MAX_SHORT_LENGTH:
        return bytes((_TEXT, size)) + payload
    if size < 1 << 16:
        return _TEXT_16 + size.to_bytes(2, "big") + payload
    return _TEXT_64 + size.to_bytes(8, "big") + payload


def pong_frame(payload: bytes) -> bytes:
    """The answer to a ping, echoing its payload (§5.5.3; a ping's is at most 125 bytes)."""
    return bytes((FIN | OPCODE_PONG, len(payload))) + payload


def close_frame(code: int, reason: str) -> bytes:
    """A close frame with ``code`` and ``reason`` (cut to fit a control frame)."""
    body = code.to_bytes(2, "big") + reason.encode()[:MAX_CLOSE_REASON_BYTES]
    return bytes((FIN | OPCODE_CLOSE, len(body))) + body
