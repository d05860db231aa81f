"""The service's run state and the one graceful-shutdown sequence (SPEC §9).

:meth:`Lifecycle.shutdown` is the only place that orders the stop of the broker and the stream;
the factory runs it from ``on_shutdown``, before aiohttp waits for the handlers (every WebSocket
handler lives as long as its socket, so the sockets must be closed first). The cleanup contexts
that follow stop their own resource again only as a no-op, or after a start-up that failed
before any shutdown ran.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Protocol

from app.broker import Broker
from config.logging import get_logger

log = get_logger()


class RunState(Enum):
    SERVING = "serving"
    DRAINING = "draining"  # readiness 503, upgrades refused, sockets being closed
    STOPPED = "stopped"


class StreamEndpoint(Protocol):
    """The part of the stream manager the shutdown sequence drives."""

    @property
    def active_connections(self) -> int: ...

    def stop_accepting(self) -> None: ...

    async def shutdown(self) -> None:
        """Unsubscribe, flush pending batches, close every socket with 1001, clear maps."""
        ...


class Lifecycle:
    """Serving until :meth:`shutdown`; then draining, then stopped."""

    def __init__(self, stream: StreamEndpoint, broker: Broker) -> None:
        self._stream = stream
        self._broker = broker
        self._state = RunState.SERVING
        self._shutdown: asyncio.Task[None] | None = None

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def draining(self) -> bool:
        """True from the moment shutdown begins (and after it ended)."""
        return self._state is not RunState.SERVING

    async def shutdown(self) -> None:
        """Stop accepting, stop the broker streams, then the stream manager's own sequence.

        Runs once: a second call waits for the first. The broker stops before the stream
        unsubscribes, so an event it emitted on the way out still reaches clients in the final
        flush."""
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._run(), name="graceful-shutdown")
        await self._shutdown

    async def _run(self) -> None:
        self._state = RunState.DRAINING
        self._stream.stop_accepting()
        log.info(
            "[PortfolioStream] Shutting down", activeConnections=self._stream.active_connections
        )
        await self._broker.stop()
        await self._stream.shutdown()
        self._state = RunState.STOPPED
        log.info("[PortfolioStream] Shutdown complete: all connections closed")
