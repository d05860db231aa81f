"""portfolio-stream in its production configuration, plus the bench event source.

Settings come from the environment exactly as ``portfolio-stream serve`` loads them, logging is
configured the same way (stdout and LOG_FILE), uvloop is installed the same way, and the app is
the factory's — only the broker bridge is swapped for the bench source, which publishes on the
bus like the bridge does. Optional: BENCH_PROFILE=path profiles the process with pyinstrument
while the source runs and writes a text report there.

Run: ``python -m tests.bench.server_main`` (the orchestrator sets the environment).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from app.cli import load_settings
from app.factory import create_app
from app.keys import BUS_KEY
from config.logging import configure_logging, get_logger
from config.settings import Settings
from tests.bench.source import controlled_source

log = get_logger()


class Profiling:
    """pyinstrument around the busy part of the run (between source start and stop)."""

    def __init__(self, path: str | None) -> None:
        self._path = Path(path) if path else None
        self._profiler: Any = None

    def start(self) -> None:
        if self._path is None or self._profiler is not None:
            return
        from pyinstrument import Profiler

        self._profiler = Profiler(interval=0.001, async_mode="disabled")
        self._profiler.start()

    def stop(self) -> None:
        if self._profiler is None or self._path is None:
            return
        self._profiler.stop()
        self._path.write_text(self._profiler.output_text(unicode=True, show_all=False))
        self._profiler = None


def gc_experiment() -> Callable[[], None]:
    """What-if knobs for the collector (never set by default: the default is production).

    BENCH_GC_THRESHOLD="a,b,c" calls gc.set_threshold at start; BENCH_GC_FREEZE=1 calls
    gc.freeze() when the source starts (the connections are established by then).
    """
    threshold = os.environ.get("BENCH_GC_THRESHOLD")
    if threshold:
        gc.set_threshold(*(int(x) for x in threshold.split(",")))
    if os.environ.get("BENCH_GC_FREEZE") == "1":
        return gc.freeze
    return lambda: None


async def bench_source_ctx(app: web.Application) -> AsyncIterator[None]:
    bus = app[BUS_KEY]
    profiling = Profiling(os.environ.get("BENCH_PROFILE"))
    freeze = gc_experiment()

    def on_start() -> None:
        freeze()
        profiling.start()

    def emit(kind: str, payload: dict[str, Any], quiet: bool) -> None:
        bus.publish(kind, payload, quiet=quiet)

    async with controlled_source(emit, on_start, profiling.stop):
        yield
    profiling.stop()


async def run(settings: Settings) -> int:
    """Mirror of app.server.run_service with the bench source instead of the broker bridge."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(settings, with_bridge=False, extra_contexts=(bench_source_ctx,))
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=settings.shutdown_timeout_s / 2
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024, reuse_address=True)
    await site.start()
    log.info(
        f"[STARTUP] Listening on http://{settings.host}:{settings.port}",
        _mode="bench",
        _enabled=settings.enable_realtime_portfolio,
    )
    await stop.wait()
    try:
        await asyncio.wait_for(runner.cleanup(), timeout=settings.shutdown_timeout_s)
    except TimeoutError:
        return 1
    return 0


def install_uvloop() -> None:
    """As ``portfolio-stream serve`` does: uvloop when it is installed."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> int:
    settings = load_settings()
    configure_logging(settings)
    install_uvloop()
    return asyncio.run(run(settings))


if __name__ == "__main__":
    raise SystemExit(main())
