"""Idle TCP connections cannot take the service's descriptors (issue: 1,100 silent connections
took all 1,024 and /healthz stopped answering). The real `portfolio-stream serve` runs under a
low RLIMIT_NOFILE: connections that never complete a request are closed after
HTTP_HEADER_TIMEOUT_S, and while hundreds are held open at once the service stays under its
limit, answers /healthz and stays ready."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.conftest import Service, http_status, service_env, wait_until

pytestmark = pytest.mark.slow

NOFILE = 256
MAX_TOTAL_CONNECTIONS = 100  # with the reserve of 128 it fits under 256
IDLE_CONNECTIONS = 400
HEADER_TIMEOUT_S = 1.5
# Lowers the soft limit only, so the descendants keep the hard one.
LIMIT_WRAPPER = [
    sys.executable,
    "-c",
    "import os, resource, sys\n"
    "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE}))\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n",
]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp_path = tmp_path_factory.mktemp("descriptors")
    env = service_env(
        tmp_path,
        MAX_TOTAL_CONNECTIONS=MAX_TOTAL_CONNECTIONS,
        MAX_CONNECTIONS_PER_USER=5,
        HTTP_HEADER_TIMEOUT_S=HEADER_TIMEOUT_S,
    )
    running = Service(env, tmp_path / "service.log", wrapper=LIMIT_WRAPPER)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle_connection(service: Service) -> socket.socket:
    host, port = service.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Whether the server ends the connection (EOF or reset) within ``within_s``."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_connection_that_never_sends_a_request_is_closed_after_the_header_timeout(
    service: Service,
) -> None:
    silent = idle_connection(service)
    partial = idle_connection(service)
    partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the headers never end
    started = time.monotonic()
    with silent, partial:
        assert closed_by_server(silent, HEADER_TIMEOUT_S + 2)
        assert closed_by_server(partial, HEADER_TIMEOUT_S + 2)
    assert time.monotonic() - started >= HEADER_TIMEOUT_S - 0.2


def test_healthz_answers_while_hundreds_of_idle_connections_are_held(service: Service) -> None:
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            with contextlib.suppress(OSError):
                idle.append(idle_connection(service))
        started = time.monotonic()
        assert http_status(f"{service.base_url}/healthz", timeout=5) == 200
        assert time.monotonic() - started < 2
        assert open_files(service.pid) < NOFILE
        # The broker's streams and the store kept their descriptors: readiness holds.
        wait_until(
            lambda: http_status(f"{service.base_url}/readyz", timeout=2) == 200, 5, "/readyz"
        )
    finally:
        for sock in idle:
            sock.close()
    log = service.log()
    assert "Too many open files" not in log
    assert "Traceback" not in log
    assert "Connection budget reached" in log


def test_the_wrapper_really_lowered_the_limit(service: Service) -> None:
    limits = Path(f"/proc/{service.pid}/limits").read_text()
    line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
    assert line.split()[3] == str(NOFILE)
