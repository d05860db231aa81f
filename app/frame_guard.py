"""Refuses unmasked client frames (RFC 6455 §5.1: "a server MUST close the connection upon
receiving a frame that is not masked", with 1002).

aiohttp's frame reader (3.14) reads the mask bit but accepts frames without it, and it cannot
be told otherwise. So the upgraded socket's protocol is wrapped: every chunk read from the
client is walked frame header by frame header (skipping payloads, copying nothing) before
aiohttp parses it, and at the first unmasked frame nothing more is handed on and
``on_unmasked`` runs. Clients send a few frames a second, and a flood is cut off by the rate
limits, so the walk costs little.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

MASK_BIT: Final = 0x80
LENGTH_BITS: Final = 0x7F
LENGTH_16: Final = 126
LENGTH_64: Final = 127
MASK_KEY_BYTES: Final = 4


class MaskedFramesOnly(asyncio.Protocol):
    """Stands between the transport and aiohttp's protocol; forwards everything else as is."""

    __slots__ = ("_head", "_inner", "_refused", "_skip", "on_unmasked")

    def __init__(self, inner: asyncio.Protocol, on_unmasked: Callable[[], None]) -> None:
        self._inner = inner
        self.on_unmasked = on_unmasked
        self._skip = 0  # payload bytes of the current frame still to come
        self._head = b""  # the start of a frame header cut off at the end of the last chunk
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._all_masked(data):
            self._refused = True
            self.on_unmasked()
            return
        self._inner.data_received(data)

    def _all_masked(self, data: bytes) -> bool:
        size = len(data)
        if self._skip >= size:
            self._skip -= size
            return True
        pos, self._skip = self._skip, 0
        if self._head:
            data, pos = self._head + data[pos:], 0
            size = len(data)
            self._head = b""
        while pos < size:
            if size - pos < 2:
                self._head = data[pos:]
                return True
            second = data[pos + 1]
            if not second & MASK_BIT:
                return False
            length = second & LENGTH_BITS
            extended = 2 if length == LENGTH_16 else 8 if length == LENGTH_64 else 0
            header = 2 + extended + MASK_KEY_BYTES
            if size - pos < header:
                self._head = data[pos:]
                return True
            if extended:
                length = int.from_bytes(data[pos + 2 : pos + 2 + extended], "big")
            end = pos + header + length
            if end > size:
                self._skip = end - size
                return True
            pos = end
        return True

    # Everything else is the inner protocol's business.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def guard_masking(
    transport: asyncio.Transport, on_unmasked: Callable[[], None]
) -> MaskedFramesOnly | None:
    """Put the check in front of the transport's protocol (before the upgrade, so it sees the
    first frame); None where the transport cannot swap protocols."""
    inner = transport.get_protocol()
    if not isinstance(inner, asyncio.Protocol):
        return None
    guard = MaskedFramesOnly(inner, on_unmasked)
    transport.set_protocol(guard)
    return guard
