"""portfolio-stream in its production configuration, plus the bench event source.

Settings come from the environment exactly as ``portfolio-stream serve`` loads them, logging is
configured the same way (stdout and LOG_FILE), uvloop is installed the same way, and the server
runs through the production ``run_service`` (collector tuning, open-file check, shutdown) with
the factory's app — only the broker bridge is swapped for the bench source, which publishes on
the bus like the bridge does. Optional: BENCH_PROFILE=path profiles the process with pyinstrument
while the source runs and writes a text report there.

Run: ``python -m tests.bench.server_main`` (the orchestrator sets the environment).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from app.cli import load_settings
from app.factory import create_app
from app.keys import BUS_KEY
from app.process_tuning import ensure_file_limit
from app.server import install_uvloop, run_service
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


async def bench_source_ctx(app: web.Application) -> AsyncIterator[None]:
    bus = app[BUS_KEY]
    profiling = Profiling(os.environ.get("BENCH_PROFILE"))

    def on_start() -> None:
        profiling.start()

    def emit(kind: str, payload: dict[str, Any], quiet: bool) -> None:
        bus.publish(kind, payload, quiet=quiet)

    async with controlled_source(emit, on_start, profiling.stop):
        yield
    profiling.stop()


def build_bench_app(settings: Settings) -> web.Application:
    """The factory's app with the bench source in place of the broker bridge."""
    return create_app(settings, with_bridge=False, extra_contexts=(bench_source_ctx,))


def main() -> int:
    """``portfolio-stream serve`` (app.server.serve) with only the app swapped."""
    settings = load_settings()
    ensure_file_limit(settings)
    sink = configure_logging(settings)
    install_uvloop()
    return asyncio.run(run_service(settings, reopen_logs=sink.reopen, build_app=build_bench_app))


if __name__ == "__main__":
    raise SystemExit(main())
