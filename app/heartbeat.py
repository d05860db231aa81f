"""The heartbeat (SPEC §4): ping each connection every interval, close the silent and the stuck.

"Silent": nothing (pong or message) heard for the timeout; closed with 4000 and a close frame.
"Stuck": one frame has not left its writer for the timeout (the socket holds more unsent than
WS_SEND_BUFFER_BYTES and does not drain, whether or not the client keeps talking); a close
frame would queue behind it, so the socket is dropped. Each connection has its own ping phase,
drawn when it is admitted, so a sweep pings only the slice that is due: pinging thousands of
sockets in one loop turn would stall every batch timer behind it. A sweep that fails is logged
with its traceback once, and sweeping goes on: a heartbeat that stopped would close nobody.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from app.connection import Connection
from app.protocol import CloseCode, CloseReason
from app.writer import PING
from config.logging import get_logger

log = get_logger()

# The first ping falls due between half an interval and a whole one after admission, so
# connections opened together (every browser reconnecting after a restart) ping apart.
FIRST_PING_PHASE: Final = (0.5, 1.0)
# Sweep at least twice per interval and at least once a second: a due ping or an expired
# timeout is acted on within half an interval, or a second.
SWEEPS_PER_INTERVAL: Final = 2
MAX_SWEEP_PERIOD_S: Final = 1.0


class Heartbeat:
    """Sweeps the hub's connections on an injectable clock."""

    def __init__(
        self,
        connections: Mapping[str, Connection],
        *,
        interval_s: float,
        timeout_s: float,
        rate_window_s: float,
        clock: Callable[[], float],
        phase: Callable[[float, float], float] = random.uniform,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._connections = connections
        self._interval = interval_s
        self._timeout = timeout_s
        self._rate_window = rate_window_s
        self._clock = clock
        self._phase = phase
        self._sleep = sleep

    def first_ping_at(self, started_at: float) -> float:
        return started_at + self._interval * self._phase(*FIRST_PING_PHASE)

    async def run(self) -> None:
        period = min(self._interval / SWEEPS_PER_INTERVAL, MAX_SWEEP_PERIOD_S)
        failing = False
        while True:
            await self._sleep(period)
            try:
                self.sweep(self._clock())
            except Exception:
                if not failing:  # once per run of failures, not once a second
                    log.exception("[PortfolioStream] Heartbeat sweep failed; still sweeping")
                failing = True
            else:
                failing = False

    def sweep(self, now: float) -> None:
        timeout = self._timeout
        for conn in list(self._connections.values()):
            writer = conn.writer
            if writer.closing:
                continue
            conn.forget_old_messages(now, self._rate_window)
            stuck = writer.is_stuck(now, timeout)
            if stuck or now - conn.last_heard > timeout:
                log.info(
                    "[PortfolioStream] Closing unresponsive client",
                    userId=conn.user_id,
                    connectionId=conn.id,
                    silentFor=f"{now - conn.last_heard:.1f}s",
                    stuck=stuck,
                )
                if stuck:
                    writer.abort(CloseCode.HEARTBEAT_TIMEOUT, CloseReason.HEARTBEAT)
                else:
                    writer.start_close(CloseCode.HEARTBEAT_TIMEOUT, CloseReason.HEARTBEAT)
            elif now >= conn.next_ping:
                conn.next_ping = now + self._interval
                # Queued even while the writer is busy: queued frames go out before the
                # coalesced batch, and a client that never hears a ping never answers one.
                writer.send(PING)
