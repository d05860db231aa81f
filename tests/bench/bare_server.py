"""The memory floor: a bare aiohttp WebSocket server holding connections, nothing else.

Same aiohttp, same event loop (uvloop when installed), same ``compress=False`` and frame-size
limit as the service; no auth, no state, no logging. Each connection gets one hello frame and a
receive loop (the minimum any real server keeps per socket).
Run: ``HOST=127.0.0.1 PORT=... python -m tests.bench.bare_server``.
"""

from __future__ import annotations

import asyncio
import os
import signal

from aiohttp import WSMsgType, web

from tests.bench.server_main import install_uvloop


async def handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(autoping=True, compress=False, max_msg_size=64 * 1024)
    await ws.prepare(request)
    await ws.send_str('{"type":"connected"}')
    async for msg in ws:
        if msg.type is WSMsgType.ERROR:
            break
    return ws


async def run(host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = web.Application()
    app.router.add_get("/ws/portfolio", handler)
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
