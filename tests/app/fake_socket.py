"""A client socket behind the stream's transport seam, with behaviour and no network.

It drains (every frame reaches the client at once) until ``stop_draining``; from then on a
synchronous write is refused (``can_write_now`` is false) and an asynchronous send waits, its
bytes unsent, until ``resume`` — like a TCP socket whose peer stopped reading. Dropping it
wakes a waiting send with ``ConnectionError``, as aiohttp does. Client-to-server frames are
fed with ``client_text`` and friends and come out of ``receive`` like aiohttp's messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import WSMessage, WSMsgType

from app.portfolio import PortfolioStore
from app.stats import StatsRules, StreamStats
from app.tasks import TaskSet
from app.writer import WriterContext

PING = "PING"  # how a ping shows in ``FakeSocket.received``
PONG = "PONG"  # and a pong (its payload follows: "PONG:<payload>")


class FakeSocket:
    def __init__(self) -> None:
        self.received: list[bytes | str] = []  # what reached the client, in order
        self.close_frame: tuple[int, str] | None = None
        self.aborted = False
        self.closed = False
        self.close_code: int | None = None
        self._draining = asyncio.Event()
        self._draining.set()
        self._dropped = asyncio.Event()
        self._waiting = asyncio.Event()  # a send is waiting for the socket to drain
        self._budget: int | None = None  # frames let through before it stops draining again
        self._unsent = 0
        self._arrivals: asyncio.Queue[bytes | str] = asyncio.Queue()
        self._inbox: asyncio.Queue[WSMessage] = asyncio.Queue()

    # Test controls

    def stop_draining(self) -> None:
        self._draining.clear()

    def resume(self) -> None:
        self._budget = None
        self._draining.set()

    def let_through(self, frames: int) -> None:
        """Drain just long enough for ``frames`` more waiting frames (a narrow link)."""
        self._budget = frames
        self._draining.set()

    async def until_waiting(self) -> None:
        """Until a send is parked on this socket, waiting for it to drain."""
        await asyncio.wait_for(self._waiting.wait(), 2)

    async def next_frame(self, timeout_s: float = 2.0) -> bytes | str:
        return await asyncio.wait_for(self._arrivals.get(), timeout_s)

    async def next_message(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """The next text frame that reaches the client, parsed; pings and pongs are skipped."""
        while isinstance(frame := await self.next_frame(timeout_s), str):
            pass
        assert isinstance(frame, bytes)
        message: dict[str, Any] = orjson.loads(frame)
        return message

    def messages(self) -> list[dict[str, Any]]:
        return [orjson.loads(f) for f in self.received if isinstance(f, bytes)]

    def nothing_arrived(self) -> bool:
        return self._arrivals.empty()

    def client_text(self, data: str | dict[str, Any]) -> None:
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        self._inbox.put_nowait(WSMessage(WSMsgType.TEXT, text.encode(), None))

    def client_binary(self, data: bytes) -> None:
        self._inbox.put_nowait(WSMessage(WSMsgType.BINARY, data, None))

    def client_pong(self) -> None:
        self._inbox.put_nowait(WSMessage(WSMsgType.PONG, b"", None))

    def client_ping(self, payload: bytes = b"") -> None:
        self._inbox.put_nowait(WSMessage(WSMsgType.PING, payload, None))

    def client_error(self, error: Exception) -> None:
        """What aiohttp's reader hands over for a bad frame (it has closed the socket)."""
        self._gone(getattr(error, "code", None), announce=False)
        self._inbox.put_nowait(WSMessage(WSMsgType.ERROR, error, None))

    def client_close(self, code: int, reason: str = "") -> None:
        self._inbox.put_nowait(WSMessage(WSMsgType.CLOSE, code, reason))

    # The seam

    def can_write_now(self) -> bool:
        return not self.closed and self._draining.is_set() and self._unsent == 0

    def write_text(self, payload: bytes) -> None:
        assert self.can_write_now(), "a synchronous write is only allowed on a drained socket"
        self._arrive(payload)

    def write_ping(self) -> None:
        assert self.can_write_now()
        self._arrive(PING)

    async def send_text(self, payload: bytes) -> None:
        await self._send(payload, len(payload))

    async def send_ping(self) -> None:
        await self._send(PING, 2)

    def write_pong(self, data: bytes) -> None:
        assert self.can_write_now()
        self._arrive(f"{PONG}:{data.decode()}")

    async def send_pong(self, data: bytes) -> None:
        await self._send(f"{PONG}:{data.decode()}", 2 + len(data))

    def unsent_bytes(self) -> int:
        return 0 if self.closed else self._unsent

    async def close(self, code: int, reason: str) -> None:
        """The close frame queues behind unsent bytes, like any frame."""
        await self._send(None, 4 + len(reason))
        self.close_frame = (code, reason)
        self._gone(code)

    async def linger(self) -> None:
        """Gone with its close: nothing to wait for."""

    def abort(self) -> None:
        self.aborted = True
        self._gone(None)

    async def receive(self) -> WSMessage:
        return await self._inbox.get()

    # Behaviour

    async def _send(self, frame: bytes | str | None, size: int) -> None:
        if self.closed:
            raise ConnectionResetError("Cannot write to closing transport")
        self._unsent += size
        try:
            if not self._draining.is_set():
                self._waiting.set()
                waits = {
                    asyncio.ensure_future(self._draining.wait()),
                    asyncio.ensure_future(self._dropped.wait()),
                }
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    self._waiting.clear()
                    for wait in waits:
                        wait.cancel()
            if self.closed:
                raise ConnectionError("Connection lost")
            if self._budget is not None:
                self._budget -= 1
                if self._budget == 0:
                    self._budget = None
                    self._draining.clear()
        finally:
            self._unsent -= size
        if frame is not None:
            self._arrive(frame)

    def _arrive(self, frame: bytes | str) -> None:
        self.received.append(frame)
        self._arrivals.put_nowait(frame)

    def _gone(self, code: int | None, *, announce: bool = True) -> None:
        if not self.closed:
            self.closed = True
            self._dropped.set()
            self.close_code = code
            if announce:
                self._inbox.put_nowait(WSMessage(WSMsgType.CLOSED, None, None))


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stream_stats(clock: Callable[[], float] | None = None) -> StreamStats:
    """Stats with the default rules (the writer only counts messages into them)."""
    rules = StatsRules(
        reconnect_window_s=60.0,
        degraded_disconnect_ratio=0.10,
        degraded_disconnect_window_s=60.0,
        degraded_min_batch_efficiency=0.5,
        degraded_min_deliveries=100,
    )
    return StreamStats(rules, clock) if clock is not None else StreamStats(rules)


def writer_context(
    *,
    clock: Callable[[], float] | None = None,
    portfolio: PortfolioStore | None = None,
    stats: StreamStats | None = None,
    max_queued_frames: int = 8,
    close_grace_s: float = 0.05,
    abort_above_bytes: int = 1 << 20,
) -> WriterContext:
    stats = stats or stream_stats()
    return WriterContext(
        snapshot=(portfolio or PortfolioStore()).snapshot,
        message_sent=stats.message_sent,
        observe_latency=None,
        clock=clock or Clock(),
        wall_clock=lambda: 1_767_522_600.0,
        tasks=TaskSet(),
        max_queued_frames=max_queued_frames,
        close_grace_s=close_grace_s,
        abort_above_bytes=abort_above_bytes,
    )
