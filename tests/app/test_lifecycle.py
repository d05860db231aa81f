"""The one shutdown sequence (SPEC §9) and the draining state, against recording fakes of the
stream endpoint and the broker (the two things ``Lifecycle`` drives)."""

from __future__ import annotations

import asyncio
from typing import Any

from app.broker import NullBroker
from app.lifecycle import Lifecycle, RunState


class RecordingStream:
    """Accepts until told otherwise; records what the sequence asked of it, in order."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.accepting = True
        self.connections = 3

    @property
    def active_connections(self) -> int:
        return self.connections

    def stop_accepting(self) -> None:
        self.calls.append("stream.stop_accepting")
        self.accepting = False

    async def shutdown(self) -> None:
        self.calls.append("stream.shutdown")
        self.connections = 0


class GatedBroker(NullBroker):
    """A broker whose stop waits for ``release``, so a test can look at the state mid-way."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.release = asyncio.Event()
        self.stopping = asyncio.Event()

    async def stop(self) -> None:
        self.calls.append("broker.stop")
        self.stopping.set()
        await self.release.wait()


async def test_shutdown_runs_once_in_order_and_is_draining_throughout(log_lines: Any) -> None:
    calls: list[str] = []
    stream, broker = RecordingStream(calls), GatedBroker(calls)
    lifecycle = Lifecycle(stream, broker)
    assert (lifecycle.state, lifecycle.draining) == (RunState.SERVING, False)

    first = asyncio.create_task(lifecycle.shutdown())
    await asyncio.wait_for(broker.stopping.wait(), 5)
    assert (lifecycle.state, lifecycle.draining) == (RunState.DRAINING, True)
    assert not stream.accepting
    second = asyncio.create_task(lifecycle.shutdown())  # e.g. a cleanup context, later
    await asyncio.sleep(0)  # let it run up to its first wait
    assert not second.done()  # waits for the sequence already running, does not start another

    broker.release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert calls == ["stream.stop_accepting", "broker.stop", "stream.shutdown"]
    assert (lifecycle.state, lifecycle.draining) == (RunState.STOPPED, True)
    await lifecycle.shutdown()
    assert calls == ["stream.stop_accepting", "broker.stop", "stream.shutdown"]
    output = log_lines.getvalue()
    assert output.count("[PortfolioStream] Shutting down: activeConnections=3") == 1
    assert output.count("[PortfolioStream] Shutdown complete: all connections closed") == 1
