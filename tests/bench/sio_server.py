"""The peer build: the same fan-out job written the usual way on python-socketio.

``socketio.AsyncServer`` attached to an aiohttp app; each connection joins a room named after
its user; every bus-like event is one ``emit`` to that user's room (no batching, no
coalescing). The same bench source drives it at the same rate. Authentication is the
``user`` query parameter (connect cost is not part of the per-update figure).
Run: ``HOST=127.0.0.1 PORT=... BENCH_USER_IDS_FILE=... BENCH_CONTROL_FILE=...
python -m tests.bench.sio_server``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any
from urllib.parse import parse_qs

import socketio
from aiohttp import web

from tests.bench.server_main import install_uvloop
from tests.bench.source import controlled_source


def build() -> tuple[web.Application, Any]:
    sio = socketio.AsyncServer(
        async_mode="aiohttp", cors_allowed_origins="*", logger=False, engineio_logger=False
    )
    app = web.Application()
    sio.attach(app)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        user = parse_qs(environ.get("QUERY_STRING", "")).get("user", [""])[0]
        if not user:
            return False
        await sio.enter_room(sid, user)
        return True

    return app, sio


async def run(host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app, sio = build()

    async def emit(kind: str, payload: dict[str, Any], _quiet: bool) -> None:
        await sio.emit(kind, payload, room=payload["userId"])

    async with controlled_source(emit):
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=1024, reuse_address=True).start()
        await stop.wait()
        await asyncio.wait_for(runner.cleanup(), timeout=10)
    return 0


def main() -> int:
    install_uvloop()
    return asyncio.run(run(os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])))


if __name__ == "__main__":
    raise SystemExit(main())
