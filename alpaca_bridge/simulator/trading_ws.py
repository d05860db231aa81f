"""``GET /stream``: Alpaca's ``trade_updates`` websocket, as paper trading speaks it.

No welcome frame; the client authenticates in-band (both the alpaca-py 0.44.0 shape and the
current docs' shape), then ``listen``s. Server frames are one JSON object each, sent as BINARY
frames like paper (TEXT like live on request). Events reach only connections listening at that
moment: nothing is replayed after a reconnect (research §3.1, §6.1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiohttp import WSMsgType, web

from alpaca_bridge.simulator.sockets import StateWatch, StreamSocket
from alpaca_bridge.simulator.stream_log import StreamLog, StreamRecord
from alpaca_bridge.simulator.wire import Json

AuthBehaviour = Literal["ok", "reject", "silent"]
Authenticate = Callable[[str, str], bool]
Reorder = Callable[[list[Json]], list[Json]]
AUTH_TIMEOUT_S = 10.0  # a socket that never even tries to authenticate is closed
STREAMS = frozenset({"trade_updates"})


@dataclass(eq=False, slots=True)
class TradingConnection:
    socket: StreamSocket
    record: StreamRecord
    api_key: str | None = None  # set once authorized
    listening: bool = False
    client_closed: bool = False  # the client sent a close frame


def _frame(payload: Json) -> str:
    return orjson.dumps(payload).decode()


def _credentials(message: Mapping[str, Any]) -> tuple[str, str]:
    """Key and secret from either auth shape; empty strings when absent."""
    data = message.get("data")
    if isinstance(data, Mapping):
        return str(data.get("key_id") or ""), str(data.get("secret_key") or "")
    return str(message.get("key") or ""), str(message.get("secret") or "")


class TradingStreamHub:
    """Every ``/stream`` connection, and the per-key rules of who may connect."""

    def __init__(
        self, authenticate: Authenticate, *, binary: bool = True, single_connection: bool = True
    ) -> None:
        self._authenticate = authenticate
        self.binary = binary
        self.single_connection = single_connection
        self.behaviour: dict[str, AuthBehaviour] = {}
        self._connections: set[TradingConnection] = set()
        self._held_until: dict[str, float] = {}  # key -> loop time it may connect again
        self._withheld: dict[str, list[Json]] = {}  # key -> updates kept back, in announce order
        self.watch = StateWatch()
        self.log = StreamLog("trading")

    def connections(self, api_key: str | None = None) -> list[TradingConnection]:
        return [
            c
            for c in self._connections
            if not c.socket.closed and (api_key is None or c.api_key == api_key)
        ]

    def listening(self, api_key: str) -> bool:
        return any(c.listening for c in self.connections(api_key))

    def publish(self, api_key: str, payload: Json) -> None:
        """Send a ``trade_updates`` message to the account's listening connections, if any."""
        withheld = self._withheld.get(api_key)
        if withheld is not None:
            withheld.append(payload)
            return
        self.send_raw(api_key, _frame(payload))

    def withhold(self, api_key: str) -> None:
        """Keep the key's updates back (announced, not yet delivered) until ``release``."""
        self._withheld.setdefault(api_key, [])

    def release(self, api_key: str, reorder: Reorder | None = None) -> list[Json]:
        """Deliver what was kept back, in the order ``reorder`` gives (it may also drop or
        repeat messages), and stop withholding; returns what was delivered."""
        kept = self._withheld.pop(api_key, [])
        delivered = kept if reorder is None else reorder(list(kept))
        for payload in delivered:
            self.publish(api_key, payload)
        return delivered

    def send_raw(self, api_key: str, frame: bytes | str) -> None:
        """Send any frame (e.g. a ``b"\\x01"`` heartbeat or a malformed payload) to listeners."""
        for conn in self.connections(api_key):
            if conn.listening:
                conn.socket.send(frame)

    def set_frame_type(self, frame_type: Literal["binary", "text"]) -> None:
        self.binary = frame_type == "binary"
        for conn in self._connections:
            conn.socket.binary = self.binary

    def drop(
        self, api_key: str | None, how: str = "abort", code: int = 1000, hold_s: float = 0.0
    ) -> int:
        """Cut connections: ``abort`` (TCP reset) or ``close`` with ``code``; returns how many.

        ``how`` may also be the code itself ("1000", "1001", "1011"). ``hold_s`` keeps the
        key's slot taken afterwards, like Alpaca's reaping of half-dead connections, so a
        prompt reconnect is refused (429 before the upgrade, or a 1008 close after auth).
        """
        if how.isdigit():
            how, code = "close", int(how)
        if how not in ("abort", "close"):
            raise ValueError(f"unknown drop kind: {how!r}")
        dropped = self.connections(api_key)
        held = {c.api_key for c in dropped if c.api_key is not None}
        if api_key is not None:
            held.add(api_key)
        if hold_s > 0:
            for key in held:
                self.refuse(key, hold_s)
        for conn in dropped:
            if how == "abort":
                conn.socket.abort()
            else:
                conn.socket.close(code, "going away" if code == 1001 else "")
        return len(dropped)

    def refuse(self, api_key: str, seconds: float) -> None:
        """Refuse the key's connections for ``seconds`` from now (0 lifts a refusal)."""
        self._held_until[api_key] = asyncio.get_running_loop().time() + seconds

    def refused_for(self, api_key: str) -> float:
        """Seconds the key's connections are still refused for (0 when not)."""
        left = self._held_until.get(api_key, 0.0) - asyncio.get_running_loop().time()
        return max(0.0, left)

    async def close_all(self) -> None:
        await asyncio.gather(*(c.socket.finish() for c in list(self._connections)))

    def _slot_taken(self, api_key: str, conn: TradingConnection | None = None) -> bool:
        if self.refused_for(api_key) > 0:
            return True
        if not self.single_connection:
            return False
        return any(c is not conn for c in self.connections(api_key))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # A key sent in the handshake headers lets the limit be enforced before the upgrade,
        # as Alpaca does with HTTP 429; in-band-only clients are limited after auth instead.
        header_key = request.headers.get("APCA-API-KEY-ID")
        if header_key and self._slot_taken(header_key):
            raise web.HTTPTooManyRequests(
                text='{"code":42910000,"message":"connection limit exceeded"}',
                content_type="application/json",
            )
        ws = web.WebSocketResponse(timeout=1.0)
        await ws.prepare(request)
        conn = TradingConnection(
            StreamSocket(request, ws, binary=self.binary), self.log.opened(request)
        )
        self._connections.add(conn)
        try:
            await self._serve(conn, ws)
        finally:
            ended = conn.socket.ended_by_server or (
                "client_close" if conn.client_closed else "unclean"
            )
            self.log.closed(conn.record, ended, ws.close_code)
            self._connections.discard(conn)
            self.watch.notify()
            await conn.socket.finish()
        return ws

    async def _serve(self, conn: TradingConnection, ws: web.WebSocketResponse) -> None:
        tried_auth = False
        while not ws.closed:
            timeout = None if tried_auth else AUTH_TIMEOUT_S
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                conn.socket.close(1008, "auth timeout")
                continue
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                conn.client_closed |= msg.type == WSMsgType.CLOSE
                if msg.type in (
                    WSMsgType.CLOSE,
                    WSMsgType.CLOSING,
                    WSMsgType.CLOSED,
                    WSMsgType.ERROR,
                ):
                    return
                continue
            try:
                message = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                continue  # Alpaca ignores garbage on this stream
            if isinstance(message, dict):
                tried_auth |= message.get("action") in ("auth", "authenticate")
                self._on_message(conn, message)

    def _on_message(self, conn: TradingConnection, message: dict[str, Any]) -> None:
        action = message.get("action")
        if action in ("auth", "authenticate"):
            self._on_auth(conn, message)
        elif action == "listen":
            self._on_listen(conn, message)

    def _on_auth(self, conn: TradingConnection, message: Mapping[str, Any]) -> None:
        key, secret = _credentials(message)
        behaviour = self.behaviour.get(key, "ok")
        if behaviour == "silent":
            return
        if behaviour == "ok" and self._authenticate(key, secret):
            if self._slot_taken(key, conn):
                conn.socket.close(1008, "connection limit exceeded")
                return
            conn.api_key = key
            self.log.authenticated(conn.record, key)
            conn.socket.send(
                _frame(
                    {
                        "stream": "authorization",
                        "data": {"status": "authorized", "action": "authenticate"},
                    }
                )
            )
            self.watch.notify()
            return
        conn.socket.send(
            _frame(
                {
                    "stream": "authorization",
                    "data": {
                        "action": "authenticate",
                        "message": "access key verification failed",
                        "status": "unauthorized",
                    },
                }
            )
        )
        conn.socket.close(1008, "access key verification failed")

    def _on_listen(self, conn: TradingConnection, message: Mapping[str, Any]) -> None:
        if conn.api_key is None:
            conn.socket.send(
                _frame(
                    {
                        "stream": "authorization",
                        "data": {"status": "unauthorized", "action": "listen"},
                    }
                )
            )
            return
        data = message.get("data")
        wanted = data.get("streams") if isinstance(data, Mapping) else None
        streams = [s for s in wanted if s in STREAMS] if isinstance(wanted, list) else []
        conn.listening = "trade_updates" in streams
        if conn.listening:
            self.log.listening(conn.record)
        conn.socket.send(_frame({"stream": "listening", "data": {"streams": streams}}))
        self.watch.notify()
