"""A WebSocket client that reads only when the test asks it to (RFC 6455 spoken by hand).

A browser whose tab is frozen, or whose link is narrow, stops taking bytes; so does this
client between ``receive`` calls. Its socket has a small receive buffer and its stream reader
stops reading after a couple of kilobytes, so the server's side fills after a few frames
instead of megabytes.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from typing import Any

import orjson

from tests.ws_handshake import upgrade_request

SMALL_BUFFER = 4096
READER_LIMIT = 1024  # the stream reader pauses its transport beyond twice this

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes

    def json(self) -> dict[str, Any]:
        assert self.opcode == TEXT, self
        data: dict[str, Any] = orjson.loads(self.payload)
        return data

    @property
    def close_code(self) -> int:
        assert self.opcode == CLOSE, self
        return int.from_bytes(self.payload[:2], "big")


def small_buffer_listener(host: str, port: int, family: socket.AddressFamily) -> socket.socket:
    """The test server's listening socket. Linux copies its buffer sizes to every socket it
    accepts, so the server's send buffer is as small as the client's receive buffer."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    sock.bind((host, port))
    return sock


def frame_bytes(opcode: int, payload: bytes, *, masked: bool = True) -> bytes:
    """A client frame as it goes on the wire (masked, as RFC 6455 requires, unless told)."""
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((0x80 | opcode, mask_bit | size))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, mask_bit | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, mask_bit | 127)) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = os.urandom(4)
    # XOR as one big integer: a 64 KiB frame is masked at once, not byte by byte.
    key = int.from_bytes((mask * (size // 4 + 1))[:size], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(size, "big")


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, path: str, headers: dict[str, str]) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=READER_LIMIT)
        writer.write(upgrade_request(host, port, path, headers))
        response = await reader.readuntil(b"\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 101"), response
        return cls(reader, writer)

    async def receive(self) -> Frame:
        """The next frame (server frames are unmasked and, from aiohttp, unfragmented)."""
        head = await self._reader.readexactly(2)
        assert head[0] & 0x80, "unfragmented"
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await self._reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self._reader.readexactly(8), "big")
        return Frame(head[0] & 0x0F, await self._reader.readexactly(length))

    async def receive_json(self) -> dict[str, Any]:
        """The next text message; pings met on the way are answered."""
        while (frame := await self.receive()).opcode == PING:
            await self.send(PONG, frame.payload)
        return frame.json()

    async def send(self, opcode: int, payload: bytes, *, masked: bool = True) -> None:
        """One frame; ``masked=False`` breaks RFC 6455 §5.1 as a broken client would."""
        self._writer.write(frame_bytes(opcode, payload, masked=masked))
        await self._writer.drain()

    async def write_raw(self, data: bytes) -> None:
        """Bytes as they are: several frames at once, or part of one."""
        self._writer.write(data)
        await self._writer.drain()

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send(TEXT, orjson.dumps(message))

    async def subscribe(self, channels: list[str]) -> None:
        await self.send_json({"type": "subscribe", "channels": channels})
        assert (await self.receive_json())["type"] == "subscribed"
        assert (await self.receive_json())["type"] == "snapshot"

    def abort(self) -> None:
        """Vanish without a close frame (a laptop lid shut, a dropped link)."""
        transport = self._writer.transport
        assert isinstance(transport, asyncio.Transport)
        transport.abort()

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()
