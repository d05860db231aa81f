"""Structured logging in the runbook's line format.

Call sites log a message plus fields: ``log.info("[PortfolioStream] Client connected",
userId="user-1", connectionId="conn_1")``. The text renderer turns that into
``2026-01-04T10:30:00.000Z INFO [PortfolioStream] Client connected: userId=user-1,
connectionId=conn_1`` (one line) — exactly the runbook's lines. Fields whose name starts
with ``_`` are kept out of the text line but appear (without the underscore) in JSON lines, so
a message that already embeds its values word for word can still carry structured context.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

import orjson
import structlog

from config.settings import Settings

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


class TeeLogger:
    """structlog logger writing each rendered line to several streams (stdout, LOG_FILE)."""

    def __init__(self, streams: Iterable[IO[str]]) -> None:
        self._streams = list(streams)

    def msg(self, message: str) -> None:
        line = message + "\n"
        for stream in self._streams:
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError):
                # A full disk or a closed pipe must not take the service down with it.
                pass

    log = debug = info = warning = warn = error = critical = exception = fatal = msg

    def reopen(self) -> None:
        """Reopen every file stream (the SIGHUP action, after logrotate moved LOG_FILE)."""
        for stream in self._streams:
            if isinstance(stream, ReopeningFile):
                stream.reopen()

    def close(self) -> None:
        """Close the LOG_FILE this sink opened (before configuring logging anew)."""
        for stream in self._streams:
            if isinstance(stream, ReopeningFile):
                stream.close()


class ReopeningFile:
    """Append-mode file that reopens itself once logrotate moved it (WatchedFileHandler-like)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = self._open()

    def _open(self) -> TextIO:
        handle = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the process
        stat = os.fstat(handle.fileno())
        self._identity = (stat.st_ino, stat.st_dev)
        return handle

    def _moved(self) -> bool:
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            return True
        return (stat.st_ino, stat.st_dev) != self._identity

    def write(self, text: str) -> int:
        if self._moved():
            self.reopen()
        return self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def reopen(self) -> None:
        """Close and reopen the path (also the SIGHUP action)."""
        old = self._file
        self._file = self._open()
        old.close()

    def close(self) -> None:
        self._file.close()


class _StdlibBridge(logging.Handler):
    """Routes third-party stdlib logging (aiohttp, alpaca-py) through the same output."""

    def __init__(self, logger: TeeLogger, json_lines: bool) -> None:
        super().__init__()
        self._logger = logger
        self._json = json_lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = f"[{record.name}] {record.getMessage()}"
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            event: dict[str, Any] = {"event": message}
            renderer = json_renderer if self._json else text_renderer
            self._logger.msg(renderer(None, record.levelname.lower(), event))
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_logging(settings: Settings, extra_streams: Iterable[IO[str]] = ()) -> TeeLogger:
    """Configure structlog (and stdlib logging) per LOG_FORMAT/LOG_LEVEL/LOG_FILE.

    Only the CLI and tests call this; it returns the sink so tests can inspect or reopen it.
    """
    streams: list[IO[str]] = [sys.stdout, *extra_streams]
    if settings.log_file is not None:
        streams.append(ReopeningFile(settings.log_file))  # type: ignore[arg-type]
    sink = TeeLogger(streams)
    renderer = json_renderer if settings.log_format == "json" else text_renderer
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
    root.addHandler(_StdlibBridge(sink, settings.log_format == "json"))
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


def get_logger() -> ServiceLogger:
    """The service's logger; follows the latest ``configure_logging``."""
    return _LOG
