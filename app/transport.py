"""The seam between the stream and one client's socket, and its aiohttp implementation.

The writer sees only ``ClientSocket``: can a frame go out right now, write it, or wait while
the socket is paused. The receive loop sees ``ClientConnection``, which adds reading. Tests
put a fake with behaviour (a socket that stops draining and resumes) behind the same seam.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol

from aiohttp import WSMessage, WSMsgType, web

from app.frames import PING_FRAME, text_frame


class ClientSocket(Protocol):
    """What a connection's writer needs from its socket."""

    @property
    def closed(self) -> bool: ...

    def can_write_now(self) -> bool:
        """The socket has taken every byte so far: a frame written now leaves whole, at once."""
        ...

    def write_text(self, payload: bytes) -> None:
        """Write a text frame synchronously; only when ``can_write_now()``."""
        ...

    def write_ping(self) -> None: ...

    def send_text(self, payload: bytes) -> Awaitable[None]:
        """Send a text frame, waiting while the socket is paused (the client is not reading)."""
        ...

    def send_ping(self) -> Awaitable[None]: ...

    def unsent_bytes(self) -> int:
        """Bytes written but not yet taken by the kernel (0 once the socket is gone)."""
        ...

    def close(self, code: int, reason: str) -> Awaitable[None]:
        """The closing handshake: a close frame, then wait for the client's."""
        ...

    def abort(self) -> None:
        """Drop the connection at once, without a close frame."""
        ...


class ClientConnection(ClientSocket, Protocol):
    """The whole socket, as the stream's receive loop sees it."""

    @property
    def close_code(self) -> int | None: ...

    def receive(self) -> Awaitable[WSMessage]: ...

    def send_pong(self, data: bytes) -> Awaitable[None]: ...


class AiohttpSocket:
    """An upgraded aiohttp WebSocket plus its raw transport.

    While the transport has nothing buffered, frames are written to it directly: that spares
    a task and aiohttp's async send per message, and the whole frame goes in one call, so it
    cannot interleave with aiohttp's own frames (pongs, the close frame); ``ws.closed`` turns
    true as soon as a close starts. With permessage-deflate on (``raw_writes=False``) every
    frame goes through aiohttp's compressor.
    """

    __slots__ = ("_raw", "_transport", "_ws")

    def __init__(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport | None, *, raw_writes: bool
    ) -> None:
        self._ws = ws
        self._transport = transport
        self._raw = raw_writes and transport is not None

    @property
    def closed(self) -> bool:
        return self._ws.closed

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    def can_write_now(self) -> bool:
        if not self._raw or self._ws.closed:
            return False
        transport = self._transport
        return (
            transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() == 0
        )

    def write_text(self, payload: bytes) -> None:
        if self._transport is not None:
            self._transport.write(text_frame(payload))

    def write_ping(self) -> None:
        if self._transport is not None:
            self._transport.write(PING_FRAME)

    # aiohttp's coroutines are handed back as they are: no extra coroutine per frame.

    def send_text(self, payload: bytes) -> Awaitable[None]:
        return self._ws.send_frame(payload, WSMsgType.TEXT)

    def send_ping(self) -> Awaitable[None]:
        return self._ws.ping()

    def send_pong(self, data: bytes) -> Awaitable[None]:
        return self._ws.pong(data)

    def receive(self) -> Awaitable[WSMessage]:
        return self._ws.receive()

    def unsent_bytes(self) -> int:
        transport = self._transport
        if transport is None or transport.is_closing():
            return 0
        return transport.get_write_buffer_size()

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode())

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
