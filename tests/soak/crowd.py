"""Thousands of `/ws/portfolio` clients for the soak, in the benchmarks' load-client processes.

The bench's load client (``tests.bench.loadclient``: RFC 6455 on ``asyncio.Protocol``, cheap
enough to share two cores with the server) holds the connections; this wraps its process group
in a loop thread so the soak's synchronous scenarios can start, report and close it.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench.procs import ClientGroup


@dataclass(frozen=True, slots=True)
class _Port:
    port: int  # all ClientGroup needs of a server


class LoadCrowd:
    """``conns`` is (user id, session token) per connection; ``procs`` client processes."""

    def __init__(
        self, port: int, conns: list[tuple[str, str]], workdir: Path, procs: int = 2
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="load-crowd")
        self._group = ClientGroup(
            "portfolio",
            _Port(port),  # type: ignore[arg-type]
            conns,
            procs,
            workdir,
            concurrency=32,
            max_seconds=900,
        )
        self.ready: dict[str, Any] = {}

    def _run(self, work: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    def __enter__(self) -> LoadCrowd:
        self._thread.start()
        self._run(self._group.start(), 60)
        self.ready = self._run(self._group.wait_ready(300), 320)
        return self

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = self._run(self._group.report(), 90)
        report.pop("batchLatency", None)
        report.pop("entryLatency", None)
        return report

    def __exit__(self, *_: object) -> None:
        try:
            self._run(self._group.close(), 60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
