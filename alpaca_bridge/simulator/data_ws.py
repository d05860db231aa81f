"""``GET /v2/{feed}``: Alpaca's real-time stock data websocket (research §4.2, §6.2).

The server greets first (``connected``), then expects ``auth``; subscriptions are answered with
the full current set. A client that sends ``Content-Type: application/msgpack`` (alpaca-py
always does) is spoken to in msgpack with Timestamp extensions; any other in JSON text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgpack
import orjson
from aiohttp import WSMsgType, web

from alpaca_bridge.simulator.market import Print
from alpaca_bridge.simulator.sockets import StateWatch, StreamSocket
from alpaca_bridge.simulator.stream_log import StreamLog, StreamRecord
from alpaca_bridge.simulator.trading_ws import AuthBehaviour, Authenticate
from alpaca_bridge.simulator.wire import rfc3339

FEEDS = frozenset({"iex", "sip", "delayed_sip", "test"})
CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds")
AUTH_TIMEOUT_S = 10.0
SYMBOL_LIMIT = 30  # the free IEX plan's limit for trades and quotes
HALF_SPREAD = Decimal("0.01")


@dataclass(eq=False, slots=True)
class DataConnection:
    socket: StreamSocket
    record: StreamRecord
    msgpack: bool
    feed: str
    api_key: str | None = None
    client_closed: bool = False  # the client sent a close frame
    channels: dict[str, set[str]] = field(default_factory=lambda: {c: set() for c in CHANNELS})

    def wants(self, channel: str, symbol: str) -> bool:
        symbols = self.channels[channel]
        return symbol in symbols or "*" in symbols

    def encode(self, messages: list[dict[str, Any]]) -> bytes | str:
        if self.msgpack:
            return msgpack.packb(messages)  # type: ignore[no-any-return]
        return orjson.dumps(messages, default=_json_default).decode()


def _json_default(value: object) -> object:
    if isinstance(value, msgpack.Timestamp):
        return rfc3339(value.to_unix_nano())
    raise TypeError(f"not serialisable: {value!r}")


def _trade(p: Print, at: msgpack.Timestamp) -> dict[str, Any]:
    return {
        "T": "t",
        "S": p.symbol,
        "i": p.trade_id,
        "x": "V",
        "p": float(p.price),
        "s": p.size,
        "t": at,
        "c": ["@"],
        "z": p.tape,
    }


def _quote(p: Print, at: msgpack.Timestamp) -> dict[str, Any]:
    return {
        "T": "q",
        "S": p.symbol,
        "bx": "V",
        "bp": float(p.price - HALF_SPREAD),
        "bs": 1 + p.size // 100,
        "ax": "V",
        "ap": float(p.price + HALF_SPREAD),
        "as": 1 + p.trade_id % 5,
        "t": at,
        "c": ["R"],
        "z": p.tape,
    }


class MarketDataHub:
    """Every data-stream connection and its subscriptions.

    With ``single_connection`` (Alpaca's rule on most plans) a key's second concurrent
    connection is refused at auth with error 406. An authenticated connection that ends without
    a close handshake (the client died, or the network did) keeps its key's slot taken for
    ``dead_slot_hold_s`` more, as Alpaca's reaping of half-dead connections does (about 90 s).
    """

    def __init__(
        self,
        authenticate: Authenticate,
        behaviour: dict[str, AuthBehaviour],
        *,
        single_connection: bool = True,
        dead_slot_hold_s: float = 0.0,
    ) -> None:
        self._authenticate = authenticate
        self._behaviour = behaviour  # shared with the trading hub: one switch per account
        self.single_connection = single_connection
        self.dead_slot_hold_s = dead_slot_hold_s
        self._connections: set[DataConnection] = set()
        self._held_until: dict[str, float] = {}  # key -> loop time its slot frees up
        self.watch = StateWatch()
        self.log = StreamLog("data")

    def connections(self, api_key: str | None = None) -> list[DataConnection]:
        """Open authenticated connections (of ``api_key``, when given)."""
        return [
            c
            for c in self._connections
            if c.api_key is not None
            and not c.socket.closed
            and (api_key is None or c.api_key == api_key)
        ]

    def held_for(self, api_key: str) -> float:
        """Seconds the key's slot stays taken by a dead connection (0 when free of one)."""
        left = self._held_until.get(api_key, 0.0) - asyncio.get_running_loop().time()
        return max(0.0, left)

    def hold(self, api_key: str, seconds: float) -> None:
        """Keep the key's slot taken for ``seconds`` from now (0 frees it)."""
        self._held_until[api_key] = asyncio.get_running_loop().time() + seconds
        self.watch.notify()

    def drop(self, api_key: str | None, how: str = "abort", code: int = 1000) -> int:
        """Cut authenticated connections: ``abort`` (no close frame: the slot is then held
        for ``dead_slot_hold_s``) or ``close`` with ``code``; returns how many."""
        if how not in ("abort", "close"):
            raise ValueError(f"unknown drop kind: {how!r}")
        dropped = self.connections(api_key)
        for conn in dropped:
            if how == "abort":
                conn.socket.abort()
            else:
                conn.socket.close(code)
        return len(dropped)

    def subscribed(self, symbol: str, channel: str = "trades") -> bool:
        return any(c.api_key and c.wants(channel, symbol) for c in self._connections)

    def publish(self, prints: Iterable[Print]) -> None:
        """Send each subscriber the trades (and quotes) it asked for, batched in one frame."""
        batch = list(prints)
        if not batch:
            return
        at = msgpack.Timestamp.from_unix_nano(time.time_ns())
        for conn in self._connections:
            if conn.api_key is None:
                continue
            messages = [_trade(p, at) for p in batch if conn.wants("trades", p.symbol)]
            messages += [_quote(p, at) for p in batch if conn.wants("quotes", p.symbol)]
            if messages:
                conn.socket.send(conn.encode(messages))

    async def close_all(self) -> None:
        await asyncio.gather(*(c.socket.finish() for c in list(self._connections)))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.match_info.get("feed") not in FEEDS:
            raise web.HTTPNotFound(
                text='{"code":404,"msg":"unknown feed"}', content_type="application/json"
            )
        use_msgpack = request.headers.get("Content-Type", "").startswith("application/msgpack")
        ws = web.WebSocketResponse(timeout=1.0)
        await ws.prepare(request)
        conn = DataConnection(
            StreamSocket(request, ws, binary=False),
            self.log.opened(request),
            use_msgpack,
            request.match_info["feed"],
        )
        self._connections.add(conn)
        conn.socket.send(conn.encode([{"T": "success", "msg": "connected"}]))
        try:
            await self._serve(conn, ws)
        finally:
            self._ended(conn, ws)
            self.watch.notify()
            await conn.socket.finish()
        return ws

    def _ended(self, conn: DataConnection, ws: web.WebSocketResponse) -> None:
        ended = conn.socket.ended_by_server or ("client_close" if conn.client_closed else "unclean")
        self.log.closed(conn.record, ended, ws.close_code)
        self._connections.discard(conn)
        if conn.api_key is not None and ended == "unclean" and self.dead_slot_hold_s > 0:
            self._held_until[conn.api_key] = (
                asyncio.get_running_loop().time() + self.dead_slot_hold_s
            )

    async def _serve(self, conn: DataConnection, ws: web.WebSocketResponse) -> None:
        tried_auth = False
        while not ws.closed:
            try:
                msg = await ws.receive(timeout=None if tried_auth else AUTH_TIMEOUT_S)
            except TimeoutError:
                self._error(conn, 404, "auth timeout", close=True)
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
            message = self._decode(msg.data)
            if not isinstance(message, dict) or not isinstance(message.get("action"), str):
                self._error(conn, 400, "invalid syntax")
                continue
            tried_auth |= message["action"] == "auth"
            self._on_message(conn, message)

    @staticmethod
    def _decode(data: bytes | str) -> object:
        try:
            if isinstance(data, bytes):
                return msgpack.unpackb(data)
            return orjson.loads(data)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            return None

    def _on_message(self, conn: DataConnection, message: dict[str, Any]) -> None:
        action = message["action"]
        if action == "auth":
            self._on_auth(conn, message)
        elif conn.api_key is None:
            self._error(conn, 401, "not authenticated")
        elif action in ("subscribe", "unsubscribe"):
            self._on_subscription(conn, message, add=action == "subscribe")
        else:
            self._error(conn, 400, "invalid syntax")

    def _on_auth(self, conn: DataConnection, message: dict[str, Any]) -> None:
        if conn.api_key is not None:
            self._error(conn, 403, "already authenticated")
            return
        key, secret = str(message.get("key") or ""), str(message.get("secret") or "")
        behaviour = self._behaviour.get(key, "ok")
        if behaviour == "silent":
            return
        if behaviour != "ok" or not self._authenticate(key, secret):
            self._error(conn, 402, "auth failed", close=True)
            return
        if self.single_connection and (
            any(c.api_key == key for c in self._connections) or self.held_for(key) > 0
        ):
            self._error(conn, 406, "connection limit exceeded", close=True)
            return
        conn.api_key = key
        self.log.authenticated(conn.record, key)
        conn.socket.send(conn.encode([{"T": "success", "msg": "authenticated"}]))
        self.watch.notify()

    def _on_subscription(self, conn: DataConnection, message: dict[str, Any], *, add: bool) -> None:
        requested: dict[str, set[str]] = {}
        for channel in CHANNELS:
            symbols = message.get(channel) or []
            if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
                self._error(conn, 400, "invalid syntax")
                return
            requested[channel] = set(symbols)
        if add and conn.feed == "iex":
            wanted = (
                conn.channels["trades"]
                | requested["trades"]
                | conn.channels["quotes"]
                | requested["quotes"]
            ) - {"*"}
            if len(wanted) > SYMBOL_LIMIT:
                self._error(conn, 405, "symbol limit exceeded")
                return
        for channel, symbols in requested.items():
            if add:
                conn.channels[channel] |= symbols
            else:
                conn.channels[channel] -= symbols
        ack: dict[str, Any] = {"T": "subscription"}
        ack.update({c: sorted(conn.channels[c]) for c in CHANNELS})
        ack["corrections"] = ack["cancelErrors"] = sorted(conn.channels["trades"])
        if any(conn.channels.values()):
            self.log.listening(conn.record)
        conn.socket.send(conn.encode([ack]))
        self.watch.notify()

    def _error(self, conn: DataConnection, code: int, text: str, *, close: bool = False) -> None:
        conn.socket.send(conn.encode([{"T": "error", "code": code, "msg": text}]))
        if close:
            conn.socket.close(1008, text)
