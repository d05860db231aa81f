"""The outbound path of one `/ws/portfolio` connection: ordering, coalescing, slow clients.

Frames leave in the order they were offered, through one path per connection, so ``seq``
rises by one per snapshot/batch in send order. While the socket has taken every byte so far
(the common case; the kernel takes at most WS_SEND_BUFFER_BYTES unsent, see ``transport``) a
frame is written at once, without a task; otherwise one short-lived writer task per burst
sends what is queued. Control frames (replies, snapshots, pings, pongs) queue in order, up to
a limit past which the client is judged to have stopped reading and is dropped. Batches
offered while frames are still on their way fold into ``pending`` — the coalesced latest state,
bounded by the user's portfolio, never by the event rate — which follows the control frames
once the socket drains. Memory per connection stays flat however long the socket stalls.
"""

from __future__ import annotations

import asyncio
from collections import deque

from app.batching import Batch
from app.outgoing import (
    INTERNAL_ERROR,
    NOT_READING,
    PING,
    Outgoing,
    Pong,
    Rendered,
    SnapshotRequest,
    WriterContext,
)
from app.protocol import CloseCode, PreparedBatch, batch_message, snapshot_message
from app.transport import ClientSocket
from config.logging import get_logger, utc_timestamp

log = get_logger()

__all__ = ["PING", "ConnectionWriter", "Pong", "SnapshotRequest", "WriterContext"]


class ConnectionWriter:
    """Everything sent to one connection goes through here; owned by the stream's hub."""

    __slots__ = (
        "_busy_since",
        "_closing_task",
        "_context",
        "_control",
        "_pending",
        "_sending",
        "_seq",
        "channels",
        "close_code",
        "close_reason",
        "closing",
        "connection_id",
        "socket",
        "user_id",
    )

    def __init__(
        self, socket: ClientSocket, context: WriterContext, connection_id: str, user_id: str
    ) -> None:
        self.socket = socket
        self.connection_id = connection_id
        self.user_id = user_id
        # The subscription: what batches and snapshots are filtered by, when they are sent.
        self.channels: frozenset[str] = frozenset()
        self.closing = False
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._context = context
        self._seq = 0
        self._pending: Batch | None = None
        self._control: deque[Outgoing] | None = None  # None while idle (memory per connection)
        self._sending = False
        self._busy_since = 0.0
        self._closing_task: asyncio.Task[None] | None = None

    # Offering frames

    def send(self, item: Outgoing) -> None:
        """Send ``item`` after everything offered before it: now if the socket allows."""
        if self.closing:
            return
        if not self._sending and not self._control and self.socket.can_write_now():
            self._write_now(item)
            return
        control = self._control
        if control is None:
            control = self._control = deque()
        if len(control) >= self._context.max_queued_frames:
            self.abort(CloseCode.POLICY_VIOLATION, NOT_READING)
            return
        control.append(item)
        self._schedule()

    def fold_if_busy(self, batch: Batch) -> bool:
        """While frames are still on their way, fold ``batch`` into the coalesced pending
        state and return True; otherwise return False (the caller sends it itself)."""
        pending = self._pending
        if not self._sending and pending is None:
            return False
        if pending is None:
            pending = self._pending = Batch()
        pending.merge(batch, self.channels)
        self._schedule()
        return True

    def is_stuck(self, now: float, timeout_s: float) -> bool:
        """One frame has not gone out for ``timeout_s``. A writer that stays busy because the
        stream never pauses is making progress: every frame restarts the clock."""
        return self._sending and now - self._busy_since > timeout_s

    def is_busy(self) -> bool:
        return self._sending

    def discard(self) -> None:
        """Forget everything queued (the connection is gone)."""
        self._pending = None
        self._control = None

    # Closing

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code``; a socket that does not take the close frame in time is dropped."""
        if self.closing:
            return
        self._mark_closed(code, reason)
        await self._close(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        if self.socket.unsent_bytes() > self._context.abort_above_bytes:
            self.socket.abort()
            return
        try:
            await asyncio.wait_for(
                self.socket.close(code, reason), timeout=self._context.close_grace_s
            )
        except (TimeoutError, ConnectionError, RuntimeError):
            self.socket.abort()
            return
        await self.socket.linger()

    def start_close(self, code: int, reason: str) -> asyncio.Task[None] | None:
        """Close in the background (from a timer, another connection's event, or the receive
        loop, which then waits for it); None when a close was already decided."""
        if self.closing:
            return None
        self._mark_closed(code, reason)  # decided now: the disconnect line names this code
        task = self._context.tasks.spawn(self._close(code, reason), "ws-close")
        self._closing_task = task
        return task

    async def wait_closed(self) -> None:
        """Until a close started in the background has finished (it is bounded by the close
        grace): the receive loop waits for it, so the handshake is not cut short."""
        task = self._closing_task
        if task is not None and not task.done():
            await asyncio.wait([task])

    def abort(self, code: int, reason: str) -> None:
        self._mark_closed(code, reason)
        self.socket.abort()

    def note_close(self, code: int | None, reason: str) -> None:
        """Record how the client ended the connection, unless the server already decided."""
        if self.close_reason is None:
            self.close_reason = reason
            self.close_code = code

    def _mark_closed(self, code: int, reason: str) -> None:
        self.closing = True
        self.close_code = code
        self.close_reason = reason

    # Sending

    def _write_now(self, item: Outgoing) -> None:
        frame, deliveries, _ = self._render(item)
        if frame is None:
            return
        if type(frame) is bytes:
            self.socket.write_text(frame)
        elif isinstance(frame, Pong):
            self.socket.write_pong(frame.payload)
        else:
            self.socket.write_ping()
        if deliveries >= 0:
            self._context.message_sent(deliveries)

    def _schedule(self) -> None:
        if self._sending or self.closing:
            return
        self._sending = True
        self._busy_since = self._context.clock()
        self._context.tasks.spawn(self._drain(), "ws-writer")

    async def _drain(self) -> None:
        """Send what is queued: control frames in order, then the coalesced batch.

        The socket's send waits while it is paused, so a client that stops reading parks this
        task while new batches fold into ``pending``.
        """
        socket = self.socket
        context = self._context
        try:
            while not self.closing and not socket.closed:
                if self._control:
                    frame, deliveries, oldest = self._render(self._pop_control())
                elif self._pending is not None and not self._pending.is_empty():
                    rendered = self._render_pending()
                    if rendered is None:
                        continue
                    frame, deliveries, oldest = rendered
                else:
                    break
                if frame is None:
                    continue
                self._busy_since = context.clock()
                if type(frame) is not bytes:
                    await (
                        socket.send_pong(frame.payload)
                        if isinstance(frame, Pong)
                        else socket.send_ping()
                    )
                    continue
                await socket.send_text(frame)
                if deliveries >= 0:
                    context.message_sent(deliveries)
                    if oldest is not None and context.observe_latency is not None:
                        context.observe_latency(context.wall_clock() - oldest)
        except (ConnectionError, RuntimeError) as exc:
            # The peer went away mid-write (a send parked on a paused socket gets a bare
            # ConnectionError("Connection lost")); the receive loop sees the close and releases.
            log.debug(
                "[PortfolioStream] Send failed", connectionId=self.connection_id, error=str(exc)
            )
        except Exception:
            log.exception(
                "[PortfolioStream] Unexpected send error",
                connectionId=self.connection_id,
                userId=self.user_id,
            )
            self.abort(CloseCode.GOING_AWAY, INTERNAL_ERROR)
        finally:
            self._sending = False

    def _pop_control(self) -> Outgoing:
        control = self._control
        assert control
        item = control.popleft()
        if not control:
            self._control = None
        return item

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _render(self, item: Outgoing) -> tuple[Rendered, int, float | None]:
        """(text payload, or the control frame; event deliveries, or -1 when it is not a data
        message; emit time to observe latency from)."""
        if isinstance(item, PreparedBatch):
            # Its latency was observed once for all of the user's tabs when it was flushed.
            return item.frame(self._next_seq()), item.deliveries, None
        if isinstance(item, SnapshotRequest):
            body = self._context.snapshot(self.user_id, item.channels & self.channels)
            if body is None:
                return None, -1, None
            return snapshot_message(self._next_seq(), body), 0, None
        return item, -1, None

    def _render_pending(self) -> tuple[bytes, int, float | None] | None:
        pending = self._pending
        assert pending is not None
        self._pending = None
        body = pending.body(self.channels, utc_timestamp(self._context.wall_clock()))
        if body is None:
            return None
        return batch_message(self._next_seq(), body), body["eventCount"], pending.oldest_emit
