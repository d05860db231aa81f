"""PortfolioStreamManager: connections, per-user batch timers, fan-out, heartbeat, shutdown.

Events arrive from the bus (synchronously, on the loop). The first event for a user starts that
user's timer; when it fires, the coalesced batch goes to each of the user's connections, filtered
by channel. The timer is not re-armed by later events, so latency is bounded by the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import orjson
from aiohttp import WSMsgType, web

from app.batch_scheduler import BatchScheduler, Timers
from app.batching import Batch, channel_set
from app.bus import EventBus, Unsubscribe
from app.connection import (
    PING,
    Connection,
    ControlFrame,
    SnapshotRequest,
    new_connection_id,
    send_text,
)
from app.events import EVENT_TYPES, POSITION_UPDATED, TRADE_EXECUTED, Event
from app.frames import PING_FRAME, text_frame
from app.metrics import Metrics
from app.portfolio import PortfolioStore
from app.protocol import (
    CHANNELS,
    UNSUPPORTED_FRAME,
    CloseCode,
    CloseReason,
    PreparedBatch,
    ProtocolError,
    batch_message,
    encode,
    parse_client_message,
    snapshot_message,
    unknown_channel_error,
)
from app.stats import StreamStats
from config.logging import get_logger, utc_timestamp
from config.settings import Settings

log = get_logger()

WS_PATH = "/ws/portfolio"


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
    ) -> None:
        self._settings = settings
        self._bus = bus
        self._portfolio = portfolio
        self._stats = stats
        self._metrics = metrics
        self._wall = wall_clock
        self._connections: dict[str, Connection] = {}
        self._by_user: dict[str, dict[str, Connection]] = {}
        self._batches = BatchScheduler(settings.batch_window_s, self._fan_out, timers)
        self._unsubscribers: list[Unsubscribe] = []
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._writers: set[asyncio.Task[None]] = set()
        self._accepting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._direct_writes = not settings.ws_compression

    # Lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for event_type in EVENT_TYPES:
            self._unsubscribers.append(self._bus.subscribe(event_type, self._on_event))
        self._accepting = True
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="ws-heartbeat")
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
        """Stop accepting, unsubscribe, flush pending batches, close all with 1001, clear maps."""
        self._accepting = False
        for unsubscribe in self._unsubscribers:
            unsubscribe()
        self._unsubscribers.clear()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
            self._heartbeat_task = None
        self._batches.flush_all()
        await self._wait_writers(within_s=max(self._settings.shutdown_timeout_s / 2, 0.5))
        closing = [
            self._close(conn, CloseCode.GOING_AWAY, CloseReason.SHUTDOWN)
            for conn in list(self._connections.values())
        ]
        if closing:
            await asyncio.wait(
                [asyncio.ensure_future(c) for c in closing],
                timeout=max(self._settings.shutdown_timeout_s / 2, 0.5),
            )
        for conn in list(self._connections.values()):
            if conn.transport is not None:
                conn.transport.abort()
        self._batches.clear()
        for task in list(self._writers):
            task.cancel()

    async def _wait_writers(self, within_s: float) -> None:
        if self._writers:
            await asyncio.wait(list(self._writers), timeout=within_s)

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

    # Admission and the receive loop

    def admit(
        self, user_id: str, ws: web.WebSocketResponse, request: web.Request
    ) -> Connection | None:
        """Register an upgraded socket, or None when a connection limit is reached."""
        user_conns = self._by_user.get(user_id)
        if len(self._connections) >= self._settings.max_total_connections or (
            user_conns is not None and len(user_conns) >= self._settings.max_connections_per_user
        ):
            return None
        started, _ = self._stats.connection_opened(user_id)
        conn = Connection(new_connection_id(), user_id, ws, request.transport, started)
        # A random phase spreads pings over the interval even when thousands connected at once.
        conn.next_ping = started + self._settings.heartbeat_interval_s * random.uniform(0.5, 1.0)
        self._connections[conn.id] = conn
        self._by_user.setdefault(user_id, {})[conn.id] = conn
        if self._metrics is not None:
            self._metrics.connection_opened()
        log.info(
            "[PortfolioStream] Client connected",
            userId=user_id,
            connectionId=conn.id,
            totalUserConnections=len(self._by_user[user_id]),
        )
        self._send_control(
            conn,
            encode(
                {
                    "type": "connected",
                    "connectionId": conn.id,
                    "userId": user_id,
                    "channels": list(CHANNELS),
                    "batchWindowMs": self._settings.batch_window_ms,
                    "heartbeatIntervalMs": self._settings.heartbeat_interval_ms,
                    "serverTime": utc_timestamp(self._wall()),
                }
            ),
        )
        return conn

    async def serve(self, conn: Connection) -> None:
        """Read client frames until the socket closes, then release the connection."""
        ws = conn.ws
        try:
            while True:
                msg = await ws.receive()
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    conn.last_heard = self._stats.now()
                    if conn.rate_exceeded(
                        conn.last_heard,
                        self._settings.ws_rate_limit_messages,
                        self._settings.ws_rate_limit_window_s,
                    ):
                        await self._close(conn, CloseCode.POLICY_VIOLATION, CloseReason.RATE)
                        break
                    if kind is WSMsgType.BINARY:
                        self._send_error(conn, UNSUPPORTED_FRAME)
                    else:
                        self._handle_text(conn, msg.data)
                elif kind is WSMsgType.PING:
                    conn.last_heard = self._stats.now()
                    await ws.pong(msg.data)
                elif kind is WSMsgType.PONG:
                    conn.last_heard = self._stats.now()
                elif kind is WSMsgType.CLOSE:
                    if conn.close_reason is None:
                        conn.close_reason = msg.extra or "Client disconnect"
                        conn.close_code = int(msg.data) if msg.data else None
                    break
                else:  # CLOSING, CLOSED, ERROR (e.g. a frame over the size limit: 1009)
                    if kind is WSMsgType.ERROR and conn.close_reason is None:
                        conn.close_reason = str(msg.data) or "Protocol error"
                    break
        finally:
            self._release(conn)

    def _handle_text(self, conn: Connection, data: str | bytes) -> None:
        try:
            message = parse_client_message(data if isinstance(data, str) else data.decode())
        except ProtocolError as error:
            self._send_error(conn, error)
            return
        except UnicodeDecodeError:
            self._send_error(conn, ProtocolError(UNSUPPORTED_FRAME.code, "Text is not UTF-8"))
            return
        if message.type == "ping":
            self._send_control(
                conn,
                b'{"type":"pong","serverTime":"' + utc_timestamp(self._wall()).encode() + b'"}',
            )
        elif message.type == "resync":
            self._send_control(conn, SnapshotRequest(conn.channels))
        else:
            if message.unknown_channels:
                self._send_error(conn, unknown_channel_error(message.unknown_channels))
            self._change_channels(conn, message.type, frozenset(message.channels))

    def _change_channels(self, conn: Connection, kind: str, channels: frozenset[str]) -> None:
        before = conn.channels
        conn.channels = channel_set(before | channels if kind == "subscribe" else before - channels)
        ordered = [c for c in CHANNELS if c in conn.channels]
        if kind == "subscribe":
            log.info(
                f"[PortfolioStream] Client subscribed to channels: "
                f"{orjson.dumps(ordered).decode().replace(',', ', ')}",
                _userId=conn.user_id,
                _connectionId=conn.id,
            )
        self._send_control(conn, encode({"type": "subscribed", "channels": ordered}))
        added = conn.channels - before
        if added:
            self._send_control(conn, SnapshotRequest(frozenset(added)))

    def _send_error(self, conn: Connection, error: ProtocolError) -> None:
        self._send_control(conn, encode(error.frame()))

    def _release(self, conn: Connection) -> None:
        if self._connections.pop(conn.id, None) is None:
            return
        user_conns = self._by_user.get(conn.user_id)
        if user_conns is not None:
            user_conns.pop(conn.id, None)
            if not user_conns:
                del self._by_user[conn.user_id]
                self._batches.drop(conn.user_id)
        conn.pending = None
        conn.control = None
        duration = self._stats.connection_closed(conn.user_id, conn.started_at)
        code = conn.close_code if conn.close_code is not None else conn.ws.close_code
        if self._metrics is not None:
            self._metrics.connection_closed(code, duration)
        log.info(
            "[PortfolioStream] Client disconnected",
            userId=conn.user_id,
            code=code if code is not None else CloseCode.ABNORMAL,
            reason=conn.close_reason or "Connection lost",
            duration=f"{round(duration)}s",
            _connectionId=conn.id,
        )

    # Events and batching

    def _on_event(self, event: Event) -> None:
        payload = event.payload
        user_id = payload["userId"]
        if event.type == TRADE_EXECUTED:
            log.info(
                "[PortfolioStream] Processed trade:executed event",
                userId=user_id,
                symbol=payload["symbol"],
            )
        elif event.type == POSITION_UPDATED and (not event.quiet or log.debug_enabled):
            # Price ticks are DEBUG; skip even building the line when DEBUG is off.
            (log.debug if event.quiet else log.info)(
                "[PortfolioStream] Broadcast position update",
                userId=user_id,
                symbol=payload["symbol"],
                unrealizedPnl=payload["unrealizedPnl"],
            )
        if user_id in self._by_user:
            self._batches.add(user_id, event)

    def _fan_out(self, user_id: str, batch: Batch) -> None:
        conns = self._by_user.get(user_id)
        if not conns:
            return
        positions, orders, total = batch.summary()
        # A batch of nothing but price ticks is per-tick noise (one per tick at window 0).
        flushed = log.info if batch.loud else log.debug
        flushed(
            "[PortfolioStream] Batch flushed",
            userId=user_id,
            positionUpdates=positions,
            orderUpdates=orders,
            totalEvents=total,
        )
        # Serialize once per distinct channel set; most of a user's tabs share one.
        prepared: dict[frozenset[str], PreparedBatch | None] = {}
        ts = utc_timestamp(self._wall())
        for conn in conns.values():
            channels = conn.channels
            if not channels or not batch.event_count(channels):
                continue
            if conn.sending or conn.pending is not None:
                # Busy or not draining: fold into its coalesced pending state instead.
                conn.merge_pending(batch)
                self._schedule(conn)
                continue
            if channels not in prepared:
                body = batch.body(channels, ts)
                prepared[channels] = (
                    None if body is None else PreparedBatch(orjson.dumps(body), body["eventCount"])
                )
            ready = prepared[channels]
            if ready is not None:
                self._send_control(conn, ready)
        if prepared and batch.oldest_emit is not None and self._metrics is not None:
            self._metrics.observe_latency(self._wall() - batch.oldest_emit)

    # The writer

    def _send_control(self, conn: Connection, frame: ControlFrame) -> None:
        if conn.closing:
            return
        if self._can_write_now(conn):
            self._write_now(conn, frame)
            return
        if not conn.queue_control(frame):
            self._abort(conn, CloseCode.POLICY_VIOLATION, "Client is not reading")
            return
        self._schedule(conn)

    def _can_write_now(self, conn: Connection) -> bool:
        """Nothing queued ahead and nothing left unsent from before (the kernel took every byte
        so far): the frame can go out synchronously.

        This is the common case, and it spares a task and aiohttp's async send per message.
        The frame is written whole in one call, so it cannot interleave with aiohttp's own
        frames (pongs, the close frame), and ``ws.closed`` turns true as soon as a close
        starts. With permessage-deflate on, every frame goes through aiohttp's compressor.
        """
        if conn.sending or conn.control or not self._direct_writes or conn.ws.closed:
            return False
        transport = conn.transport
        return (
            transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() == 0
        )

    def _write_now(self, conn: Connection, item: ControlFrame) -> None:
        payload, deliveries, _ = self._render(conn, item)
        assert conn.transport is not None
        conn.transport.write(PING_FRAME if payload is None else text_frame(payload))
        if deliveries >= 0:
            self._stats.message_sent(deliveries)

    def _schedule(self, conn: Connection) -> None:
        if conn.sending or conn.closing:
            return
        conn.sending = True
        conn.send_started = self._stats.now()
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(self._write(conn))
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)

    async def _write(self, conn: Connection) -> None:
        """Drain a backed-up connection: control frames in order, then the coalesced batch.

        aiohttp's send waits while the socket is paused (``writer_limit`` is tiny), so a
        client that stops reading parks this task while new batches fold into ``pending``.
        """
        ws = conn.ws
        try:
            while not conn.closing and not ws.closed:
                if conn.control:
                    payload, deliveries, oldest = self._render(conn, conn.pop_control())
                elif conn.pending is not None and not conn.pending.is_empty():
                    payload, deliveries, oldest = self._render_pending(conn)
                    if payload is None:
                        continue
                else:
                    break
                # "Stuck" means one frame has not gone out for the heartbeat timeout; a writer
                # that stays busy because the stream never pauses is making progress.
                conn.send_started = self._stats.now()
                if payload is None:
                    await ws.ping()
                    continue
                await send_text(ws, payload)
                if deliveries >= 0:
                    self._stats.message_sent(deliveries)
                    if oldest is not None and self._metrics is not None:
                        self._metrics.observe_latency(self._wall() - oldest)
        except (ConnectionError, RuntimeError) as exc:
            # The peer went away mid-write (a writer parked in drain gets aiohttp's bare
            # ConnectionError("Connection lost")); the receive loop sees the close and releases it.
            log.debug("[PortfolioStream] Send failed", connectionId=conn.id, error=str(exc))
        except Exception:
            log.exception(
                "[PortfolioStream] Unexpected send error", connectionId=conn.id, userId=conn.user_id
            )
            self._abort(conn, CloseCode.GOING_AWAY, "Internal error")
        finally:
            conn.sending = False

    def _render(
        self, conn: Connection, item: ControlFrame
    ) -> tuple[bytes | None, int, float | None]:
        """A queued item as (text payload or None for a ping, event deliveries or -1 when it is
        not a data message, emit time to observe latency from)."""
        if isinstance(item, PreparedBatch):
            # Its latency was observed once for all of the user's tabs when it was flushed.
            return item.frame(conn.next_seq()), item.deliveries, None
        if isinstance(item, SnapshotRequest):
            body = self._portfolio.snapshot(conn.user_id, item.channels & conn.channels)
            return snapshot_message(conn.next_seq(), body), 0, None
        if isinstance(item, bytes):
            return item, -1, None
        return None, -1, None

    def _render_pending(self, conn: Connection) -> tuple[bytes | None, int, float | None]:
        pending = conn.pending
        assert pending is not None
        conn.pending = None
        body = pending.body(conn.channels, utc_timestamp(self._wall()))
        if body is None:
            return None, -1, None
        return batch_message(conn.next_seq(), body), body["eventCount"], pending.oldest_emit

    # Closing

    async def _close(self, conn: Connection, code: int, reason: str) -> None:
        if conn.closing:
            return
        conn.closing = True
        conn.close_code = code
        conn.close_reason = reason
        if conn.buffered_bytes() > self._settings.ws_send_buffer_bytes:
            # Not draining: a close frame would queue behind megabytes; drop the socket.
            self._abort(conn, code, reason)
            return
        try:
            await asyncio.wait_for(
                conn.ws.close(code=code, message=reason.encode()),
                timeout=max(self._settings.shutdown_timeout_s / 4, 0.25),
            )
        except (TimeoutError, ConnectionError, RuntimeError):
            self._abort(conn, code, reason)

    def _abort(self, conn: Connection, code: int, reason: str) -> None:
        conn.closing = True
        conn.close_code = code
        conn.close_reason = reason
        if conn.transport is not None:
            conn.transport.abort()

    # Heartbeat

    async def _heartbeat(self) -> None:
        """Ping each connection every interval; close those silent for the timeout or stuck.

        Each connection has its own ping phase (see ``admit``), so a sweep pings only the slice
        that is due: pinging thousands of sockets in one loop turn would stall every batch
        timer behind it.
        """
        interval = self._settings.heartbeat_interval_s
        timeout = self._settings.heartbeat_timeout_s
        tick = min(interval / 2, 1.0)
        while True:
            await asyncio.sleep(tick)
            now = self._stats.now()
            for conn in list(self._connections.values()):
                if conn.closing:
                    continue
                conn.forget_old_messages(now, self._settings.ws_rate_limit_window_s)
                stuck = conn.sending and now - conn.send_started > timeout
                if stuck or now - conn.last_heard > timeout:
                    log.info(
                        "[PortfolioStream] Closing unresponsive client",
                        userId=conn.user_id,
                        connectionId=conn.id,
                        silentFor=f"{now - conn.last_heard:.1f}s",
                        stuck=stuck,
                    )
                    if stuck:
                        self._abort(conn, CloseCode.HEARTBEAT_TIMEOUT, CloseReason.HEARTBEAT)
                    else:
                        closing = asyncio.ensure_future(
                            self._close(conn, CloseCode.HEARTBEAT_TIMEOUT, CloseReason.HEARTBEAT)
                        )
                        self._writers.add(closing)
                        closing.add_done_callback(self._writers.discard)
                elif now >= conn.next_ping:
                    conn.next_ping = now + interval
                    # Queued even while the writer is busy: control frames go out before the
                    # pending batch, and a client that never hears a ping never answers one.
                    self._send_control(conn, PING)
