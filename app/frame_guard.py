"""What the client sends, before aiohttp parses it: unmasked frames refused, and the tail of a
close the server started.

Masking (RFC 6455 §5.1: "a server MUST close the connection upon receiving a frame that is not
masked", with 1002): aiohttp's frame reader (3.14) reads the mask bit but accepts frames
without it, and it cannot be told otherwise. So the upgraded socket's protocol is wrapped:
every chunk read from the client is walked frame header by frame header (skipping payloads,
copying nothing) before aiohttp parses it, and at the first unmasked frame nothing more is
handed on and ``on_unmasked`` runs. Clients send a few frames a second, and a flood is cut off
by the rate limits, so the walk costs little.

Closing: once the server has sent its close frame and its FIN, whatever the client still sends
is dropped unparsed, and the connection ends when the client closes its side. Closing the
socket while a client is still sending (a flood it has not stopped yet) would make the kernel
answer with a reset, and a reset discards the close frame the client has not read yet; so a
client that keeps sending is given up to ``linger_max_s`` to stop, one that has gone silent
only ``grace_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

MASK_BIT: Final = 0x80
LENGTH_BITS: Final = 0x7F
LENGTH_16: Final = 126
LENGTH_64: Final = 127
MASK_KEY_BYTES: Final = 4


class FrameGuard(asyncio.Protocol):
    """Stands between the transport and aiohttp's protocol; forwards everything else as is."""

    __slots__ = ("_done", "_head", "_heard_at", "_inner", "_refused", "_skip", "on_unmasked")

    def __init__(self, inner: asyncio.Protocol, on_unmasked: Callable[[], object]) -> None:
        self._inner = inner
        self.on_unmasked = on_unmasked
        self._skip = 0  # payload bytes of the current frame still to come
        self._head = b""  # the start of a frame header cut off at the end of the last chunk
        self._refused = False  # nothing more goes to aiohttp
        self._done: asyncio.Future[None] | None = None  # set while lingering: the client's end
        self._heard_at = 0.0

    def data_received(self, data: bytes) -> None:
        if self._done is not None:
            self._heard_at = time.monotonic()
            return
        if self._refused:
            return
        if not self._all_masked(data):
            self._refused = True
            self.on_unmasked()
            return
        self._inner.data_received(data)

    async def linger(self, transport: asyncio.Transport, grace_s: float, max_s: float) -> None:
        """After the server's close frame and FIN: until the client closes its side, for at
        most ``grace_s`` of silence or ``max_s`` in all; then the connection is dropped."""
        self._refused = True
        done = self._done = asyncio.get_running_loop().create_future()
        self._heard_at = started = time.monotonic()
        # aiohttp stops reading while its queue of parsed messages is full (a flood fills
        # it); what comes now is dropped here, so reading goes on.
        if not transport.is_reading():
            transport.resume_reading()
        try:
            while not done.done():
                now = time.monotonic()
                if now - self._heard_at >= grace_s or now - started >= max_s:
                    break
                wait = min(grace_s - (now - self._heard_at), max_s - (now - started))
                await asyncio.wait([done], timeout=wait)
        finally:
            if not done.done():
                transport.abort()

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

    def _ended(self) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    # Everything else is the inner protocol's business.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()
        self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        if self._done is not None:
            self._ended()
            return None  # the client closed its side after ours: the transport closes
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def guard_frames(
    transport: asyncio.Transport, on_unmasked: Callable[[], object]
) -> FrameGuard | None:
    """Put the guard in front of the transport's protocol (before the upgrade, so it sees the
    first frame); None where the transport cannot swap protocols."""
    inner = transport.get_protocol()
    if not isinstance(inner, asyncio.Protocol):
        return None
    guard = FrameGuard(inner, on_unmasked)
    transport.set_protocol(guard)
    return guard
