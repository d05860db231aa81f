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

    async def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            head = bytes((0x80 | opcode, 0x80 | size))
        else:
            head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._writer.write(head + mask + masked)
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
