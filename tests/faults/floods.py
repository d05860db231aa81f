"""Floods a hostile client sends: protocol pings, login guesses, malformed HTTP requests.
Shared by the fault suite and ``make soak``."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter

import aiohttp

from tests.faults.clients import OP_CLOSE, OP_PING, RawWebSocket
from tests.faults.harness import Live


def ping_flood(
    host: str, port: int, headers: dict[str, str], seconds: float
) -> tuple[int, int | None]:
    """Protocol-level ping frames as fast as the socket takes them, never reading; returns
    (pings sent, the close code seen, or None if the server never closed)."""
    ws = RawWebSocket(host, port, headers)
    sent = 0
    deadline = time.monotonic() + seconds
    try:
        ws.sock.settimeout(1.0)
        while time.monotonic() < deadline:
            try:
                ws.send(OP_PING, b"flood")
            except (TimeoutError, OSError):
                break  # the server stopped reading or closed
            sent += 1
        ws.sock.settimeout(5)
        try:
            while True:
                opcode, payload = ws.frame()
                if opcode == OP_CLOSE:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                    return sent, code
        except (TimeoutError, OSError):
            return sent, None
    finally:
        ws.close()


def login_burst(
    live: Live, attempts: list[tuple[str, str]], source: str = "127.0.0.1"
) -> Counter[int]:
    """Every (username, password) attempt at once, from ``source``; the statuses answered."""

    async def burst() -> Counter[int]:
        base = live.server.base_url
        headers = {"Origin": base}
        connector = aiohttp.TCPConnector(limit=0, local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector) as http:

            async def attempt(username: str, password: str) -> int:
                body = {"username": username, "password": password}
                async with http.post(
                    f"{base}/api/auth/login", json=body, headers=headers
                ) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(attempt(u, p) for u, p in attempts))
        return Counter(statuses)

    return asyncio.run(burst())


MALFORMED = (
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",
)


def send_malformed(host: str, port: int, request: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(request)
        try:
            return sock.recv(200)
        except OSError:
            return b""
