"""RFC 6455 edges of `/ws/portfolio` over a real socket: unmasked client frames, the exact size
limit, control-frame floods, and what the disconnect line records for each."""

from __future__ import annotations

import asyncio
import contextlib
import io

import aiohttp

from app.keys import STREAM_KEY
from tests.app.raw_client import CLOSE, PING, PONG, TEXT, RawClient, frame_bytes
from tests.app.support import (
    WS_PATH,
    Client,
    Session,
    connect,
    receive,
    receive_close,
    session_for,
    until,
)
from tests.conftest import ClientFactory

MAX_FRAME = 64 * 1024  # WS_MAX_MESSAGE_BYTES' default, documented as accepted
PAD = b'{"type":"ping","pad":"'


def ping_of_size(size: int) -> bytes:
    """A JSON ping of exactly ``size`` bytes."""
    return PAD + b"x" * (size - len(PAD) - 2) + b'"}'


async def raw_connection(client: Client, user: Session) -> RawClient:
    ws = await RawClient.connect(client.host, client.port, WS_PATH, user.headers)
    assert (await ws.receive_json())["type"] == "connected"
    return ws


async def close_frame(ws: RawClient) -> tuple[int, bytes]:
    """Read until the server's close frame: (code, reason)."""
    async with asyncio.timeout(5):
        while (frame := await ws.receive()).opcode != CLOSE:
            pass
    return frame.close_code, frame.payload[2:]


async def released(client: Client) -> None:
    await until(lambda: client.app[STREAM_KEY].active_connections == 0)


async def test_an_unmasked_client_frame_closes_1002(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await app_client()
    alice = await session_for(client, "alice")
    ws = await raw_connection(client, alice)
    await ws.send(TEXT, b'{"type":"ping"}', masked=False)
    assert await close_frame(ws) == (1002, b"Client frames must be masked")
    await released(client)
    assert "code=1002, reason=Client frames must be masked" in log_lines.getvalue()
    ws.abort()


async def test_masked_frames_split_anywhere_are_all_accepted(app_client: ClientFactory) -> None:
    """The mask check follows frames across reads: a header cut between two TCP segments,
    a long frame and many small ones in one segment are all fine."""
    client = await app_client()
    alice = await session_for(client, "alice")
    ws = await raw_connection(client, alice)
    frames = [ping_of_size(300), b'{"type":"ping"}', ping_of_size(70)]
    wire = b"".join(frame_bytes(TEXT, f) for f in frames) + frame_bytes(PING, b"hi")
    for cut in (1, 3, 7, len(wire) - 5):
        await ws.write_raw(wire[:cut])
        await asyncio.sleep(0.01)  # separate segments: the server reads each on its own
        await ws.write_raw(wire[cut:])
        answers = []
        while len(answers) < len(frames) + 1:
            frame = await ws.receive()
            answers.append(frame.opcode if frame.opcode != TEXT else frame.json()["type"])
        assert answers.count("pong") == len(frames) and PONG in answers
    ws.abort()


async def test_a_frame_of_exactly_the_limit_is_accepted(app_client: ClientFactory) -> None:
    client = await app_client()
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    await ws.send_bytes(ping_of_size(MAX_FRAME))  # binary frames are answered too
    assert (await receive(ws))["code"] == "unsupported_frame"
    await ws.send_str(ping_of_size(MAX_FRAME).decode())
    assert (await receive(ws))["type"] == "pong"
    await ws.close()


async def test_one_byte_over_the_limit_closes_1009_and_is_logged_as_1009(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await app_client()
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    await ws.send_str(ping_of_size(MAX_FRAME + 1).decode())
    msg = await receive_close(ws)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1009)
    await released(client)
    assert "Client disconnected: userId=" in log_lines.getvalue()
    assert "code=1009" in log_lines.getvalue()
    assert "code=1006" not in log_lines.getvalue()


async def test_a_ping_frame_flood_closes_1008_like_a_message_flood(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await app_client(ws_rate_limit_control_frames=20)
    alice = await session_for(client, "alice")
    ws = await raw_connection(client, alice)
    for _ in range(20):
        await ws.send(PING, b"")
        assert (await ws.receive()).opcode == PONG  # within the limit: answered
    with contextlib.suppress(ConnectionError):
        for _ in range(200):
            await ws.send(PING, b"")
    async with asyncio.timeout(5):
        while (frame := await ws.receive()).opcode == PONG:
            pass
    assert (frame.opcode, frame.close_code) == (CLOSE, 1008)
    await released(client)
    output = log_lines.getvalue()
    assert "code=1008, reason=Rate limit exceeded" in output
    assert " ERROR " not in output
    ws.abort()


async def test_a_flooder_that_reads_only_after_the_close_grace_still_gets_its_close_frame(
    app_client: ClientFactory,
) -> None:
    """Closing a socket the client is still sending on makes the kernel reset it, and a reset
    throws away the close frame the client has not read yet: the server keeps reading (and
    dropping) until the client stops, so the 1008 reaches it."""
    client = await app_client(shutdown_timeout_s=1)  # a close grace of a quarter second
    alice = await session_for(client, "alice")
    ws = await raw_connection(client, alice)
    loop = asyncio.get_running_loop()
    flooding_until = loop.time() + 1.0  # four times the grace
    burst = frame_bytes(PING, b"flood") * 200
    while loop.time() < flooding_until:
        await ws.write_raw(burst)
    async with asyncio.timeout(5):
        while (frame := await ws.receive()).opcode == PONG:
            pass
    assert (frame.opcode, frame.close_code) == (CLOSE, 1008)
    await ws.close()
    await released(client)


async def test_a_peer_that_vanishes_mid_ping_flood_is_released_without_a_traceback(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await app_client(ws_rate_limit_control_frames=100_000)
    alice = await session_for(client, "alice")
    ws = await raw_connection(client, alice)
    await ws.write_raw(frame_bytes(PING, b"x" * 100) * 5000)
    ws.abort()
    await released(client)
    output = log_lines.getvalue()
    assert "Traceback" not in output and " ERROR " not in output
