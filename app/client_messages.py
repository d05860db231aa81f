"""What the server does with each frame a client sends on `/ws/portfolio` (SPEC §4).

``subscribe`` answers ``subscribed`` with the connection's whole channel set, then a snapshot
of only the channels it added; ``unsubscribe`` answers ``subscribed``; ``resync`` answers a
fresh snapshot of every subscribed channel; ``ping`` answers ``pong``. Bad input is answered
with an ``error`` and harms nobody; more than the rate limit closes the connection with 1008.
A ping frame is answered with a pong; ping and pong frames have a rate limit of their own,
since a flood of them costs the server as much as one of messages. Replies go through the
connection's writer, so they keep their order with everything else and never hold up reading.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from aiohttp import WebSocketError, WSMessage, WSMsgType

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
from app.writer import Pong, SnapshotRequest
from config.logging import get_logger, utc_timestamp

log = get_logger()


class ClientMessages:
    """The reactions, shared by every connection of the hub."""

    def __init__(
        self,
        *,
        rate_limit_messages: int,
        rate_limit_control_frames: int,
        rate_limit_window_s: float,
        max_message_bytes: int,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._limit = rate_limit_messages
        self._control_limit = rate_limit_control_frames
        self._window = rate_limit_window_s
        self._max_bytes = max_message_bytes
        self._clock = clock
        self._wall = wall_clock

    def on_frame(self, conn: Connection, msg: WSMessage) -> bool:
        """React to one frame from the client; False once the connection is over (closed by
        the client, being closed by the server, or lost): stop reading it."""
        kind = msg.type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            return self.handle(conn, msg.data, binary=kind is WSMsgType.BINARY)
        if kind is WSMsgType.PING or kind is WSMsgType.PONG:
            conn.last_heard = now = self._clock()
            if conn.control_rate_exceeded(now, self._control_limit, self._window):
                conn.writer.start_close(CloseCode.POLICY_VIOLATION, CloseReason.RATE)
                return False
            if kind is WSMsgType.PING:
                conn.writer.send(Pong(msg.data))
            return True
        if kind is WSMsgType.CLOSE:
            code = int(msg.data) if msg.data else None
            conn.writer.note_close(code, msg.extra or "Client disconnect")
        elif kind is WSMsgType.ERROR:
            # aiohttp's reader refused a frame (over the size limit: 1009; broken: 1002) and
            # has closed the socket with that code.
            error = msg.data
            code = error.code if isinstance(error, WebSocketError) else None
            conn.writer.note_close(code, str(error) or "Protocol error")
        return False  # CLOSE, CLOSING, CLOSED, ERROR

    def handle(self, conn: Connection, data: str | bytes, *, binary: bool = False) -> bool:
        """React to one client data frame; False when it broke a limit and the connection is
        being closed (1008 for the rate, 1009 for a message inflated past the size limit)."""
        conn.last_heard = now = self._clock()
        if conn.rate_exceeded(now, self._limit, self._window):
            conn.writer.start_close(CloseCode.POLICY_VIOLATION, CloseReason.RATE)
            return False
        if len(data) > self._max_bytes:
            conn.writer.start_close(CloseCode.MESSAGE_TOO_BIG, CloseReason.TOO_BIG)
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
