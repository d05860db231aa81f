"""The hub's reactions to client messages (SPEC §4), with a fake socket behind the transport
seam: the real manager, bus, portfolio state and stats; no network."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.bus import InProcessBus
from app.connection import Connection
from app.portfolio import PortfolioStore
from app.stats import StatsRules, StreamStats
from app.stream import PortfolioStreamManager
from tests.app.fake_socket import Clock, FakeSocket
from tests.app.support import account, order, position
from tests.conftest import make_settings


@dataclass
class Hub:
    manager: PortfolioStreamManager
    bus: InProcessBus
    clock: Clock

    async def publish(self, event_type: str, payload: dict[str, Any]) -> None:
        self.bus.publish(event_type, payload)
        await asyncio.sleep(0)  # the bus delivers on the next loop turn

    async def connect(self, user_id: str = "alice") -> tuple[FakeSocket, Connection]:
        socket = FakeSocket()
        conn = self.manager.attach(user_id, socket)
        assert conn is not None
        self._serving[conn.id] = asyncio.ensure_future(self.manager.serve(conn))
        connected = await socket.next_message()
        assert connected["type"] == "connected"
        return socket, conn

    async def released(self, conn: Connection) -> None:
        """Until the connection's receive loop ended and the hub let go of it."""
        await asyncio.wait_for(self._serving[conn.id], 2)
        assert self.manager.connection(conn.id) is None

    async def close(self) -> None:
        """Shut the hub down; every receive loop ends with it."""
        await self.manager.shutdown()
        if self._serving:
            await asyncio.wait(list(self._serving.values()), timeout=2)
        await self.bus.close()

    def __post_init__(self) -> None:
        self._serving: dict[str, asyncio.Future[None]] = {}


HubFactory = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def hub_factory(tmp_path: Path) -> AsyncIterator[HubFactory]:
    built: list[Hub] = []

    async def build(**overrides: Any) -> Hub:
        clock = Clock()
        bus = InProcessBus()
        await bus.start()
        portfolio = PortfolioStore()
        portfolio.attach(bus)
        settings = make_settings(tmp_path, **overrides)
        stats = StreamStats(StatsRules.from_settings(settings), clock)
        manager = PortfolioStreamManager(settings, bus, portfolio, stats)
        await manager.start()
        hub = Hub(manager, bus, clock)
        built.append(hub)
        return hub

    yield build
    for hub in built:
        await hub.close()


@pytest.fixture
async def hub(hub_factory: HubFactory) -> Hub:
    """A hub where alice holds AAPL and MSFT, one open order and an account."""
    hub = await hub_factory()
    await hub.publish("position:updated", position("alice", "MSFT", pnl="12.00"))
    await hub.publish("position:updated", position("alice", "AAPL", pnl="550.00"))
    await hub.publish("order:updated", order("alice", "o-1"))
    await hub.publish("account:updated", account("alice", equity="104550.00"))
    return hub


async def subscribe(socket: FakeSocket, channels: list[str]) -> dict[str, Any]:
    socket.client_text({"type": "subscribe", "channels": channels})
    return await socket.next_message()


async def test_connected_comes_first_with_the_contract_fields(hub: Hub) -> None:
    socket, conn = await hub.connect()
    connected = socket.messages()[0]
    assert connected == {
        "type": "connected",
        "connectionId": conn.id,
        "userId": "alice",
        "channels": ["positions", "orders", "account"],
        "batchWindowMs": 50,
        "heartbeatIntervalMs": 10_000,
        "serverTime": connected["serverTime"],
    }
    assert connected["serverTime"].endswith("Z")


async def test_subscribe_answers_subscribed_then_a_snapshot_of_only_the_added_channels(
    hub: Hub,
) -> None:
    socket, _ = await hub.connect()
    assert await subscribe(socket, ["positions"]) == {
        "type": "subscribed",
        "channels": ["positions"],
    }
    first = await socket.next_message()
    assert (first["type"], first["seq"], set(first)) == (
        "snapshot",
        1,
        {"type", "seq", "positions"},
    )
    assert [p["symbol"] for p in first["positions"]] == ["AAPL", "MSFT"]
    assert "userId" not in first["positions"][0]

    subscribed = await subscribe(socket, ["account", "positions"])
    assert subscribed["channels"] == ["positions", "account"]  # the whole set, contract order
    second = await socket.next_message()
    assert (second["seq"], set(second)) == (2, {"type", "seq", "account"})
    assert second["account"]["equity"] == "104550.00"


async def test_resubscribing_an_active_channel_sends_no_snapshot(hub: Hub) -> None:
    socket, _ = await hub.connect()
    await subscribe(socket, ["orders"])
    await socket.next_message()
    assert (await subscribe(socket, ["orders"]))["channels"] == ["orders"]
    socket.client_text({"type": "ping"})
    assert (await socket.next_message())["type"] == "pong"  # nothing came in between


async def test_unsubscribe_answers_the_remaining_channels_and_stops_their_batches(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(batch_window_ms=0)
    socket, _ = await hub.connect()
    await subscribe(socket, ["positions", "orders"])
    await socket.next_message()
    socket.client_text({"type": "unsubscribe", "channels": ["positions"]})
    assert await socket.next_message() == {"type": "subscribed", "channels": ["orders"]}
    await hub.publish("position:updated", position("alice", "AAPL"))
    await hub.publish("order:updated", order("alice", "o-2"))
    await asyncio.sleep(0)  # window 0: the batch leaves on the next turn
    batch = await socket.next_message()
    assert batch["type"] == "batch" and "positions" not in batch
    assert [o["orderId"] for o in batch["orders"]] == ["o-2"]


async def test_resync_sends_a_fresh_snapshot_of_every_subscribed_channel(hub: Hub) -> None:
    socket, _ = await hub.connect()
    await subscribe(socket, ["positions", "account"])
    await socket.next_message()
    await hub.publish("account:updated", account("alice", equity="1.00"))
    socket.client_text({"type": "resync"})
    snapshot = await socket.next_message()
    assert (snapshot["type"], snapshot["seq"]) == ("snapshot", 2)
    assert set(snapshot) == {"type", "seq", "positions", "account"}
    assert snapshot["account"]["equity"] == "1.00"


async def test_ping_is_answered_with_pong_and_the_server_time(hub: Hub) -> None:
    socket, _ = await hub.connect()
    socket.client_text({"type": "ping"})
    pong = await socket.next_message()
    assert set(pong) == {"type", "serverTime"} and pong["type"] == "pong"


@pytest.mark.parametrize(
    ("send", "code"),
    [
        (lambda s: s.client_text("{not json"), "invalid_json"),
        (lambda s: s.client_text({"type": "teleport"}), "unknown_type"),
        (lambda s: s.client_text({"type": "subscribe", "channels": "all"}), "invalid_message"),
        (lambda s: s.client_binary(b"\x00\x01"), "unsupported_frame"),
    ],
)
async def test_bad_input_is_answered_with_an_error_and_the_connection_stays(
    hub: Hub, send: Callable[[FakeSocket], None], code: str
) -> None:
    socket, conn = await hub.connect()
    send(socket)
    error = await socket.next_message()
    assert (error["type"], error["code"]) == ("error", code)
    socket.client_text({"type": "ping"})
    assert (await socket.next_message())["type"] == "pong"
    assert hub.manager.connection(conn.id) is conn


async def test_unknown_channels_are_reported_and_known_ones_still_apply(hub: Hub) -> None:
    socket, _ = await hub.connect()
    socket.client_text({"type": "subscribe", "channels": ["orders", "news"]})
    error = await socket.next_message()
    assert (error["code"], "news" in error["message"]) == ("unknown_channel", True)
    assert (await socket.next_message())["channels"] == ["orders"]
    assert set(await socket.next_message()) == {"type", "seq", "orders"}


async def test_the_51st_message_within_the_window_closes_1008(
    hub: Hub, log_lines: io.StringIO
) -> None:
    socket, conn = await hub.connect()
    for _ in range(50):  # all at the same instant on the hub's clock
        socket.client_text({"type": "ping"})
    for _ in range(50):
        assert (await socket.next_message())["type"] == "pong"
    hub.clock.now += 9.9
    socket.client_text({"type": "ping"})
    await hub.released(conn)
    assert socket.messages()[-1]["type"] == "pong"  # the 51st was not answered
    assert socket.close_frame == (1008, "Rate limit exceeded")
    assert "code=1008, reason=Rate limit exceeded" in log_lines.getvalue()


async def test_the_rate_window_slides(hub: Hub) -> None:
    socket, conn = await hub.connect()
    for _ in range(40):
        for _ in range(5):
            socket.client_text({"type": "ping"})
            assert (await socket.next_message())["type"] == "pong"
        hub.clock.now += 1.0  # 5 per second is 50 per 10 s: never over
    assert hub.manager.connection(conn.id) is conn


async def test_a_client_close_is_logged_with_its_code_and_reason(
    hub: Hub, log_lines: io.StringIO
) -> None:
    socket, conn = await hub.connect()
    socket.client_close(1000, "Tab closed")
    await hub.released(conn)
    assert "code=1000, reason=Tab closed" in log_lines.getvalue()
    assert hub.manager.active_connections == 0


async def test_connections_beyond_the_per_user_limit_are_refused(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(max_connections_per_user=2, max_total_connections=3)
    for _ in range(2):
        await hub.connect("alice")
    assert hub.manager.attach("alice", FakeSocket()) is None
    await hub.connect("bob")
    assert hub.manager.attach("carol", FakeSocket()) is None  # the total
    assert hub.manager.connections_by_user() == {"alice": 2, "bob": 1}


async def test_shutdown_closes_1001_and_leaves_no_task_behind(hub_factory: HubFactory) -> None:
    """Even a writer parked on a socket that stopped draining is cancelled and awaited."""
    hub = await hub_factory(batch_window_ms=0, shutdown_timeout_s=1)
    healthy, _ = await hub.connect("alice")
    stalled, _ = await hub.connect("bob")
    for socket in (healthy, stalled):
        await subscribe(socket, ["positions"])
        await socket.next_message()
    stalled.stop_draining()
    for n in range(3):
        await hub.publish("position:updated", position("bob", "TSLA", pnl=f"{n}.00"))
        await asyncio.sleep(0)
    await hub.manager.shutdown()
    assert healthy.close_frame == (1001, "Server shutting down")
    assert stalled.aborted  # its close frame could not get past the unsent batch
    left = [
        task.get_name()
        for task in asyncio.all_tasks()
        if task.get_name().startswith("ws-") and not task.done()
    ]
    assert left == []
    assert hub.manager.active_connections == 0 or all(s.closed for s in (healthy, stalled))
