"""The seam between the stream and one client's socket, and its aiohttp implementation.

The writer sees only ``ClientSocket``: can a frame go out right now, write it, or wait while
the socket is paused. The receive loop sees ``ClientConnection``, which adds reading. Tests
put a fake with behaviour (a socket that stops draining and resumes) behind the same seam.

"Unsent" counts what the kernel holds too. Linux grows a socket's send buffer to megabytes for
a client that stopped reading, and every frame written into it would wait there, separately,
however stale. ``TCP_NOTSENT_LOWAT`` makes the kernel refuse bytes (and report the socket
unwritable) once it holds WS_SEND_BUFFER_BYTES not yet sent, so the excess stays in the
transport, where it pauses the writer and later batches coalesce. Unlike a small ``SO_SNDBUF``
it does not count bytes in flight, so a healthy client on a long link keeps its full rate; and
it costs no system call per message (only a close asks the kernel, with ``SIOCOUTQNSD``).

Closing: where the socket has a ``FrameGuard`` in front of it, the server's close frame is
written whole, followed by its FIN, and the guard sees the rest through (see there); otherwise
aiohttp's closing handshake is used.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import socket as sockets
from collections.abc import Awaitable
from typing import Final, Protocol

from aiohttp import WSMessage, WSMsgType, web

from app.frame_guard import FrameGuard
from app.frames import PING_FRAME, close_frame, pong_frame, text_frame

# Linux's ioctl for the bytes of a socket's send queue not yet sent (<linux/sockios.h>).
SIOCOUTQNSD: Final = 0x894B


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

    def write_pong(self, data: bytes) -> None: ...

    def send_text(self, payload: bytes) -> Awaitable[None]:
        """Send a text frame, waiting while the socket is paused (the client is not reading)."""
        ...

    def send_ping(self) -> Awaitable[None]: ...

    def send_pong(self, data: bytes) -> Awaitable[None]: ...

    def unsent_bytes(self) -> int:
        """Bytes written but not yet sent, the kernel's included (0 once the socket is gone)."""
        ...

    def close(self, code: int, reason: str) -> Awaitable[None]:
        """Start the closing handshake: send the close frame."""
        ...

    def linger(self) -> Awaitable[None]:
        """After ``close``: until the client has ended the connection too, or is given up on
        (then the connection is dropped); never longer than the socket's own bound."""
        ...

    def abort(self) -> None:
        """Drop the connection at once, without a close frame."""
        ...


class ClientConnection(ClientSocket, Protocol):
    """The whole socket, as the stream's receive loop sees it."""

    @property
    def close_code(self) -> int | None: ...

    def receive(self) -> Awaitable[WSMessage]: ...


class AiohttpSocket:
    """An upgraded aiohttp WebSocket plus its raw transport.

    While the transport has nothing buffered, frames are written to it directly: that spares
    a task and aiohttp's async send per message, and the whole frame goes in one call, so it
    cannot interleave with aiohttp's own frames (pongs, the close frame); ``ws.closed`` turns
    true as soon as a close starts. With permessage-deflate on (``raw_writes=False``) every
    frame goes through aiohttp's compressor.
    """

    __slots__ = ("_grace_s", "_guard", "_linger_s", "_raw", "_transport", "_ws")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        *,
        raw_writes: bool,
        unsent_limit: int,
        guard: FrameGuard | None = None,
        close_grace_s: float = 1.0,
        linger_max_s: float = 1.0,
    ) -> None:
        self._ws = ws
        self._transport = transport
        self._raw = raw_writes and transport is not None
        self._guard = guard
        self._grace_s = close_grace_s
        self._linger_s = linger_max_s
        if transport is not None:
            bound_unsent(transport, unsent_limit)

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

    def write_pong(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(pong_frame(data))

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
        return transport.get_write_buffer_size() + kernel_unsent(transport)

    async def close(self, code: int, reason: str) -> None:
        transport = self._transport
        if self._guard is None or transport is None:
            await self._ws.close(code=code, message=reason.encode())
        elif not transport.is_closing():
            # One write, so it cannot land inside a frame of aiohttp's; the FIN follows it.
            transport.write(close_frame(code, reason))
            transport.write_eof()

    async def linger(self) -> None:
        if self._guard is not None and self._transport is not None:
            await self._guard.linger(self._transport, self._grace_s, self._linger_s)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def bound_unsent(transport: asyncio.Transport, limit: int) -> None:
    """Hold at most ``limit`` unsent bytes in the kernel and pause the protocol as soon as any
    byte waits in the transport (so the writer waits there, and batches coalesce)."""
    sock = transport.get_extra_info("socket")
    option = getattr(sockets, "TCP_NOTSENT_LOWAT", None)
    if (
        sock is not None
        and option is not None
        and sock.family in (sockets.AF_INET, sockets.AF_INET6)
    ):
        with contextlib.suppress(OSError):
            sock.setsockopt(sockets.IPPROTO_TCP, option, limit)
    transport.set_write_buffer_limits(high=0)


def kernel_unsent(transport: asyncio.Transport) -> int:
    """Bytes the kernel holds for this socket that it has not sent yet (0 where unknown)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    out = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, out)
    except (OSError, ValueError):
        return 0
    return out[0]
