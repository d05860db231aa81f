"""Log lines dropped because an output was not being read are exported to /metrics, so the
gap in stdout or LOG_FILE shows on a dashboard, not only in the log itself."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import structlog

from config.logging import configure_logging
from tests.conftest import ClientFactory, make_settings


async def test_dropped_log_lines_are_counted_in_metrics(
    app_client: ClientFactory, tmp_path: Path
) -> None:
    read_fd, write_fd = os.pipe()
    reader, writer = os.fdopen(read_fd, "r"), os.fdopen(write_fd, "w")
    try:
        sink = configure_logging(make_settings(tmp_path, log_queue_lines=100), [writer])
        log = structlog.get_logger()
        for n in range(3000):  # far more than the pipe and the queue hold; nobody reads it
            log.info("[PortfolioStream] flood line", n=n, padding="x" * 60)
        assert sink.dropped_lines > 0
        client = await app_client()
        body = await (await client.get("/metrics")).text()
        found = re.search(r"^portfolio_log_lines_dropped_total (\S+)$", body, re.M)
        assert found is not None, body
        assert 0 < float(found.group(1)) <= sink.dropped_lines
    finally:
        reader.close()  # what is still queued for the pipe then fails at once
        configure_logging(make_settings(tmp_path))  # a fresh sink; the flooded one retires
        # Lines the flooded sink left in the file's buffer cannot reach a closed pipe: closing
        # still releases the descriptor, and the EPIPE it reports is the point of the test.
        with contextlib.suppress(BrokenPipeError):
            writer.close()
