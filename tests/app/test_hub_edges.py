"""The hub at its edges, behind the transport seam: control frames (answered through the
writer, rate limited), errors that must end only their own connection, sessions that end
while their sockets are open."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WebSocketError

from app.bus import InProcessBus
from app.connection import Connection
from app.portfolio import PortfolioStore
from app.protocol import SESSION_END_REASONS
from app.sessions import Revocations, RevokedBecause, SessionRevoked
from app.stats import StatsRules, StreamStats
from app.stream import PortfolioStreamManager
from tests.app.fake_socket import Clock, FakeSocket
from tests.app.test_hub import Hub
from tests.conftest import make_settings


class BuggySnapshots(PortfolioStore):
    """Snapshots of mallory's portfolio hit a bug."""

    def snapshot(self, user_id: str, channels: frozenset[str]) -> dict[str, Any]:
        if user_id == "mallory":
            raise RuntimeError("a bug in the snapshot")
        return super().snapshot(user_id, channels)


class Edges(Hub):
    revocations: Revocations

    async def attach(
        self, user_id: str = "alice", token_hash: str = ""
    ) -> tuple[FakeSocket, Connection]:
        socket = FakeSocket()
        conn = self.manager.attach(user_id, socket, token_hash=token_hash)
        assert conn is not None
        self._serving[conn.id] = asyncio.ensure_future(self.manager.serve(conn))
        assert (await socket.next_message())["type"] == "connected"
        return socket, conn


EdgesFactory = Callable[..., Awaitable[Edges]]


@pytest.fixture
async def edges_factory(tmp_path: Path) -> AsyncIterator[EdgesFactory]:
    built: list[Edges] = []

    async def build(**overrides: Any) -> Edges:
        clock = Clock()
        bus = InProcessBus()
        await bus.start()
        portfolio = BuggySnapshots()
        portfolio.attach(bus)
        settings = make_settings(tmp_path, **overrides)
        stats = StreamStats(StatsRules.from_settings(settings), clock)
        manager = PortfolioStreamManager(settings, bus, portfolio, stats)
        revocations = Revocations()
        await manager.start(revocations)
        edges = Edges(manager, bus, clock)
        edges.revocations = revocations
        built.append(edges)
        return edges

    yield build
    for edges in built:
        await edges.close()


# Control frames


async def test_ping_frames_are_answered_with_their_payload(edges_factory: EdgesFactory) -> None:
    edges = await edges_factory()
    socket, _ = await edges.attach()
    socket.client_ping(b"are you there")
    assert await socket.next_frame() == "PONG:are you there"


async def test_a_ping_on_a_socket_that_does_not_drain_does_not_stop_the_reading(
    edges_factory: EdgesFactory,
) -> None:
    """The pong queues behind what is on its way; the receive loop goes on to the next frame."""
    edges = await edges_factory()
    socket, conn = await edges.attach()
    socket.stop_draining()
    socket.client_ping(b"1")
    socket.client_close(1000, "bye")
    await edges.released(conn)


async def test_control_frames_beyond_their_limit_close_1008(
    edges_factory: EdgesFactory, log_lines: io.StringIO
) -> None:
    edges = await edges_factory(ws_rate_limit_control_frames=5)
    socket, conn = await edges.attach()
    for n in range(4):
        socket.client_ping(str(n).encode())
    socket.client_pong()  # pongs count too: five control frames, all within the limit
    for n in range(4):
        assert await socket.next_frame() == f"PONG:{n}"
    socket.client_ping(b"one too many")
    await edges.released(conn)
    assert socket.close_frame == (1008, "Rate limit exceeded")
    assert "code=1008, reason=Rate limit exceeded" in log_lines.getvalue()


async def test_control_frames_do_not_use_up_the_message_limit(
    edges_factory: EdgesFactory,
) -> None:
    edges = await edges_factory(ws_rate_limit_messages=3, ws_rate_limit_control_frames=50)
    socket, conn = await edges.attach()
    for _ in range(20):
        socket.client_ping()
    for _ in range(3):
        socket.client_text({"type": "ping"})
    pongs = [await socket.next_message() for _ in range(3)]
    assert [m["type"] for m in pongs] == ["pong"] * 3
    assert edges.manager.connection(conn.id) is not None


# Errors that end one connection


async def test_a_bug_while_answering_closes_only_that_connection_1011_with_one_traceback(
    edges_factory: EdgesFactory, log_lines: io.StringIO
) -> None:
    edges = await edges_factory()
    neighbour, _ = await edges.attach("alice")
    socket, conn = await edges.attach("mallory")
    socket.client_text({"type": "subscribe", "channels": ["positions"]})
    await edges.released(conn)
    assert socket.close_frame == (1011, "Internal error")
    output = log_lines.getvalue()
    assert output.count("Traceback") == 1
    assert "ERROR [PortfolioStream] Unexpected error on a connection" in output
    neighbour.client_text({"type": "ping"})
    assert (await neighbour.next_message())["type"] == "pong"


async def test_a_protocol_error_from_the_reader_is_logged_with_its_own_code(
    edges_factory: EdgesFactory, log_lines: io.StringIO
) -> None:
    edges = await edges_factory()
    socket, conn = await edges.attach()
    socket.client_error(WebSocketError(1009, "Message size 70000 exceeds limit 65537"))
    await edges.released(conn)
    assert "code=1009, reason=Message size 70000 exceeds limit 65537" in log_lines.getvalue()


async def test_a_decompressed_message_over_the_limit_closes_1009(
    edges_factory: EdgesFactory,
) -> None:
    """The frame limit is aiohttp's; a message inflated past it is refused here."""
    edges = await edges_factory(ws_max_message_bytes=1024)
    socket, conn = await edges.attach()
    socket.client_text('{"type":"ping","pad":"' + "x" * 1024 + '"}')
    await edges.released(conn)
    assert socket.close_frame == (1009, "Message too big")


# Sessions that end


def test_every_way_a_session_ends_has_a_close_reason() -> None:
    assert set(SESSION_END_REASONS) == {reason.value for reason in RevokedBecause}


async def test_a_logged_out_session_closes_its_sockets_4001_and_no_others(
    edges_factory: EdgesFactory, log_lines: io.StringIO
) -> None:
    edges = await edges_factory()
    laptop, laptop_conn = await edges.attach("alice", token_hash="laptop")
    phone, _ = await edges.attach("alice", token_hash="phone")
    other, _ = await edges.attach("bob", token_hash="laptop")
    edges.revocations.publish(SessionRevoked("alice", "laptop", RevokedBecause.LOGOUT))
    await edges.released(laptop_conn)
    assert laptop.close_frame == (4001, "Session ended: logged out")
    assert phone.close_frame is None and other.close_frame is None
    assert edges.manager.active_connections == 2
    assert "code=4001, reason=Session ended: logged out" in log_lines.getvalue()


async def test_a_removed_user_loses_every_socket_4001(edges_factory: EdgesFactory) -> None:
    edges = await edges_factory()
    tabs = [await edges.attach("alice", token_hash=f"s{n}") for n in range(3)]
    edges.revocations.publish(SessionRevoked("alice", None, RevokedBecause.USER_REMOVED))
    for socket, conn in tabs:
        await edges.released(conn)
        assert socket.close_frame == (4001, "User removed")
