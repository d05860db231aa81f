"""Structured logging in the runbook's line format.

Call sites log a message plus fields: ``log.info("[PortfolioStream] Client connected",
userId="user-1", connectionId="conn_1")``. The text renderer turns that into
``2026-01-04T10:30:00.000Z INFO [PortfolioStream] Client connected: userId=user-1,
connectionId=conn_1`` (one line) — exactly the runbook's lines. Fields whose name starts
with ``_`` are kept out of the text line but appear (without the underscore) in JSON lines, so
a message that already embeds its values word for word can still carry structured context.
"""

from __future__ import annotations

import atexit
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, MutableMapping
from datetime import UTC, datetime
from typing import IO, Any

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from config.log_sinks import ReopeningFile, TeeLogger
from config.settings import Settings

__all__ = [
    "ReopeningFile",
    "Sampler",
    "TeeLogger",
    "configure_logging",
    "get_logger",
    "json_renderer",
    "render_message",
    "text_renderer",
    "utc_timestamp",
]

# At exit, queued lines get this long to reach their streams: a stdout nobody reads must not
# keep a stopping service from exiting.
EXIT_FLUSH_S = 2.0

_LEVELS = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "warn": "WARNING",
    "error": "ERROR",
    "critical": "CRITICAL",
    "exception": "ERROR",
}


def utc_timestamp(now: float | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a trailing Z: ``2026-01-04T10:30:00.000Z``."""
    moment = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_message(event_dict: MutableMapping[str, Any]) -> str:
    """The runbook message: the event text, then ``: k=v, k=v`` for its public fields."""
    message = str(event_dict.get("event", ""))
    fields = [
        f"{key}={value}"
        for key, value in event_dict.items()
        if key not in _RESERVED and not key.startswith("_")
    ]
    return f"{message}: {', '.join(fields)}" if fields else message


_RESERVED = frozenset({"event", "level", "timestamp", "exc_info", "exception", "stack_info"})


def _level(method_name: str) -> str:
    return _LEVELS.get(method_name, method_name.upper())


def text_renderer(_: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    line = f"{utc_timestamp()} {_level(method_name)} {render_message(event_dict)}"
    exception = event_dict.get("exception")
    return f"{line}\n{exception}" if exception else line


def json_renderer(_: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    record: dict[str, Any] = {
        "timestamp": utc_timestamp(),
        "level": _level(method_name),
        "message": render_message(event_dict),
    }
    for key, value in event_dict.items():
        if key in ("event", "level", "timestamp", "exc_info", "stack_info"):
            continue
        record[key.lstrip("_")] = value
    return orjson.dumps(record, default=str).decode()


class Sampler:
    """At most one line per interval for a noisy kind of event; the rest are only counted."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval_s
        self._clock = clock
        self._next_at = -math.inf
        self._suppressed = 0

    def admit(self) -> int | None:
        """None: do not log this one (it is counted). Else: log it, with this many left
        unlogged since the last line."""
        now = self._clock()
        if now < self._next_at:
            self._suppressed += 1
            return None
        self._next_at = now + self._interval
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


def _printable(text: str, limit: int = 80) -> str:
    """Peer-supplied text made safe for one log line: one line, printable, bounded."""
    flat = " ".join(text.split())[:limit]
    return "".join(c if c.isprintable() else "?" for c in flat)


class _StdlibBridge(logging.Handler):
    """Routes third-party stdlib logging (aiohttp, alpaca-py) through the same output.

    aiohttp logs every malformed request at ERROR with a traceback; anyone who can open a
    socket could fill the log with them. They are one INFO line per interval instead, with a
    count of the others.
    """

    def __init__(self, logger: TeeLogger, json_lines: bool, level: int, interval_s: float) -> None:
        super().__init__()
        self._logger = logger
        self._json = json_lines
        self._level = level
        self._bad_requests = Sampler(interval_s)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            renderer = json_renderer if self._json else text_renderer
            error = record.exc_info[1] if record.exc_info else None
            if record.name == "aiohttp.server" and isinstance(error, HttpProcessingError):
                event = self._bad_request(record, error)
                if event is not None:
                    self._logger.msg(renderer(None, "info", event))
                return
            message = f"[{record.name}] {record.getMessage()}"
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self._logger.msg(renderer(None, record.levelname.lower(), {"event": message}))
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)

    def _bad_request(
        self, record: logging.LogRecord, error: HttpProcessingError
    ) -> dict[str, Any] | None:
        if self._level > logging.INFO:
            return None
        suppressed = self._bad_requests.admit()
        if suppressed is None:
            return None
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
        event: dict[str, Any] = {
            "event": "[PortfolioStream] Malformed HTTP request refused",
            "status": error.code,
            "error": type(error).__name__,
            "detail": _printable(str(error.message)),
            "remote": remote,
        }
        if suppressed:
            event["unloggedSinceLast"] = suppressed
        return event


def configure_logging(settings: Settings, extra_streams: Iterable[IO[str]] = ()) -> TeeLogger:
    """Configure structlog (and stdlib logging) per LOG_FORMAT/LOG_LEVEL/LOG_FILE.

    Only the CLI and tests call this; it returns the sink so tests can inspect or reopen it.
    """
    streams: list[IO[str] | ReopeningFile] = [sys.stdout, *extra_streams]
    if settings.log_file is not None:
        streams.append(ReopeningFile(settings.log_file))
    renderer = json_renderer if settings.log_format == "json" else text_renderer

    def dropped_notice(count: int) -> str:
        event = {"event": "[Logging] Log output was not being read: lines dropped", "count": count}
        return renderer(None, "warning", event)

    sink = TeeLogger(streams, settings.log_queue_lines, dropped_notice)
    previous, _SINKS[:] = _SINKS[:], [sink]
    for old in previous:
        old.retire()
    level = logging.getLevelNamesMapping()[settings.log_level]
    structlog.configure(
        processors=[
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_: sink,
        cache_logger_on_first_use=False,
    )
    _LOG.rebind(structlog.get_logger().bind(), debug=level <= logging.DEBUG)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(
        _StdlibBridge(
            sink, settings.log_format == "json", level, settings.log_bad_request_interval_s
        )
    )
    root.setLevel(max(level, logging.WARNING))
    return sink


class ServiceLogger:
    """The one logger the service's modules hold, rebound by each ``configure_logging``.

    structlog's lazy proxy builds a new bound logger on every call when caching is off (and
    caching would pin the first configuration forever); the hot path logs on every event, so
    this facade holds the current logger's bound methods directly. Disabled levels are
    structlog's no-ops, and ``debug_enabled`` lets per-tick call sites skip building fields.
    """

    _METHODS = ("debug", "info", "warning", "error", "exception", "critical")

    def __init__(self) -> None:
        self.debug_enabled = True
        self.rebind(structlog.get_logger(), debug=True)

    def rebind(self, logger: Any, *, debug: bool) -> None:
        for name in self._METHODS:
            setattr(self, name, getattr(logger, name))
        self.debug_enabled = debug

    # Filled in by rebind(); declared for type checkers.
    debug: Any
    info: Any
    warning: Any
    error: Any
    exception: Any
    critical: Any


_LOG = ServiceLogger()
_SINKS: list[TeeLogger] = []  # the sink of the latest configure_logging, flushed at exit


@atexit.register
def _flush_at_exit() -> None:
    for sink in _SINKS:
        sink.flush(EXIT_FLUSH_S)


def dropped_log_lines() -> int:
    """Log lines lost since start because an output was not being read (for /metrics)."""
    return sum(sink.dropped_lines for sink in _SINKS)


def get_logger() -> ServiceLogger:
    """The service's logger; follows the latest ``configure_logging``."""
    return _LOG
