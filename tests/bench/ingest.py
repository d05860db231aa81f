"""Ingest microbenchmark: events/s the bus + batcher absorb on one core, no sockets.

The service's own objects, wired by the app factory (``create_app`` + ``AppRunner.setup``, so
the production cleanup contexts run), with production logging (LOG_FILE; the parent discards
stdout). A few hundred users each hold one connection subscribed to every channel; the
connections are real ``Connection`` objects admitted through ``PortfolioStreamManager.admit``
and served by its receive loop, over a stand-in socket that accepts frames instantly. The
loop publishes pre-built payloads (building them is not ingest) in bursts and lets the bus
drain between bursts; batches flush on their timers and are "sent". The figure is events
divided by the process's CPU time (single-threaded, so per core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from app.factory import create_app
from app.keys import BUS_KEY, STREAM_KEY
from config.logging import configure_logging
from config.settings import Settings
from tests.bench.workload import Workload

SUBSCRIBE = b'{"type":"subscribe","channels":["positions","orders","account"]}'


class _Message:
    def __init__(self, kind: WSMsgType, data: Any = None, extra: str | None = None) -> None:
        self.type, self.data, self.extra = kind, data, extra


class InstantSocket:
    """The part of WebSocketResponse the stream uses; frames are counted, not written."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.closed = False
        self.close_code: int | None = None
        self._inbox: asyncio.Queue[_Message] = asyncio.Queue()
        self._inbox.put_nowait(_Message(WSMsgType.TEXT, SUBSCRIBE))

    async def receive(self) -> _Message:
        return await self._inbox.get()

    async def send_frame(self, data: bytes, opcode: WSMsgType) -> None:
        self.frames += 1
        self.bytes += len(data)

    async def ping(self, data: bytes = b"") -> None:
        pass

    async def pong(self, data: bytes = b"") -> None:
        pass

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if not self.closed:
            self.closed, self.close_code = True, code
            self._inbox.put_nowait(_Message(WSMsgType.CLOSE, code, message.decode()))
        return True


class _Request:
    transport = None


async def run(users: int, seconds: float, workdir: Path, window_ms: int) -> dict[str, Any]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite:///{workdir}/ingest.db",
        log_file=workdir / "ingest.log",
        batch_window_ms=window_ms,
        max_total_connections=users,
        max_connections_per_user=1,
    )
    configure_logging(settings)
    app = create_app(settings, with_bridge=False)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    bus, manager = app[BUS_KEY], app[STREAM_KEY]
    user_ids = [f"user-{i + 1}" for i in range(users)]
    sockets, serving = [], []
    for user_id in user_ids:
        ws = InstantSocket()
        conn = manager.admit(user_id, ws, _Request())  # type: ignore[arg-type]
        assert conn is not None
        sockets.append(ws)
        serving.append(asyncio.create_task(manager.serve(conn)))
    await asyncio.sleep(0.05)  # subscriptions and snapshots go out

    workload = Workload(user_ids)
    events = [workload.next() for _ in range(100_000)]
    publish = bus.publish
    burst = 1000
    published = 0
    frames0 = sum(ws.frames for ws in sockets)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    deadline = wall0 + seconds
    i = 0
    while time.perf_counter() < deadline:
        for kind, payload, quiet in events[i : i + burst]:
            publish(kind, payload, quiet=quiet)
        i = (i + burst) % len(events)
        published += burst
        await asyncio.sleep(0)  # the bus drains; due batch timers fire
    await asyncio.sleep(0)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    frames = sum(ws.frames for ws in sockets) - frames0
    await runner.cleanup()
    for task in serving:
        task.cancel()
    return {
        "users": users,
        "windowMs": window_ms,
        "events": published,
        "cpuS": round(cpu, 3),
        "wallS": round(wall, 3),
        "eventsPerCoreS": round(published / cpu, 1),
        "eventsPerWallS": round(published / wall, 1),
        "cpuPerEventUs": round(cpu / published * 1e6, 3),
        "framesSent": frames,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--window-ms", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    profiler: Any = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001, async_mode="disabled")
        profiler.start()
    result = asyncio.run(run(args.users, args.seconds, args.workdir, args.window_ms))
    if profiler is not None:
        profiler.stop()
        args.profile.write_text(profiler.output_text(unicode=True, show_all=False))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
