"""One connection's writer behind the transport seam (SPEC §4, slow consumers): order, seq,
coalescing while the socket does not drain, the queued-frame limit, "stuck", and closing —
on a fake socket that stops draining and resumes, and a clock moved by hand."""

from __future__ import annotations

import asyncio
import io

import orjson

from app.batching import Batch, channel_set
from app.events import Event
from app.portfolio import PortfolioStore
from app.protocol import PreparedBatch
from app.writer import PING, ConnectionWriter, SnapshotRequest, WriterContext
from tests.app.fake_socket import PING as PING_SEEN
from tests.app.fake_socket import Clock, FakeSocket, stream_stats, writer_context
from tests.app.support import account, order, position

SYMBOLS = [f"SYM{i}" for i in range(20)]
SUBSCRIBED = channel_set(frozenset({"positions", "account"}))
TIMEOUT_S = 30.0


def round_of_ticks(n: int) -> Batch:
    """One price move for every symbol plus the account, as a window would collect it."""
    batch = Batch()
    for i, symbol in enumerate(SYMBOLS):
        batch.add(Event("position:updated", position("alice", symbol, pnl=f"{n}.{i:02d}"), 0.0))
    batch.add(Event("account:updated", account("alice", equity=f"{n}.00"), 0.0))
    return batch


def prepared(batch: Batch) -> PreparedBatch:
    body = batch.body(SUBSCRIBED, "2026-01-04T10:30:00.000Z")
    assert body is not None
    return PreparedBatch.of(body)


class Setup:
    def __init__(self, **context: object) -> None:
        self.socket = FakeSocket()
        self.clock = Clock()
        self.stats = stream_stats()
        self.portfolio = PortfolioStore()
        self.context: WriterContext = writer_context(
            clock=self.clock, stats=self.stats, portfolio=self.portfolio, **context
        )
        self.writer = ConnectionWriter(self.socket, self.context, "conn_1_abc", "alice")
        self.writer.channels = SUBSCRIBED

    async def park(self) -> None:
        """Stop draining and offer a batch; return once the writer waits on the socket."""
        self.socket.stop_draining()
        self.writer.send(prepared(round_of_ticks(0)))
        await self.socket.until_waiting()
        assert self.writer.is_busy()


def kinds(socket: FakeSocket) -> list[str]:
    """What reached the client, in order: message types, and pings."""
    return [f if isinstance(f, str) else orjson.loads(f)["type"] for f in socket.received]


async def settled(setup: Setup) -> None:
    """Until the writer's task has sent everything and ended."""
    await setup.context.tasks.wait(2)
    assert not setup.writer.is_busy()


async def test_a_draining_socket_takes_each_frame_at_once_without_a_task() -> None:
    setup = Setup()
    setup.writer.send(b'{"type":"pong"}')
    setup.writer.send(prepared(round_of_ticks(1)))
    assert len(setup.socket.received) == 2  # synchronously, in order
    assert len(setup.context.tasks) == 0
    assert [m["type"] for m in setup.socket.messages()] == ["pong", "batch"]


async def test_seq_rises_by_one_per_snapshot_and_batch_in_send_order() -> None:
    setup = Setup()
    setup.writer.send(SnapshotRequest(SUBSCRIBED))
    setup.writer.send(prepared(round_of_ticks(1)))
    setup.socket.stop_draining()
    setup.writer.send(b'{"type":"pong"}')  # not a data message: no seq
    setup.writer.send(prepared(round_of_ticks(2)))
    setup.writer.fold_if_busy(round_of_ticks(3))
    setup.socket.resume()
    await settled(setup)
    seqs = [(m["type"], m.get("seq")) for m in setup.socket.messages()]
    assert seqs == [("snapshot", 1), ("batch", 2), ("pong", None), ("batch", 3), ("batch", 4)]
    assert setup.stats.messages_delivered == 4


async def test_a_socket_that_stops_draining_gets_only_the_coalesced_latest_state() -> None:
    setup = Setup()
    await setup.park()
    for n in range(1, 301):
        assert setup.writer.fold_if_busy(round_of_ticks(n))
    assert setup.socket.received == []  # nothing more was pushed at the stalled socket
    setup.socket.resume()
    await settled(setup)
    first, coalesced = setup.socket.messages()  # 301 batches offered, two messages sent
    assert first["eventCount"] == 21
    assert coalesced["eventCount"] == 300 * 21  # every event accounted for
    assert {p["symbol"]: p["unrealizedPnl"] for p in coalesced["positions"]} == {
        symbol: f"300.{i:02d}" for i, symbol in enumerate(SYMBOLS)
    }
    assert coalesced["account"]["equity"] == "300.00"
    assert not setup.writer.fold_if_busy(round_of_ticks(301))  # idle again: sent directly


def order_update(order_id: str, status: str, filled: str) -> Batch:
    batch = Batch()
    batch.add(Event("order:updated", order("alice", order_id, status=status, filled=filled), 0.0))
    return batch


async def test_a_stalled_clients_pending_state_keeps_each_orders_newest_state() -> None:
    """Orders coalesce like positions: the newest state of each wins, whatever came before."""
    setup = Setup()
    setup.writer.channels = channel_set(frozenset({"orders"}))
    await setup.park()
    for order_id, status, filled in [
        ("o-1", "new", "0"),
        ("o-2", "new", "0"),
        ("o-1", "partially_filled", "4"),
        ("o-1", "filled", "10"),
    ]:
        assert setup.writer.fold_if_busy(order_update(order_id, status, filled))
    setup.socket.resume()
    await settled(setup)
    coalesced = setup.socket.messages()[-1]
    states = {o["orderId"]: (o["status"], o["filledQty"]) for o in coalesced["orders"]}
    assert states == {"o-1": ("filled", "10"), "o-2": ("new", "0")}
    assert coalesced["eventCount"] == 4


async def test_queued_frames_go_out_in_order_before_the_coalesced_batch() -> None:
    setup = Setup()
    await setup.park()
    setup.writer.fold_if_busy(round_of_ticks(1))
    setup.writer.send(b'{"type":"pong","serverTime":"t"}')
    setup.writer.send(PING)
    setup.writer.send(SnapshotRequest(SUBSCRIBED))
    setup.socket.resume()
    await settled(setup)
    # The frame that was on its way, the queued ones in order, the coalesced batch last.
    assert kinds(setup.socket) == ["batch", "pong", PING_SEEN, "snapshot", "batch"]


async def test_a_client_that_never_reads_is_dropped_past_the_queued_frame_limit() -> None:
    setup = Setup(max_queued_frames=8)
    await setup.park()
    for _ in range(8):
        setup.writer.send(b'{"type":"pong"}')
    assert not setup.socket.aborted
    setup.writer.send(b'{"type":"pong"}')
    assert setup.socket.aborted
    assert (setup.writer.close_code, setup.writer.close_reason) == (1008, "Client is not reading")
    setup.writer.send(b'{"type":"pong"}')  # a closing connection takes nothing more
    assert setup.socket.received == []


async def test_coalescing_keeps_the_queue_empty_however_many_batches_arrive() -> None:
    """Batches never count against the queued-frame limit: they fold."""
    setup = Setup(max_queued_frames=2)
    await setup.park()
    for n in range(100):
        setup.writer.fold_if_busy(round_of_ticks(n))
    assert not setup.socket.aborted


async def test_a_parked_writer_is_stuck_only_past_the_timeout() -> None:
    setup = Setup()
    await setup.park()
    setup.clock.now += TIMEOUT_S - 0.1
    assert not setup.writer.is_stuck(setup.clock.now, TIMEOUT_S)
    setup.clock.now += 0.2
    assert setup.writer.is_stuck(setup.clock.now, TIMEOUT_S)
    setup.socket.resume()
    await settled(setup)
    assert not setup.writer.is_stuck(setup.clock.now + 100, TIMEOUT_S)  # idle is never stuck


async def test_a_writer_that_keeps_making_progress_is_never_stuck() -> None:
    """Busy for minutes on a narrow link, but a frame gets out every 20 s: not stuck."""
    setup = Setup()
    await setup.park()
    for n in range(1, 10):
        setup.writer.fold_if_busy(round_of_ticks(n))
        setup.clock.now += 20.0
        assert not setup.writer.is_stuck(setup.clock.now, TIMEOUT_S)
        setup.socket.let_through(1)
        await setup.socket.next_frame()
        assert setup.writer.is_busy()  # already waiting on the next frame
    setup.clock.now += TIMEOUT_S + 1  # and now nothing moves
    assert setup.writer.is_stuck(setup.clock.now, TIMEOUT_S)


async def test_snapshots_are_built_when_sent_from_the_current_state_and_channels() -> None:
    setup = Setup()
    await setup.park()
    setup.writer.send(SnapshotRequest(SUBSCRIBED))
    # While it waits: new state arrives and the client drops the account channel.
    setup.portfolio.user("alice").positions["AAPL"] = position("alice", "AAPL", pnl="9.99")
    setup.writer.channels = channel_set(frozenset({"positions"}))
    setup.socket.resume()
    await settled(setup)
    snapshot = setup.socket.messages()[1]
    assert set(snapshot) == {"type", "seq", "positions"}
    assert snapshot["positions"][0]["unrealizedPnl"] == "9.99"


async def test_closing_a_draining_socket_sends_the_close_frame() -> None:
    setup = Setup()
    await setup.writer.close(4000, "Heartbeat timeout")
    assert setup.socket.close_frame == (4000, "Heartbeat timeout")
    assert not setup.socket.aborted
    await setup.writer.close(1001, "Server shutting down")  # the first close decided
    assert (setup.writer.close_code, setup.writer.close_reason) == (4000, "Heartbeat timeout")


async def test_a_close_frame_that_cannot_get_out_in_time_drops_the_socket(
    log_lines: io.StringIO,
) -> None:
    setup = Setup(close_grace_s=0.05)
    await setup.park()
    await setup.writer.close(1001, "Server shutting down")
    assert setup.socket.aborted and setup.socket.close_frame is None
    assert setup.writer.close_code == 1001
    await settled(setup)  # the parked send ended with the connection
    assert " ERROR " not in log_lines.getvalue()


async def test_closing_with_much_unsent_drops_the_socket_at_once() -> None:
    setup = Setup(abort_above_bytes=64, close_grace_s=10.0)
    await setup.park()
    async with asyncio.timeout(1):  # no close handshake is attempted
        await setup.writer.close(4000, "Heartbeat timeout")
    assert setup.socket.aborted


async def test_a_socket_that_vanishes_mid_write_ends_the_writer_quietly(
    log_lines: io.StringIO,
) -> None:
    setup = Setup()
    await setup.park()
    setup.socket.abort()
    await settled(setup)
    assert " ERROR " not in log_lines.getvalue()


async def test_cancelling_the_tasks_ends_a_parked_writer() -> None:
    setup = Setup()
    await setup.park()
    await setup.context.tasks.cancel()
    assert len(setup.context.tasks) == 0
    assert not setup.writer.is_busy()


class BrokenSocket(FakeSocket):
    """A socket whose send fails with a bug, not a lost connection."""

    async def send_text(self, payload: bytes) -> None:
        raise ValueError("frame too odd")


async def test_an_unexpected_send_error_is_logged_and_drops_the_connection(
    log_lines: io.StringIO,
) -> None:
    setup = Setup()
    setup.socket = BrokenSocket()
    setup.writer = ConnectionWriter(setup.socket, setup.context, "conn_1_abc", "alice")
    setup.socket.stop_draining()  # so that the writer task, not a raw write, sends it
    setup.writer.send(b'{"type":"pong"}')
    await settled(setup)
    assert setup.socket.aborted
    assert (setup.writer.close_code, setup.writer.close_reason) == (1001, "Internal error")
    assert "ERROR [PortfolioStream] Unexpected send error" in log_lines.getvalue()
