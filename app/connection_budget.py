"""Client connections stay within the descriptors the reserve leaves (FD_RESERVE).

Every accepted socket is a descriptor. Idle clients that never send a request could otherwise
take them all, and then ``/healthz``, the broker's streams and the store could open none. So
the listener counts its connections, and once they fill ``soft limit - FD_RESERVE``, a new one
makes room by closing the connection that has been idle longest (no request in progress: a
socket that never sent one, or a keep-alive between requests), and is itself refused when
every connection is busy (a WebSocket, a request being answered). Idle ones that never finish
their headers are also closed after HTTP_HEADER_TIMEOUT_S (aiohttp's keep-alive timeout,
which runs from the connection's start).

The count is exact: each accepted protocol is wrapped in a forwarder that hears its end.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from config.logging import get_logger

log = get_logger()

# Refusals and evictions come in floods: one WARNING line per interval, the rest counted.
LOG_INTERVAL_S: Final = 60.0
REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Length: 0\r\n\r\n"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionBudget:
    """Counts the listener's connections and keeps them within ``capacity``."""

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.shed = 0  # connections closed to stay within the budget (evicted or refused)
        self._live: set[RequestHandler] = set()
        self._idle: dict[RequestHandler, None] = {}  # no request in progress, longest first
        self._clock = clock
        self._logged_at: float | None = None
        self._unlogged = 0

    @property
    def connections(self) -> int:
        return len(self._live)

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """What the listener calls for each accepted socket, in place of ``server``."""

        def accept() -> asyncio.Protocol:
            if len(self._live) >= self.capacity and not self._evict_idle():
                self._note_shed("refused")
                return _Refused()
            handler = server()
            self._live.add(handler)
            self._idle[handler] = None
            return _Counted(handler, self._closed)

        return accept

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the connection busy while a request is answered (a WebSocket: for its life)."""
        protocol = request.protocol
        self._idle.pop(protocol, None)
        try:
            return await handler(request)
        finally:
            if protocol in self._live:
                self._idle[protocol] = None

    def _evict_idle(self) -> bool:
        if not self._idle:
            return False
        oldest = next(iter(self._idle))
        del self._idle[oldest]
        self._live.discard(oldest)  # its descriptor is released as it closes
        oldest.force_close()
        self._note_shed("idle connection closed")
        return True

    def _closed(self, handler: RequestHandler) -> None:
        self._live.discard(handler)
        self._idle.pop(handler, None)

    def _note_shed(self, action: str) -> None:
        self.shed += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < LOG_INTERVAL_S:
            self._unlogged += 1
            return
        log.warning(
            f"[Server] Connection budget reached: {action}",
            connections=len(self._live),
            capacity=self.capacity,
            sinceLastLine=self._unlogged,
        )
        self._logged_at, self._unlogged = now, 0


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, with its end reported to the budget."""

    __slots__ = ("_closed", "_inner")

    def __init__(self, inner: RequestHandler, closed: Callable[[RequestHandler], None]) -> None:
        self._inner = inner
        self._closed = closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        self._inner.eof_received()
        return None  # aiohttp's answer: let the transport close on the client's EOF

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed(self._inner)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Refused(asyncio.Protocol):
    """Answers 503 and hangs up: every connection is busy and the reserve is not for clients."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(REFUSAL)
        transport.close()


class BudgetedTCPSite(web.TCPSite):
    """aiohttp's TCP site, its connections counted by ``budget``."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        budget: ConnectionBudget,
        backlog: int,
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog, reuse_address=True)
        self._budget = budget

    async def start(self) -> None:
        # As TCPSite.start, with the budget's protocol factory in place of the server.
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._budget.protocol_factory(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


class BudgetedSockSite(web.SockSite):
    """aiohttp's site for an inherited socket (socket activation), counted by ``budget``."""

    def __init__(
        self, runner: web.BaseRunner, sock: socket.socket, *, budget: ConnectionBudget
    ) -> None:
        super().__init__(runner, sock)
        self._budget = budget

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._budget.protocol_factory(server), sock=self._sock, backlog=self._backlog
        )
