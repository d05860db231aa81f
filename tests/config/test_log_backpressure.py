"""Log output never blocks the event loop: a stdout nobody reads does not stop the service."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.ops.conftest import CLI, http_status, service_env, wait_until, workdir

pytestmark = pytest.mark.slow

PIPE_BUFFER = 64 * 1024  # Linux's default pipe capacity


def test_a_stdout_pipe_nobody_reads_does_not_stop_the_service(tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    env = service_env(
        tmp_path,
        LOG_FILE=log_file,
        LOG_LEVEL="DEBUG",  # every simulated tick and fill logs: plenty of output, quickly
        SIM_DEMO_USERS="true",
        SIM_TICK_INTERVAL_MS="10",
        SIM_ORDER_INTERVAL_S="0.02",
    )
    base_url = f"http://127.0.0.1:{env['PORT']}"
    process = subprocess.Popen(  # stdout is a pipe this test never reads
        [CLI, "serve"],
        env=env,
        cwd=workdir(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: http_status(f"{base_url}/healthz", timeout=1) == 200,
            timeout=30,
            what="the service to answer",
        )
        # LOG_FILE keeps growing far past what the unread pipe can hold ...
        wait_until(
            lambda: log_file.stat().st_size > 8 * PIPE_BUFFER,
            timeout=30,
            what="LOG_FILE to outgrow the stdout pipe",
        )
        # ... and the loop still answers, promptly.
        for _ in range(5):
            assert http_status(f"{base_url}/healthz", timeout=2) == 200
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        # A shutdown whose last lines cannot reach stdout still ends, and in time.
        assert process.wait(timeout=20) == 0
        assert "Shutdown complete" in log_file.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()
