"""One accepted `/ws/portfolio` connection as the stream's hub tracks it.

Who it belongs to (and by which session), when it started and was last heard from, when its
next ping is due, its rate-limit histories (messages, and ping/pong frames apart), and the
writer everything sent to it goes through.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Final

from app.transport import ClientConnection
from app.writer import ConnectionWriter

# Eight hex characters after the timestamp, as in the runbook's ``conn_<epoch-ms>_<random>``.
CONNECTION_ID_RANDOM_BYTES: Final = 4


def new_connection_id(now_ms: int | None = None) -> str:
    """``conn_<epoch-ms>_<random>`` as in the runbook."""
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    return f"conn_{stamp}_{secrets.token_hex(CONNECTION_ID_RANDOM_BYTES)}"


class Connection:
    """State of one accepted WebSocket; owned by the PortfolioStreamManager."""

    __slots__ = (
        "_control_times",
        "_rate_times",
        "id",
        "last_heard",
        "next_ping",
        "socket",
        "started_at",
        "token_hash",
        "user_id",
        "writer",
    )

    def __init__(
        self,
        conn_id: str,
        user_id: str,
        socket: ClientConnection,
        writer: ConnectionWriter,
        started_at: float,
        token_hash: str = "",
    ) -> None:
        self.id = conn_id
        self.user_id = user_id
        # The session it was admitted with (its hash, as the store keys it); "" for none.
        self.token_hash = token_hash
        self.socket = socket
        self.writer = writer
        self.started_at = started_at
        self.last_heard = started_at
        self.next_ping = started_at
        # None while idle (memory per connection).
        self._rate_times: deque[float] | None = None
        self._control_times: deque[float] | None = None

    def rate_exceeded(self, now: float, limit: int, window_s: float) -> bool:
        """Record one client message; True when more than ``limit`` arrived within ``window_s``."""
        if self._rate_times is None:
            self._rate_times = deque(maxlen=limit)
        return _over(self._rate_times, now, limit, window_s)

    def control_rate_exceeded(self, now: float, limit: int, window_s: float) -> bool:
        """The same for one ping or pong frame, counted apart from messages."""
        if self._control_times is None:
            self._control_times = deque(maxlen=limit)
        return _over(self._control_times, now, limit, window_s)

    def forget_old_messages(self, now: float, window_s: float) -> None:
        """Drop the rate-limit histories once they are all outside the window (idle clients)."""
        times = self._rate_times
        if times is not None and now - times[-1] >= window_s:
            self._rate_times = None
        times = self._control_times
        if times is not None and now - times[-1] >= window_s:
            self._control_times = None

    def remembered_messages(self) -> int:
        """Client messages held for the rate limit (0 for an idle connection)."""
        return len(self._rate_times) if self._rate_times is not None else 0


def _over(times: deque[float], now: float, limit: int, window_s: float) -> bool:
    full = len(times) == limit
    oldest = times[0] if full else now
    times.append(now)
    return full and now - oldest < window_s
