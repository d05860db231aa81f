"""Where rendered log lines go: stdout and LOG_FILE, each written by a thread of its own.

A write to a pipe nobody reads (a stuck journald, ``serve | less`` left paused) blocks; made on
the event loop it would stop the whole service. So the loop only puts the line in a bounded
queue per stream, a writer thread does the blocking write, and when a queue is full the line
is dropped and counted; once the stream moves again it gets one line saying how many it lost.
In-memory streams (tests' ``StringIO``) cannot block and are written at once.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TextIO

_REOPEN = object()  # a queue item: reopen the file here, in line order
_STOP = object()  # a queue item: the writer thread ends here


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


def _can_block(stream: IO[str] | ReopeningFile) -> bool:
    if isinstance(stream, ReopeningFile):
        return True
    try:
        stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return False
    return True


class QueuedStream:
    """One stream fed through a bounded queue by a daemon writer thread."""

    def __init__(
        self,
        stream: IO[str] | ReopeningFile,
        capacity: int,
        dropped_notice: Callable[[int], str],
    ) -> None:
        self.stream = stream
        self.dropped = 0  # lines lost to a full queue, ever
        self._reported = 0
        self._notice = dropped_notice
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self._lock = threading.Lock()
        self._reopen_requested = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def reopen(self) -> None:
        try:
            self._queue.put_nowait(_REOPEN)
        except queue.Full:  # the writer is behind anyway: it reopens before its next write
            self._reopen_requested.set()

    def stop(self, timeout: float) -> bool:
        """Write what is queued (up to ``timeout``) and end the writer thread."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is written; False if that took too long."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._queue.get()]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = _STOP in items
            try:
                if self._reopen_requested.is_set():
                    self._reopen_requested.clear()
                    self._reopen_file()
                self._write(items)
            finally:
                for _ in items:
                    self._queue.task_done()

    def _write(self, items: Iterable[object]) -> None:
        lines: list[str] = []
        for item in items:
            if item is _STOP:
                break
            if item is _REOPEN:
                self._emit(lines)
                lines = []
                self._reopen_file()
            else:
                assert isinstance(item, str)
                lines.append(item)
        self._emit(lines)

    def _reopen_file(self) -> None:
        if isinstance(self.stream, ReopeningFile):
            self._guard(self.stream.reopen)

    def _emit(self, lines: list[str]) -> None:
        if not lines:
            return
        with self._lock:
            lost, self._reported = self.dropped - self._reported, self.dropped
        if lost:  # after the lines that were waiting, before anything logged later
            lines.append(self._notice(lost) + "\n")
        text = "".join(lines)
        self._guard(lambda: (self.stream.write(text), self.stream.flush()))

    @staticmethod
    def _guard(action: Callable[[], object]) -> None:
        # A full disk or a closed pipe must not take the service down with it.
        with contextlib.suppress(OSError, ValueError):
            action()


class TeeLogger:
    """structlog logger writing each rendered line to several streams (stdout, LOG_FILE)."""

    def __init__(
        self,
        streams: Iterable[IO[str] | ReopeningFile],
        capacity: int = 10_000,
        dropped_notice: Callable[[int], str] = lambda n: f"{n} log lines dropped",
    ) -> None:
        self._inline: list[IO[str] | ReopeningFile] = []
        self._queued: list[QueuedStream] = []
        for stream in streams:
            if _can_block(stream):
                self._queued.append(QueuedStream(stream, capacity, dropped_notice))
            else:
                self._inline.append(stream)

    def msg(self, message: str) -> None:
        line = message + "\n"
        for queued in self._queued:
            queued.put(line)
        for stream in self._inline:
            with contextlib.suppress(OSError, ValueError):
                stream.write(line)
                stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg

    @property
    def dropped_lines(self) -> int:
        """Lines lost to streams that were not being read, summed over streams."""
        return sum(queued.dropped for queued in self._queued)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (up to ``timeout`` in all) until every queued line is written."""
        deadline = time.monotonic() + timeout
        return all(queued.flush(max(0.0, deadline - time.monotonic())) for queued in self._queued)

    def reopen(self) -> None:
        """Reopen every file stream (the SIGHUP action, after logrotate moved LOG_FILE)."""
        for queued in self._queued:
            if isinstance(queued.stream, ReopeningFile):
                queued.reopen()

    def retire(self, timeout: float = 2.0) -> None:
        """Write what is queued (bounded by ``timeout``) and end the writer threads; the
        streams stay open and any later line is written directly (a newer sink took over)."""
        deadline = time.monotonic() + timeout
        for queued in self._queued:
            queued.stop(max(0.0, deadline - time.monotonic()))
        self._inline.extend(queued.stream for queued in self._queued)
        self._queued = []

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (bounded by ``timeout``), then close the LOG_FILE this opened."""
        streams = [queued.stream for queued in self._queued] + self._inline
        self.retire(timeout)
        for stream in streams:
            if isinstance(stream, ReopeningFile):
                stream.close()
