"""Log output under pressure: unread streams drop and count lines, noisy events are sampled."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import structlog

from config.logging import Sampler, TeeLogger, configure_logging
from tests.conftest import make_settings

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def pipe() -> Iterator[tuple[IO[str], IO[str]]]:
    """A real pipe: (reader, writer). Nothing reads it until a test says so."""
    read_fd, write_fd = os.pipe()
    reader, writer = os.fdopen(read_fd, "r"), os.fdopen(write_fd, "w")
    yield reader, writer
    reader.close()
    writer.close()


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[list[TeeLogger]]:
    made: list[TeeLogger] = []
    yield made
    configure_logging(make_settings(tmp_path))
    for sink in made:
        sink.close(timeout=0.1)


def test_an_unread_stream_drops_and_counts_lines_instead_of_blocking(
    tmp_path: Path, pipe: tuple[IO[str], IO[str]], sinks: list[TeeLogger]
) -> None:
    reader, writer = pipe
    sink = configure_logging(make_settings(tmp_path, log_queue_lines=100), [writer])
    sinks.append(sink)
    log = structlog.get_logger()
    logged = threading.Event()

    def flood() -> None:
        for n in range(5000):  # ~500 KiB, far more than the pipe holds
            log.info("[PortfolioStream] flood line", n=n, padding="x" * 60)
        logged.set()

    threading.Thread(target=flood, daemon=True).start()
    assert logged.wait(10), "logging blocked on a stream nobody reads"
    dropped = sink.dropped_lines
    assert dropped > 0

    text: list[str] = []
    drained = threading.Thread(target=lambda: text.append(reader.read()), daemon=True)
    drained.start()
    assert sink.flush(10)
    log.info("[PortfolioStream] after the reader came back")  # carries the last drop count
    assert sink.flush(10)
    writer.close()
    drained.join(10)
    lines = text[0].splitlines()
    pattern = rf"{TS} WARNING \[Logging\] Log output was not being read: lines dropped: count=(\d+)"
    notices = [re.fullmatch(pattern, line) for line in lines if "lines dropped" in line]
    assert notices and all(notices), lines
    lost = sum(int(notice.group(1)) for notice in notices if notice)
    assert 0 < lost <= dropped  # (stdout, also a queued stream here, may have dropped some too)
    # Every line that got through is whole, in the runbook format, and in order.
    numbers = [
        int(m.group(1)) for m in map(re.compile(rf"{TS} INFO .*: n=(\d+),").match, lines) if m
    ]
    assert numbers == sorted(numbers) and len(numbers) + lost == 5000
    assert lines[-1].endswith("INFO [PortfolioStream] after the reader came back")


def test_reopen_takes_effect_in_line_order(tmp_path: Path, sinks: list[TeeLogger]) -> None:
    """What SIGHUP does after logrotate's rename: earlier lines old file, later ones new."""
    log_file = tmp_path / "server.log"
    sink = configure_logging(make_settings(tmp_path, log_file=log_file))
    sinks.append(sink)
    log = structlog.get_logger()
    log.info("[PortfolioStream] before rotation")
    rotated = tmp_path / "server.log.1"
    assert sink.flush()
    os.rename(log_file, rotated)
    sink.reopen()
    log.info("[PortfolioStream] after rotation")
    assert sink.flush()
    assert "before rotation" in rotated.read_text()
    assert "after rotation" not in rotated.read_text()
    assert "after rotation" in log_file.read_text()


def test_a_sampler_admits_one_event_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    sampler = Sampler(60.0, clock=lambda: now[0])
    assert sampler.admit() == 0  # the first is logged
    assert [sampler.admit() for _ in range(499)] == [None] * 499
    now[0] += 59.9
    assert sampler.admit() is None
    now[0] += 0.1
    assert sampler.admit() == 500  # logged, reporting the ones that were not
    assert sampler.admit() is None
