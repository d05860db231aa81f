"""Malformed HTTP from an unauthenticated peer: 400, and the log grows by a bounded amount."""

from __future__ import annotations

import asyncio
import io
import itertools

from tests.app.support import Client
from tests.conftest import ClientFactory

GARBAGE = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
    # A good request, then a bad one on the same connection.
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP\r\n\r\n",
]


async def send_raw(client: Client, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)  # the server closes after a 400
    finally:
        writer.close()


async def test_malformed_requests_are_refused_without_filling_the_log(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await app_client()
    before = log_lines.getvalue()
    payloads = list(itertools.islice(itertools.cycle(GARBAGE), 500))
    for start in range(0, len(payloads), 50):
        answers = await asyncio.gather(*(send_raw(client, p) for p in payloads[start : start + 50]))
        assert all(b"400 Bad Request" in answer for answer in answers)
    assert (await client.get("/healthz")).status == 200
    grown = log_lines.getvalue()[len(before) :]
    assert "Traceback" not in grown
    assert " ERROR " not in grown
    # One line says it happened; the rest are counted, not written (at most a few lines).
    assert len(grown.splitlines()) <= 3, grown[:2000]
    assert len(grown) < 2000, grown[:2000]
    assert "Malformed HTTP request refused" in grown
