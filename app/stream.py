"""PortfolioStreamManager: the hub of `/ws/portfolio` — registry, admission and limits,
lifecycle, and each connection's receive loop.

Its parts, each in its own module: the wire contract (``protocol``), the reactions to client
frames (``client_messages``), the per-user batch window (``batch_scheduler``) and the
fan-out of what it flushes (``fanout``), each connection's writer and its slow-client policy
(``writer``, behind the ``transport`` seam, with ``frame_guard`` in front of the socket), the
``heartbeat``, and the closing of sockets whose session ended (``session_ends``). A connection
is admitted, served and released here; everything sent to it goes through its writer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from app.batch_scheduler import Timers
from app.bus import EventBus, Unsubscribe
from app.client_messages import ClientMessages
from app.connection import Connection, new_connection_id
from app.events import EVENT_TYPES
from app.fanout import FanOut
from app.frame_guard import FrameGuard
from app.heartbeat import Heartbeat
from app.metrics import Metrics
from app.portfolio import PortfolioStore
from app.protocol import CloseCode, CloseReason, connected_message
from app.session_ends import SessionEnds
from app.sessions import Revocations
from app.stats import StreamStats
from app.tasks import TaskSet
from app.transport import AiohttpSocket, ClientConnection
from app.writer import ConnectionWriter, SnapshotRequest, WriterContext
from config.logging import get_logger, utc_timestamp
from config.settings import Settings

log = get_logger()

WS_PATH = "/ws/portfolio"

# Of SHUTDOWN_TIMEOUT_S, half lets the flushed batches out and half goes to the closing
# handshakes, each at least half a second so that even a tiny timeout still flushes.
SHUTDOWN_STEP_SHARE: Final = 0.5
MIN_SHUTDOWN_STEP_S: Final = 0.5
# A close frame the client has not answered within a quarter of it is given up on: the
# socket is dropped, so one dead client cannot use the whole shutdown budget.
CLOSE_GRACE_SHARE: Final = 0.25
MIN_CLOSE_GRACE_S: Final = 0.25


def close_grace_s(settings: Settings) -> float:
    """How long a close frame waits for the client's answer before the socket is dropped."""
    return max(settings.shutdown_timeout_s * CLOSE_GRACE_SHARE, MIN_CLOSE_GRACE_S)


class PortfolioStreamManager:
    """Owns every `/ws/portfolio` connection of this process."""

    def __init__(
        self,
        settings: Settings,
        bus: EventBus,
        portfolio: PortfolioStore,
        stats: StreamStats,
        metrics: Metrics | None = None,
        wall_clock: Callable[[], float] = time.time,
        timers: Timers | None = None,
        snapshot: Callable[[str, frozenset[str]], dict[str, Any] | None] | None = None,
    ) -> None:
        """``snapshot`` replaces ``portfolio.snapshot`` as the source of snapshots (a cluster
        node's view, which answers None for a state not read yet)."""
        self._settings = settings
        self._bus = bus
        self._stats = stats
        self._metrics = metrics
        self._wall = wall_clock
        self._clock = stats.now
        self._connections: dict[str, Connection] = {}
        self._by_user: dict[str, dict[str, Connection]] = {}
        self._fanout = FanOut(
            self._by_user,
            window_s=settings.batch_window_s,
            wall_clock=wall_clock,
            metrics=metrics,
            timers=timers,
        )
        self._batches = self._fanout.batches
        self._heartbeat = Heartbeat(
            self._connections,
            interval_s=settings.heartbeat_interval_s,
            timeout_s=settings.heartbeat_timeout_s,
            rate_window_s=settings.ws_rate_limit_window_s,
            clock=self._clock,
        )
        self._writers = TaskSet()
        self._writer_context = WriterContext(
            snapshot=snapshot or portfolio.snapshot,
            message_sent=stats.message_sent,
            observe_latency=metrics.observe_latency if metrics is not None else None,
            clock=self._clock,
            wall_clock=wall_clock,
            tasks=self._writers,
            max_queued_frames=settings.ws_max_queued_frames,
            close_grace_s=close_grace_s(settings),
            abort_above_bytes=settings.ws_send_buffer_bytes,
        )
        self._messages = ClientMessages(
            rate_limit_messages=settings.ws_rate_limit_messages,
            rate_limit_control_frames=settings.ws_rate_limit_control_frames,
            rate_limit_window_s=settings.ws_rate_limit_window_s,
            max_message_bytes=settings.ws_max_message_bytes,
            clock=self._clock,
            wall_clock=wall_clock,
        )
        self._session_ends = SessionEnds(self._by_user)
        self._background = TaskSet()  # the heartbeat
        self._unsubscribers: list[Unsubscribe] = []
        self._accepting = False
        self._raw_writes = not settings.ws_compression

    # Lifecycle

    async def start(self, revocations: Revocations | None = None) -> None:
        """Listen to the bus and start the heartbeat; with ``revocations``, close the sockets
        of every session that ends."""
        for event_type in EVENT_TYPES:
            self._unsubscribers.append(self._bus.subscribe(event_type, self._fanout.on_event))
        if revocations is not None:
            self._unsubscribers.append(revocations.subscribe(self._session_ends.on_revoked))
        self._accepting = True
        self._background.spawn(self._heartbeat.run(), "ws-heartbeat")
        log.info(
            f"[STARTUP] Portfolio stream initialized on {WS_PATH}",
            _batchWindowMs=self._settings.batch_window_ms,
        )
        log.info(f"[STARTUP] Event bus listeners registered: [{', '.join(EVENT_TYPES)}]")

    def stop_accepting(self) -> None:
        self._accepting = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def shutdown(self) -> None:
        """Stop accepting, unsubscribe, flush pending batches, close all with 1001, clear maps.

        Idempotent. Every task it started is cancelled and awaited before it returns.
        """
        self._accepting = False
        for unsubscribe in self._unsubscribers:
            unsubscribe()
        self._unsubscribers.clear()
        await self._background.cancel()
        self._batches.flush_all()
        step_s = max(self._settings.shutdown_timeout_s * SHUTDOWN_STEP_SHARE, MIN_SHUTDOWN_STEP_S)
        await self._writers.wait(step_s)
        closing = [
            task
            for conn in list(self._connections.values())
            if (task := conn.writer.start_close(CloseCode.GOING_AWAY, CloseReason.SHUTDOWN))
        ]
        if closing:
            await asyncio.wait(closing, timeout=step_s)
        for conn in list(self._connections.values()):
            conn.socket.abort()
        self._batches.clear()
        await self._writers.cancel()

    # Introspection

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    def connections_by_user(self) -> dict[str, int]:
        return {user: len(conns) for user, conns in self._by_user.items()}

    def pending_timers(self) -> int:
        return self._batches.pending()

    def connection(self, conn_id: str) -> Connection | None:
        return self._connections.get(conn_id)

    def resnapshot(self, user_id: str) -> None:
        """Send every connection of the user a fresh snapshot of its channels (its state was
        read again: a cluster node's resync); ``seq`` continues."""
        for conn in list(self._by_user.get(user_id, {}).values()):
            writer = conn.writer
            if writer.channels and not writer.closing:
                writer.send(SnapshotRequest(writer.channels))

    # Admission

    def admit(
        self,
        user_id: str,
        ws: web.WebSocketResponse,
        request: web.Request,
        token_hash: str = "",
        guard: FrameGuard | None = None,
        conn_id: str | None = None,
    ) -> Connection | None:
        """Register an upgraded socket, or None when a connection limit is reached; ``conn_id``
        is the id it was admitted under elsewhere (the cluster's slot), else a new one."""
        settings = self._settings
        socket = AiohttpSocket(
            ws,
            request.transport,
            raw_writes=self._raw_writes,
            unsent_limit=settings.ws_send_buffer_bytes,
            guard=guard,
            close_grace_s=close_grace_s(settings),
            # A client still sending after the server's close frame (a flood) is given this
            # long to stop and read it.
            linger_max_s=settings.heartbeat_timeout_s,
        )
        return self.attach(user_id, socket, token_hash=token_hash, conn_id=conn_id)

    def attach(
        self,
        user_id: str,
        socket: ClientConnection,
        *,
        token_hash: str = "",
        conn_id: str | None = None,
    ) -> Connection | None:
        """Register a client socket (any implementation of the seam), or None at a limit;
        ``token_hash`` names the session it was opened with, so its end closes it."""
        user_conns = self._by_user.get(user_id)
        if len(self._connections) >= self._settings.max_total_connections or (
            user_conns is not None and len(user_conns) >= self._settings.max_connections_per_user
        ):
            return None
        started, _ = self._stats.connection_opened(user_id)
        conn_id = conn_id or new_connection_id()
        writer = ConnectionWriter(socket, self._writer_context, conn_id, user_id)
        conn = Connection(conn_id, user_id, socket, writer, started, token_hash)
        conn.next_ping = self._heartbeat.first_ping_at(started)
        self._connections[conn_id] = conn
        self._by_user.setdefault(user_id, {})[conn_id] = conn
        if self._metrics is not None:
            self._metrics.connection_opened()
        log.info(
            "[PortfolioStream] Client connected",
            userId=user_id,
            connectionId=conn_id,
            totalUserConnections=len(self._by_user[user_id]),
        )
        writer.send(
            connected_message(
                conn_id,
                user_id,
                batch_window_ms=self._settings.batch_window_ms,
                heartbeat_interval_ms=self._settings.heartbeat_interval_ms,
                server_time=utc_timestamp(self._wall()),
            )
        )
        return conn

    # The receive loop and client messages

    async def serve(self, conn: Connection) -> None:
        """Read client frames until the socket closes, then release the connection."""
        socket = conn.socket
        on_frame = self._messages.on_frame
        try:
            while on_frame(conn, await socket.receive()):
                pass
        except Exception:
            # A bug while answering this client: it alone is closed, with one traceback.
            log.exception(
                "[PortfolioStream] Unexpected error on a connection",
                userId=conn.user_id,
                connectionId=conn.id,
            )
            conn.writer.start_close(CloseCode.INTERNAL_ERROR, CloseReason.INTERNAL)
        finally:
            self._release(conn)
        # The handler outlives the connection until its close is through: aiohttp drops the
        # socket as the handler returns, which would cut the closing handshake short.
        await conn.writer.wait_closed()

    def _release(self, conn: Connection) -> None:
        if self._connections.pop(conn.id, None) is None:
            return
        user_conns = self._by_user.get(conn.user_id)
        if user_conns is not None:
            user_conns.pop(conn.id, None)
            if not user_conns:
                del self._by_user[conn.user_id]
                self._batches.drop(conn.user_id)
        writer = conn.writer
        writer.discard()
        duration = self._stats.connection_closed(conn.user_id, conn.started_at)
        code = writer.close_code if writer.close_code is not None else conn.socket.close_code
        if self._metrics is not None:
            self._metrics.connection_closed(code, duration)
        log.info(
            "[PortfolioStream] Client disconnected",
            userId=conn.user_id,
            code=code if code is not None else CloseCode.ABNORMAL,
            reason=writer.close_reason or "Connection lost",
            duration=f"{round(duration)}s",
            _connectionId=conn.id,
        )
