"""What the server does with each client message on `/ws/portfolio` (SPEC §4).

``subscribe`` answers ``subscribed`` with the connection's whole channel set, then a snapshot
of only the channels it added; ``unsubscribe`` answers ``subscribed``; ``resync`` answers a
fresh snapshot of every subscribed channel; ``ping`` answers ``pong``. Bad input is answered
with an ``error`` and harms nobody; more than the rate limit closes the connection with 1008.
Replies go through the connection's writer, so they keep their order with everything else.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from app.batching import channel_set
from app.connection import Connection
from app.protocol import (
    CHANNELS,
    UNSUPPORTED_FRAME,
    CloseCode,
    CloseReason,
    ProtocolError,
    error_message,
    parse_client_message,
    pong_message,
    subscribed_message,
    unknown_channel_error,
)
from app.writer import SnapshotRequest
from config.logging import get_logger, utc_timestamp

log = get_logger()


class ClientMessages:
    """The reactions, shared by every connection of the hub."""

    def __init__(
        self,
        *,
        rate_limit_messages: int,
        rate_limit_window_s: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._limit = rate_limit_messages
        self._window = rate_limit_window_s
        self._clock = clock
        self._wall = wall_clock

    async def handle(self, conn: Connection, data: str | bytes, *, binary: bool = False) -> bool:
        """React to one client data frame; False when it broke the rate limit and the
        connection was closed with 1008 (stop reading it)."""
        conn.last_heard = now = self._clock()
        if conn.rate_exceeded(now, self._limit, self._window):
            await conn.writer.close(CloseCode.POLICY_VIOLATION, CloseReason.RATE)
            return False
        if binary:
            self._send_error(conn, UNSUPPORTED_FRAME)
            return True
        try:
            message = parse_client_message(data if isinstance(data, str) else data.decode())
        except ProtocolError as error:
            self._send_error(conn, error)
            return True
        except UnicodeDecodeError:
            self._send_error(conn, ProtocolError(UNSUPPORTED_FRAME.code, "Text is not UTF-8"))
            return True
        writer = conn.writer
        if message.type == "ping":
            writer.send(pong_message(utc_timestamp(self._wall())))
        elif message.type == "resync":
            writer.send(SnapshotRequest(writer.channels))
        else:
            if message.unknown_channels:
                self._send_error(conn, unknown_channel_error(message.unknown_channels))
            self._change_channels(conn, message.type, frozenset(message.channels))
        return True

    def _change_channels(self, conn: Connection, kind: str, channels: frozenset[str]) -> None:
        writer = conn.writer
        before = writer.channels
        after = channel_set(before | channels if kind == "subscribe" else before - channels)
        writer.channels = after
        ordered = [c for c in CHANNELS if c in after]
        if kind == "subscribe":
            log.info(
                f"[PortfolioStream] Client subscribed to channels: "
                f"{orjson.dumps(ordered).decode().replace(',', ', ')}",
                _userId=conn.user_id,
                _connectionId=conn.id,
            )
        writer.send(subscribed_message(ordered))
        added = after - before
        if added:
            writer.send(SnapshotRequest(added))

    def _send_error(self, conn: Connection, error: ProtocolError) -> None:
        conn.writer.send(error_message(error))
