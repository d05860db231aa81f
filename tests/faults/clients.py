"""Clients of `/ws/portfolio` as a hostile peer and as a browser see it.

``RawWebSocket`` speaks RFC 6455 on a blocking socket so a test can send anything — unmasked
or oversized frames, binary, junk, nothing at all — and read exactly what the server answers.
``Watcher`` is the browser-like neighbour: it runs on its own thread and loop, subscribes to
every channel and records each snapshot and batch (the server's ``ts`` and ``seq``, and the
latest state it was shown), so a test can measure its gaps and count what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import orjson

from tests.ws_handshake import upgrade_request

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_PATH = "/ws/portfolio"
ALL_CHANNELS = ["positions", "orders", "account"]


def dumps_message(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


class Closed(Exception):
    """The server closed the connection: ``code`` from its close frame, None when it dropped
    the TCP connection without one."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


def encode_frame(
    opcode: int, payload: bytes, *, masked: bool = True, fin: bool = True, rsv: int = 0
) -> bytes:
    head = bytes(((0x80 if fin else 0) | (rsv << 4) | opcode,))
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head += bytes((mask_bit | size,))
    elif size < 1 << 16:
        head += bytes((mask_bit | 126,)) + size.to_bytes(2, "big")
    else:
        head += bytes((mask_bit | 127,)) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    """One blocking connection; ``status`` is the handshake's HTTP status (101 when upgraded)."""

    def __init__(
        self,
        host: str,
        port: int,
        headers: dict[str, str],
        *,
        path: str = WS_PATH,
        timeout: float = 5.0,
        receive_buffer: int | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            # Before connect, so the window the server sees is this small from the start.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.sock.sendall(upgrade_request(host, port, path, headers))
        self._buffer = b""
        head = self._read_until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.head = head.decode("latin-1")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed(None, "connection dropped")
        self._buffer += chunk

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def send(self, opcode: int, payload: bytes, **options: Any) -> None:
        self.sock.sendall(encode_frame(opcode, payload, **options))

    def send_text(self, text: str | bytes) -> None:
        self.send(OP_TEXT, text.encode() if isinstance(text, str) else text)

    def frame(self, timeout: float | None = None) -> tuple[int, bytes]:
        """The next frame (opcode, payload); TimeoutError when none arrives in time."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        first, second = self._take(2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(self._take(2), "big")
        elif size == 127:
            size = int.from_bytes(self._take(8), "big")
        return first & 0x0F, self._take(size)

    def message(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next JSON text message, answering pings on the way; Closed on a close frame."""
        deadline = time.monotonic() + timeout
        while True:
            opcode, payload = self.frame(max(deadline - time.monotonic(), 0.001))
            if opcode == OP_TEXT:
                decoded: dict[str, Any] = orjson.loads(payload)
                return decoded
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                raise Closed(code, payload[2:].decode("utf-8", "replace"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def server_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Seen:
    """What a watcher was shown: messages in order and the latest state per key."""

    batches: list[tuple[float, float, int]] = field(default_factory=list)  # (received, ts, seq)
    seqs: list[int] = field(default_factory=list)
    positions: dict[str, dict[str, Any]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    order_updates: int = 0
    close_code: int | None = None  # set when the server ended the connection
    errors: list[str] = field(default_factory=list)

    def largest_gap_s(self) -> float:
        """Largest interval between consecutive batches, by the server's own ``ts``."""
        stamps = [ts for _, ts, _ in self.batches]
        return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)

    def seq_contiguous(self) -> bool:
        return self.seqs == list(range(1, len(self.seqs) + 1))


class Watcher:
    """A browser-like subscriber on its own thread (see the module docstring)."""

    def __init__(self, base_url: str, cookie: str, *, channels: list[str] | None = None) -> None:
        self.base_url = base_url
        self.cookie = cookie
        self.channels = channels or ALL_CHANNELS
        self.seen = Seen()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        if not self._ready.wait(15):
            raise AssertionError(f"watcher never got its snapshot: {self.seen.errors}")
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> Seen:
        if self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        return self.seen

    def snapshot(self) -> Seen:
        with self._lock:
            return Seen(
                list(self.seen.batches),
                list(self.seen.seqs),
                dict(self.seen.positions),
                dict(self.seen.orders),
                self.seen.order_updates,
                self.seen.close_code,
                list(self.seen.errors),
            )

    def wait(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.snapshot()):
                return
            time.sleep(0.05)
        raise AssertionError(f"watcher: timed out waiting for {what}: {self.snapshot()}")

    def _run(self) -> None:
        self._loop.run_until_complete(self._watch())
        self._loop.close()

    async def _watch(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(
                    self.base_url + WS_PATH, headers={"Cookie": self.cookie}, heartbeat=None
                ) as ws,
            ):
                await ws.send_json({"type": "subscribe", "channels": self.channels})
                reader = asyncio.ensure_future(self._read(ws))
                stop = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait([reader, stop], return_when=asyncio.FIRST_COMPLETED)
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        except Exception as exc:  # reported by the test's assertions
            self.seen.errors.append(repr(exc))
        finally:
            self._ready.set()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            message = orjson.loads(msg.data)
            with self._lock:
                self._apply(message)
            if message["type"] == "snapshot":
                self._ready.set()
        self.seen.close_code = ws.close_code

    def _apply(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind not in ("snapshot", "batch"):
            if kind == "error":
                self.seen.errors.append(message["code"])
            return
        self.seen.seqs.append(message["seq"])
        if kind == "batch":
            self.seen.batches.append((time.monotonic(), server_time(message["ts"]), message["seq"]))
        for position in message.get("positions", []):
            self.seen.positions[position["symbol"]] = position
        for symbol in message.get("closedPositions", []):
            self.seen.positions.pop(symbol, None)
        for order in message.get("orders", []):
            self.seen.order_updates += 1
            self.seen.orders[order["orderId"]] = order


@dataclass
class Member:
    """One connection of a crowd: what it received and how it ended."""

    user: str
    messages: int = 0
    batches: int = 0
    close_code: int | None = None
    ended: bool = False


class Crowd:
    """Many browser-like connections on one thread and loop, each subscribed to everything."""

    def __init__(self, base_url: str, cookies: list[tuple[str, str]]) -> None:
        self.base_url = base_url
        self.members = [Member(user) for user, _ in cookies]
        self._cookies = [cookie for _, cookie in cookies]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="crowd", daemon=True)
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Future[None]] = []

    def __enter__(self) -> Crowd:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._connect_all(), self._loop).result(120)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _connect_all(self) -> None:
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        opened: list[asyncio.Future[None]] = []
        for member, cookie in zip(self.members, self._cookies, strict=True):
            ready: asyncio.Future[None] = self._loop.create_future()
            self._tasks.append(asyncio.ensure_future(self._member(member, cookie, ready)))
            opened.append(ready)
        await asyncio.gather(*opened)

    async def _member(self, member: Member, cookie: str, ready: asyncio.Future[None]) -> None:
        assert self._http is not None
        try:
            async with self._http.ws_connect(
                self.base_url + WS_PATH, headers={"Cookie": cookie}, heartbeat=None
            ) as ws:
                await ws.send_json({"type": "subscribe", "channels": ALL_CHANNELS})
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        break
                    member.messages += 1
                    kind = orjson.loads(msg.data)["type"]
                    member.batches += kind == "batch"
                    if kind == "snapshot" and not ready.done():
                        ready.set_result(None)
                member.close_code = ws.close_code
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
        finally:
            member.ended = True
            if not ready.done():
                ready.set_exception(AssertionError(f"{member.user}: closed before its snapshot"))

    async def _close_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    def wait_ended(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(m.ended for m in self.members):
            time.sleep(0.02)

    def close_codes(self) -> dict[int | None, int]:
        codes: dict[int | None, int] = {}
        for member in self.members:
            key = None if member.close_code is None else int(member.close_code)
            codes[key] = codes.get(key, 0) + 1
        return codes
