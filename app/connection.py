"""One browser connection on `/ws/portfolio` and its outbound path.

Every frame to the client leaves through a single short-lived writer task per burst, so frames
are never interleaved and ``seq`` increases by one per snapshot/batch in send order. While the
socket is not draining, new batches are merged into ``pending`` — the coalesced latest state,
bounded by the user's portfolio — instead of growing a queue.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import WSMsgType, web

from app.batching import Batch
from app.protocol import PreparedBatch

if TYPE_CHECKING:
    from asyncio import Transport

# Control frames a connection may have queued before we judge it hostile (client requests are
# rate limited far below this, so only a client that never reads can fill it).
MAX_CONTROL_FRAMES: Final = 64


class _Ping:
    """Marker for a protocol-level ping in the control queue."""


PING: Final = _Ping()


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """A snapshot of ``channels``, built when it is sent so it is never stale."""

    channels: frozenset[str]


ControlFrame = bytes | SnapshotRequest | _Ping | PreparedBatch


def new_connection_id(now_ms: int | None = None) -> str:
    """``conn_<epoch-ms>_<random>`` as in the runbook."""
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    return f"conn_{stamp}_{secrets.token_hex(4)}"


class Connection:
    """State of one accepted WebSocket; owned by the PortfolioStreamManager."""

    __slots__ = (
        "channels",
        "close_code",
        "close_reason",
        "closing",
        "control",
        "id",
        "last_heard",
        "next_ping",
        "pending",
        "rate_times",
        "send_started",
        "sending",
        "seq",
        "started_at",
        "transport",
        "user_id",
        "ws",
    )

    def __init__(
        self,
        conn_id: str,
        user_id: str,
        ws: web.WebSocketResponse,
        transport: Transport | None,
        started_at: float,
    ) -> None:
        self.id = conn_id
        self.user_id = user_id
        self.ws = ws
        self.transport = transport
        self.started_at = started_at
        self.last_heard = started_at
        self.next_ping = started_at
        self.channels: frozenset[str] = frozenset()
        self.seq = 0
        self.pending: Batch | None = None
        self.control: deque[ControlFrame] | None = None
        self.sending = False
        self.send_started = 0.0
        self.closing = False
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.rate_times: deque[float] | None = None

    def buffered_bytes(self) -> int:
        """Bytes written but not yet accepted by the kernel (0 once the socket is gone)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return 0
        return int(getattr(transport, "get_write_buffer_size", lambda: 0)())

    def queue_control(self, frame: ControlFrame) -> bool:
        """Queue a control frame; False when the client has stopped reading entirely."""
        if self.control is None:
            self.control = deque()
        if len(self.control) >= MAX_CONTROL_FRAMES:
            return False
        self.control.append(frame)
        return True

    def merge_pending(self, batch: Batch) -> None:
        if self.pending is None:
            self.pending = Batch()
        self.pending.merge(batch, self.channels)

    def rate_exceeded(self, now: float, limit: int, window_s: float) -> bool:
        """Record one client message; True when more than ``limit`` arrived within ``window_s``."""
        times = self.rate_times
        if times is None:
            times = self.rate_times = deque(maxlen=limit)
        full = len(times) == limit
        oldest = times[0] if full else now
        times.append(now)
        return full and now - oldest < window_s

    def forget_old_messages(self, now: float, window_s: float) -> None:
        """Drop the rate-limit history once it is all outside the window (idle clients)."""
        times = self.rate_times
        if times is not None and now - times[-1] >= window_s:
            self.rate_times = None

    def pop_control(self) -> ControlFrame:
        control = self.control
        assert control
        item = control.popleft()
        if not control:
            self.control = None  # an idle connection keeps no deque (memory per connection)
        return item

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


async def send_text(ws: web.WebSocketResponse, data: bytes) -> None:
    await ws.send_frame(data, WSMsgType.TEXT)
