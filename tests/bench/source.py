"""The bench event source that runs inside a server process, and its loopback control port.

The orchestrator drives it with one-line JSON commands over TCP on 127.0.0.1:
``{"cmd": "start", "rate": 10000, "seconds": 20}``, ``{"cmd": "stop"}``, ``{"cmd": "stats"}``.
Every run is bounded: the source stops after ``seconds`` (and at most ``rate * seconds``
events), and the control server only accepts loopback connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.bench.workload import Workload

Emit = Callable[[str, dict[str, Any], bool], Awaitable[None] | None]

TICK_S = 0.002
MAX_SECONDS = 600.0


class GcMeter:
    """Time the server spends in the cyclic garbage collector, per generation."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.longest = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            elapsed = time.perf_counter() - self._started
            generation = info["generation"]
            self.seconds[generation] += elapsed
            self.count[generation] += 1
            self.longest = max(self.longest, elapsed)

    def stats(self) -> dict[str, Any]:
        return {
            "gcSeconds": list(self.seconds),
            "gcCount": list(self.count),
            "gcLongestS": self.longest,
        }


class RateSource:
    """Publishes ``rate`` events/s through ``emit`` for a bounded time."""

    def __init__(
        self,
        workload: Workload,
        emit: Emit,
        on_start: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self._workload = workload
        self._emit = emit
        self._on_start = on_start
        self._on_stop = on_stop
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.due = 0
        self.started_at = 0.0
        self.stopped_at = 0.0
        self.rate = 0.0
        self.gc = GcMeter()
        gc.callbacks.append(self.gc)

    def start(self, rate: float, seconds: float) -> None:
        self.stop()
        self.published = self.due = 0
        self.rate = rate
        self.started_at = time.monotonic()
        self.stopped_at = 0.0
        if self._on_start is not None:
            self._on_start()
        self._task = asyncio.create_task(
            self._run(rate, min(seconds, MAX_SECONDS)), name="bench-source"
        )

    def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self.stopped_at = time.monotonic()
        self._task = None

    def stats(self) -> dict[str, Any]:
        end = self.stopped_at or time.monotonic()
        elapsed = max(end - self.started_at, 1e-9) if self.started_at else 0.0
        return {
            "published": self.published,
            "due": self.due,
            "elapsedS": elapsed,
            "rate": self.rate,
            "achievedRate": self.published / elapsed if elapsed else 0.0,
            "running": self._task is not None and not self._task.done(),
            **self.gc.stats(),
        }

    async def _run(self, rate: float, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + seconds
        limit = int(rate * seconds)
        workload, emit = self._workload, self._emit
        try:
            while self.published < limit:
                now = loop.time()
                if now >= end:
                    break
                self.due = due = min(int((now - start) * rate), limit)
                while self.published < due:
                    kind, payload, quiet = workload.next()
                    result = emit(kind, payload, quiet)
                    if result is not None:
                        await result
                    self.published += 1
                await asyncio.sleep(TICK_S)
        finally:
            self.stopped_at = time.monotonic()
            if self._on_stop is not None:
                self._on_stop()


def write_allocations(path: Path) -> None:
    """Top allocation sites (only when started with PYTHONTRACEMALLOC; a diagnosis aid)."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        path.write_text("tracemalloc is off (set PYTHONTRACEMALLOC=1)\n")
        return
    snapshot = tracemalloc.take_snapshot()
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    lines = [f"traced: {total / 1024 / 1024:.1f} MiB"]
    lines += [str(stat) for stat in snapshot.statistics("lineno")[:40]]
    path.write_text("\n".join(lines) + "\n")


async def serve_control(source: RateSource, port_file: Path) -> asyncio.Server:
    """Start the control server on an ephemeral loopback port, written to ``port_file``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                command = json.loads(line)
                if command["cmd"] == "start":
                    source.start(float(command["rate"]), float(command["seconds"]))
                elif command["cmd"] == "stop":
                    source.stop()
                elif command["cmd"] == "tracemalloc":
                    write_allocations(Path(command["path"]))
                writer.write(json.dumps(source.stats()).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError, KeyError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    return server


def user_ids_from_env() -> list[str]:
    path = os.environ.get("BENCH_USER_IDS_FILE")
    if not path:
        raise SystemExit("BENCH_USER_IDS_FILE is not set")
    return [line for line in Path(path).read_text().splitlines() if line]


@contextlib.asynccontextmanager
async def controlled_source(
    emit: Emit,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> AsyncIterator[RateSource]:
    """A RateSource over the users in BENCH_USER_IDS_FILE, controlled on BENCH_CONTROL_FILE."""
    source = RateSource(Workload(user_ids_from_env()), emit, on_start, on_stop)
    server = await serve_control(source, Path(os.environ["BENCH_CONTROL_FILE"]))
    try:
        yield source
    finally:
        source.stop()
        server.close()
