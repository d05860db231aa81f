"""The heartbeat's rules on a clock moved by hand (SPEC §4): who is pinged when, the silent
are closed with 4000, the stuck are dropped, and a due ping is queued behind a busy writer."""

from __future__ import annotations

import asyncio
import io
from collections.abc import ValuesView

from app.batching import Batch, channel_set
from app.connection import Connection
from app.events import Event
from app.heartbeat import Heartbeat
from app.protocol import PreparedBatch
from app.writer import ConnectionWriter, WriterContext
from tests.app.fake_socket import PING, Clock, FakeSocket, writer_context
from tests.app.support import position

INTERVAL_S = 15.0
TIMEOUT_S = 30.0
RATE_WINDOW_S = 10.0
POSITIONS = channel_set(frozenset({"positions"}))


class Sweep:
    def __init__(self) -> None:
        self.clock = Clock(now=0.0)
        self.context: WriterContext = writer_context(clock=self.clock)
        self.connections: dict[str, Connection] = {}
        self.heartbeat = Heartbeat(
            self.connections,
            interval_s=INTERVAL_S,
            timeout_s=TIMEOUT_S,
            rate_window_s=RATE_WINDOW_S,
            clock=self.clock,
            phase=lambda low, high: low,
        )

    def connect(self, name: str) -> tuple[Connection, FakeSocket]:
        socket = FakeSocket()
        writer = ConnectionWriter(socket, self.context, name, "alice")
        writer.channels = POSITIONS
        conn = Connection(name, "alice", socket, writer, started_at=self.clock.now)
        conn.next_ping = self.heartbeat.first_ping_at(self.clock.now)
        self.connections[name] = conn
        return conn, socket

    def at(self, now: float) -> None:
        self.clock.now = now
        self.heartbeat.sweep(now)


def batch(pnl: str) -> Batch:
    batch = Batch()
    batch.add(Event("position:updated", position("alice", "AAPL", pnl=pnl), 0.0))
    return batch


def prepared(pnl: str) -> PreparedBatch:
    body = batch(pnl).body(POSITIONS, "2026-01-04T10:30:00.000Z")
    assert body is not None
    return PreparedBatch.of(body)


def test_the_first_ping_falls_due_between_half_and_one_interval_after_admission() -> None:
    heartbeat = Heartbeat(
        {}, interval_s=INTERVAL_S, timeout_s=TIMEOUT_S, rate_window_s=1.0, clock=Clock()
    )
    phases = [heartbeat.first_ping_at(100.0) - 100.0 for _ in range(200)]
    assert all(INTERVAL_S * 0.5 <= phase <= INTERVAL_S for phase in phases)
    assert max(phases) - min(phases) > INTERVAL_S * 0.25  # spread, not one instant


async def test_a_sweep_pings_only_the_connections_that_are_due() -> None:
    sweep = Sweep()
    early, early_socket = sweep.connect("early")  # first ping due at 7.5
    sweep.clock.now = 5.0
    late, late_socket = sweep.connect("late")  # first ping due at 12.5
    sweep.at(8.0)
    assert (early_socket.received, late_socket.received) == ([PING], [])
    assert early.next_ping == 8.0 + INTERVAL_S
    early.last_heard = late.last_heard = 12.0
    sweep.at(13.0)
    assert (early_socket.received, late_socket.received) == ([PING], [PING])


async def test_a_silent_connection_is_closed_4000_with_a_close_frame(
    log_lines: io.StringIO,
) -> None:
    sweep = Sweep()
    conn, socket = sweep.connect("silent")
    conn.last_heard = 1.0
    sweep.at(1.0 + TIMEOUT_S)  # exactly the timeout: still alive
    assert not conn.writer.closing
    sweep.at(1.0 + TIMEOUT_S + 0.5)
    await sweep.context.tasks.wait(2)
    assert socket.close_frame == (4000, "Heartbeat timeout") and not socket.aborted
    assert "Closing unresponsive client" in log_lines.getvalue()
    assert "silentFor=30.5s, stuck=False" in log_lines.getvalue()


async def test_a_stuck_writer_is_dropped_though_the_client_still_talks(
    log_lines: io.StringIO,
) -> None:
    sweep = Sweep()
    conn, socket = sweep.connect("stuck")
    socket.stop_draining()
    conn.writer.send(prepared("1.00"))
    await socket.until_waiting()
    sweep.clock.now = TIMEOUT_S + 1
    conn.last_heard = sweep.clock.now  # its messages keep arriving
    sweep.at(sweep.clock.now)
    assert socket.aborted and socket.close_frame is None  # a close frame would queue behind
    assert (conn.writer.close_code, conn.writer.close_reason) == (4000, "Heartbeat timeout")
    assert "stuck=True" in log_lines.getvalue()


async def test_a_ping_due_while_the_writer_is_busy_goes_out_before_the_coalesced_batch() -> None:
    sweep = Sweep()
    conn, socket = sweep.connect("busy")
    socket.stop_draining()
    conn.writer.send(prepared("1.00"))
    await socket.until_waiting()
    conn.writer.fold_if_busy(batch("2.00"))
    conn.last_heard = 10.0
    sweep.at(10.0)  # the first ping is due (7.5)
    socket.resume()
    for _ in range(3):
        await socket.next_frame()
    batches = socket.messages()
    assert socket.received[1] == PING
    assert [m["positions"][0]["unrealizedPnl"] for m in batches] == ["1.00", "2.00"]


async def test_a_closing_connection_is_left_alone() -> None:
    sweep = Sweep()
    conn, socket = sweep.connect("closing")
    conn.writer.abort(1008, "Rate limit exceeded")
    sweep.at(TIMEOUT_S * 3)
    assert conn.writer.close_code == 1008  # not re-closed with 4000
    assert socket.received == []


async def test_an_idle_connection_forgets_its_rate_history() -> None:
    sweep = Sweep()
    conn, _ = sweep.connect("idle")
    conn.rate_exceeded(1.0, 50, RATE_WINDOW_S)
    conn.last_heard = 5.0
    sweep.at(5.0)
    assert conn.remembered_messages() == 1
    conn.last_heard = 11.0
    sweep.at(11.0)
    assert conn.remembered_messages() == 0


class FlakyRegistry(dict[str, Connection]):
    """The hub's registry, broken for a while: listing its connections raises."""

    broken = True

    def values(self) -> ValuesView[Connection]:
        if self.broken:
            raise RuntimeError("the registry is in a bad state")
        return super().values()


async def test_a_failing_sweep_is_logged_once_and_sweeping_goes_on(
    log_lines: io.StringIO,
) -> None:
    clock = Clock(now=0.0)
    registry = FlakyRegistry()
    sweeps = 0
    recovered = asyncio.Event()

    async def tick(_: float) -> None:
        nonlocal sweeps
        sweeps += 1
        clock.now += 1.0
        if sweeps == 4:  # three failing sweeps, then it heals
            registry.broken = False
        if sweeps == 5:  # four sweeps done: stop here until cancelled
            recovered.set()
            await asyncio.get_running_loop().create_future()
        await asyncio.sleep(0)

    heartbeat = Heartbeat(
        registry,
        interval_s=2.0,  # a sweep every second
        timeout_s=TIMEOUT_S,
        rate_window_s=RATE_WINDOW_S,
        clock=clock,
        phase=lambda low, high: low,
        sleep=tick,
    )
    socket = FakeSocket()
    writer = ConnectionWriter(socket, writer_context(clock=clock), "c", "alice")
    conn = Connection("c", "alice", socket, writer, started_at=0.0)
    conn.next_ping = heartbeat.first_ping_at(0.0)  # due at 1.0
    registry["c"] = conn
    running = asyncio.ensure_future(heartbeat.run())
    try:
        await asyncio.wait_for(recovered.wait(), 2)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert socket.received == [PING]  # the sweeps after the failures did their work
    output = log_lines.getvalue()
    assert output.count("Heartbeat sweep failed") == 1
    assert output.count("Traceback") == 1
