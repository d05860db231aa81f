"""Running the service: listener, signals, bounded graceful shutdown (SPEC §9).

SIGTERM/SIGINT start the graceful sequence (the app's on_shutdown: stop accepting, stop broker
streams, flush batches, close sockets with 1001, then cleanup contexts). The whole stop is bounded
by SHUTDOWN_TIMEOUT_S; the process exits 0 when it completes in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from aiohttp import web

from app.factory import create_app
from app.keys import BRIDGE_KEY
from config.logging import configure_logging, get_logger
from config.settings import Settings

log = get_logger()


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def run_service(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop``), then shut down within SHUTDOWN_TIMEOUT_S."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    app = create_app(settings)
    # handler_cancellation: a handler still running once shutdown_timeout passed is cancelled.
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=settings.shutdown_timeout_s / 2)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024, reuse_address=True)
    await site.start()
    log.info(f"[STARTUP] Listening on http://{settings.host}:{settings.port}",
             _mode=settings.broker_mode, _enabled=settings.enable_realtime_portfolio)
    bridge = app.get(BRIDGE_KEY)
    if bridge is not None:
        for username, password in bridge.demo_logins:
            log.info(f"[STARTUP] Demo login: {username} / {password} at "
                     f"http://localhost:{settings.port}/login")
    await stop.wait()
    log.info("[PortfolioStream] Signal received: starting graceful shutdown")
    try:
        await asyncio.wait_for(runner.cleanup(), timeout=settings.shutdown_timeout_s)
    except TimeoutError:
        log.error("[PortfolioStream] Shutdown exceeded SHUTDOWN_TIMEOUT_S; exiting anyway",
                  timeoutS=settings.shutdown_timeout_s)
        return 1
    return 0


def serve(settings: Settings) -> int:
    configure_logging(settings)
    _install_uvloop()
    try:
        return asyncio.run(run_service(settings))
    except OSError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
