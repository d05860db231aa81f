"""Helpers for the operations tests: the real `portfolio-stream` console script in subprocesses.

Every wait polls a condition (``/readyz``, a log line, a datagram) under an overall deadline;
none of these tests sleeps for a fixed time to let something happen.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BIN_DIR = Path(sys.executable).parent
CLI = (
    str(BIN_DIR / "portfolio-stream")
    if (BIN_DIR / "portfolio-stream").exists()
    else (shutil.which("portfolio-stream") or "portfolio-stream")
)
REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 30.0

# Stands in for systemd's exec of a socket-activated service: LISTEN_PID must be the pid of
# the process that finally runs, and the inherited socket must be descriptor 3.
LISTEN_WRAPPER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.environ['LISTEN_FDS'] = '1'\n"
    "os.environ['LISTEN_FDNAMES'] = 'http'\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)

_SYSTEMD_VARS = (
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(tmp_path: Path, **overrides: Any) -> dict[str, str]:
    """The environment of a test service: simulated broker, quiet, private database and port."""
    env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARS}
    env.update(
        {
            "BROKER": "simulated",
            "SIM_ORDER_INTERVAL_S": "0",
            "SIM_DEMO_USERS": "false",
            "DATABASE_URL": f"sqlite:///{tmp_path}/portfolio-stream.db",
            "HOST": "127.0.0.1",
            "PORT": str(free_port()),
            "SHUTDOWN_TIMEOUT_S": "5",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({key.upper(): str(value) for key, value in overrides.items()})
    return env


def workdir(env: dict[str, str]) -> Path:
    """The test's private directory (where its database lives): no stray `.env` is read."""
    return Path(env["DATABASE_URL"].removeprefix("sqlite:///")).parent


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """Run a `portfolio-stream` subcommand (users, sessions, trade); returns its stdout."""
    result = subprocess.run(
        [CLI, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=workdir(env),
    )
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout.strip()


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> int:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback http
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code
    except (OSError, urllib.error.URLError):
        return 0


class Service:
    """A `portfolio-stream serve` subprocess with its log captured in a file."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        listen_sock: socket.socket | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        self.env = env
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        pass_fds: tuple[int, ...] = ()
        if listen_sock is None:
            argv = [CLI, "serve"]
            host, port = "127.0.0.1", int(env["PORT"])
        else:
            fd = listen_sock.fileno()
            argv = [sys.executable, "-c", LISTEN_WRAPPER, str(fd), CLI, "serve"]
            pass_fds = (fd,)
            host, port = listen_sock.getsockname()[:2]
        self.base_url = f"http://{host}:{port}"
        argv = [*(wrapper or []), *argv]
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            cwd=workdir(env),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.log()}")
            return http_status(f"{self.base_url}/readyz", timeout=2) == 200

        wait_until(ready, timeout, f"{self.base_url}/readyz")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (as systemd's KillSignal) and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Collects started services and makes sure none outlives its test."""
    started: list[Service] = []
    yield started
    for service in started:
        service.kill()
