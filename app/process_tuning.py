"""Process-level tuning the service applies when it runs for real (not in tests).

- Garbage collection: a service holding tens of thousands of long-lived connection objects
  spends most collector time re-scanning them. After start-up the heap is frozen (those objects
  leave the generations) and the gen-0 threshold is raised, so collections are rare and short;
  each pause is timed into the metrics.
- Open files: every WebSocket is a descriptor. The soft RLIMIT_NOFILE is raised to the hard
  limit, and the service refuses to start when MAX_TOTAL_CONNECTIONS cannot fit under it —
  at the ceiling even /healthz and the 1013 close could no longer be served. While it runs,
  client connections of any kind keep within the limit less FD_RESERVE
  (app/connection_budget.py).
"""

from __future__ import annotations

import contextlib
import gc
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

from config.settings import Settings

# Descriptors the process needs besides client sockets: listener, SQLite (+WAL), log file,
# broker streams and REST pools, the simulated broker's own sockets, a margin for bursts.
FD_RESERVE = 128


class FileLimitTooLow(ValueError):
    """MAX_TOTAL_CONNECTIONS does not fit under the open-file limit."""


def ensure_file_limit(settings: Settings) -> int:
    """Raise the soft NOFILE limit to the hard one; returns it, or raises FileLimitTooLow."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    needed = settings.max_total_connections + FD_RESERVE
    if needed > soft:
        raise FileLimitTooLow(
            f"MAX_TOTAL_CONNECTIONS={settings.max_total_connections} needs about {needed} open "
            f"files but the limit is {soft}; lower it or raise LimitNOFILE / ulimit -n"
        )
    return soft


def client_socket_capacity() -> int:
    """Client connections the open-file limit leaves room for, after the reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(soft - FD_RESERVE, 1)


def tune_gc(thresholds: tuple[int, int, int]) -> None:
    gc.set_threshold(*thresholds)


def freeze_startup_heap() -> None:
    """Move everything alive after start-up out of the collector's generations."""
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def timed_gc(observe: Callable[[int, float], None]) -> Iterator[None]:
    """Report each collection's pause (generation, seconds) while the block runs."""
    started: list[float] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            observe(int(info.get("generation", 0)), time.perf_counter() - started.pop())

    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)
