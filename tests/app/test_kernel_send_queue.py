"""The slow-consumer bound counts what the kernel holds (SPEC §4, WS_SEND_BUFFER_BYTES).

On an ordinary socket Linux lets the send buffer of a client that stopped reading grow to
megabytes, each frame waiting there on its own. Here the server's listener is left as it is
(the test client alone has a small receive buffer), and the server's kernel send queue is read
from /proc/net/tcp while the client is paused: it stays within the bound plus one frame, the
paused client gets a few batches and then one coalesced one when it reads again, and one that
keeps talking while never reading is closed once stuck past the heartbeat timeout."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import pytest

from app.keys import STREAM_KEY
from tests.app.support import Client, session_for, until
from tests.app.test_slow_consumer import (
    fill_until_stuck,
    publish_round,
    read_until_converged,
    stalled_client,
)
from tests.conftest import ClientFactory
from tests.kernel_sockets import established_sockets

SEND_BUFFER = 16 * 1024
# A frame written whole when the kernel still had room may take it past the bound.
ONE_FRAME = 64 * 1024


def kernel_send_queues(port: int) -> list[int]:
    """Bytes in the kernel's send queue of each established socket on local ``port``."""
    return [s.send_queue for s in established_sockets() if s.local_port == port]


pytestmark = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="reads the kernel's send queues from /proc"
)


async def plain_app(app_client: ClientFactory, **overrides: object) -> Client:
    return await app_client(batch_window_ms=0, ws_send_buffer_bytes=SEND_BUFFER, **overrides)


async def test_a_paused_reader_holds_no_more_than_the_bound_in_the_kernel(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await plain_app(app_client)
    alice = await session_for(client, "alice")
    async with stalled_client(client, alice) as stalled:
        rounds = await fill_until_stuck(client, alice, stalled)
        peak = 0
        for n in range(rounds, rounds + 60):
            await publish_round(client, alice, stalled, n)
            if n % 5 == 0:
                peak = max(peak, *kernel_send_queues(client.port))
        assert peak <= SEND_BUFFER + ONE_FRAME, peak

        delivered, latest, messages = await read_until_converged(stalled)
        assert delivered == stalled.published and latest == stalled.final
        # The 60 rounds published while paused arrive as what sat in the kernel, then the
        # coalesced state: a couple of messages, not one per round.
        assert messages <= rounds + 3, (messages, rounds)
    assert " ERROR " not in log_lines.getvalue()


async def test_a_paused_reader_that_keeps_talking_is_closed_past_the_heartbeat_timeout(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    timeout_s = 0.6
    client = await plain_app(
        app_client,
        heartbeat_interval_ms=200,
        heartbeat_timeout_ms=int(timeout_s * 1000),
        shutdown_timeout_s=1,
    )
    alice = await session_for(client, "alice")
    manager = client.app[STREAM_KEY]
    async with stalled_client(client, alice) as stalled:
        await fill_until_stuck(client, alice, stalled)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with contextlib.suppress(ConnectionError):
            while manager.connection(stalled.connection_id) is not None:
                await stalled.ws.send_json({"type": "ping"})  # it talks, it never reads
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        until(lambda: manager.connection(stalled.connection_id) is None), 0.1
                    )
                assert loop.time() - started < 5, "still open"
        await until(lambda: manager.connection(stalled.connection_id) is None)
        # The timeout, a heartbeat sweep (half an interval) and scheduling margin.
        assert loop.time() - started <= timeout_s + 0.1 + 0.5
    output = log_lines.getvalue()
    assert "Closing unresponsive client" in output and "stuck=True" in output
    assert " ERROR " not in output
