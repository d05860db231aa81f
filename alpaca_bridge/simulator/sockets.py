"""A server-side websocket with a single writer, so synchronous code can send to it.

The broker's controls and timers are plain callbacks on the loop; they enqueue frames here and
one task per connection writes them in order. Ordering per connection is therefore the order of
``send`` calls, and a dead peer never blocks whoever announced the event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

MAX_BACKLOG = 10_000  # frames queued for a client that does not read: it is cut off, as Alpaca does


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    message: bytes


class StreamSocket:
    """One accepted websocket; ``send``/``close``/``abort`` never block."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, *, binary: bool) -> None:
        self.request = request
        self.ws = ws
        self.binary = binary  # frame type for str payloads: BINARY (paper) or TEXT (live)
        # How this side ended it, if it did: a close frame, or a cut without one.
        self.ended_by_server: Literal["server_close", "unclean"] | None = None
        self._queue: asyncio.Queue[bytes | str | _Close] = asyncio.Queue()  # str: a TEXT frame
        self._writer = asyncio.create_task(self._write(), name="sim-ws-writer")

    @property
    def closed(self) -> bool:
        return self.ws.closed or self._writer.done()

    def send(self, frame: bytes | str) -> None:
        """Queue a frame; ``str`` goes out as ``self.binary`` says, ``bytes`` always as BINARY."""
        if self.closed:
            return
        if self._queue.qsize() >= MAX_BACKLOG:
            self.abort()
            return
        # Decided at send time: frames already queued keep their type when ``binary`` changes.
        self._queue.put_nowait(frame.encode() if isinstance(frame, str) and self.binary else frame)

    def close(self, code: int = 1000, message: str = "") -> None:
        """Send a close frame after everything already queued."""
        self.ended_by_server = self.ended_by_server or "server_close"
        self._queue.put_nowait(_Close(code, message.encode()))

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (a network failure, to the client)."""
        if not self.closed:
            self.ended_by_server = self.ended_by_server or "unclean"
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        self._writer.cancel()

    async def finish(self, grace_s: float = 0.5) -> None:
        """Close (1001) if still open, allow ``grace_s`` for the handshake, then abort."""
        if not self._writer.done():
            if self.ws.closed:
                self._writer.cancel()
            else:
                self.close(1001, "server shutting down")
                done, _ = await asyncio.wait({self._writer}, timeout=grace_s)
                if not done:
                    self.abort()
            await asyncio.wait({self._writer})
        if not self._writer.cancelled():
            self._writer.exception()  # retrieved, so a failed writer is not reported twice

    async def _write(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _Close):
                    await self.ws.close(code=item.code, message=item.message)
                    return
                if isinstance(item, bytes):
                    await self.ws.send_bytes(item)
                else:
                    await self.ws.send_str(item)
        except (ConnectionError, RuntimeError):
            # The peer went away mid-write; the reader sees the close and cleans up.
            return


class StateWatch:
    """Lets tests await a condition on connection state instead of sleeping."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds (callers bound the wait with a timeout)."""
        while True:
            changed = self._changed  # taken before the check, so no change is missed
            if predicate():
                return
            await changed.wait()
