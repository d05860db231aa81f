"""`portfolio-stream serve` speaks sd_notify to a real datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from tests.ops.conftest import Service, cli, http_status, service_env

pytestmark = pytest.mark.slow


def _fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


def _next(sock: socket.socket, key: str, timeout: float) -> tuple[float, dict[str, str]]:
    """The next datagram carrying ``key`` (others are skipped), with its arrival time."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {key}= within {timeout}s")
        sock.settimeout(remaining)
        got = _fields(sock.recv(4096))
        if key in got:
            return time.monotonic(), got


def test_ready_watchdog_status_and_stopping(tmp_path: Path, services: list[Service]) -> None:
    name = f"portfolio-stream-notify-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        env = service_env(tmp_path, NOTIFY_SOCKET="@" + name, WATCHDOG_USEC=200_000)
        cli(env, "users", "add", "alice", "--password-stdin", stdin="alice-password\n")
        token = cli(env, "sessions", "create", "alice")
        service = Service(env, tmp_path / "server.log")
        services.append(service)

        _, ready = _next(manager, "READY", timeout=30)
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(service.pid)
        assert ready["STATUS"].startswith("0 WebSocket connections (0 users)")
        assert "broker streams" in ready["STATUS"]
        # READY=1 means serving: the listener, the store and the streams are already up.
        assert http_status(f"{service.base_url}/readyz") == 200
        assert "[STARTUP] Portfolio stream initialized on /ws/portfolio" in service.log()

        # The watchdog period is 0.2 s: pings every 0.1 s, from the event loop.
        pings = [_next(manager, "WATCHDOG", timeout=2)[0] for _ in range(5)]
        assert pings[-1] - pings[0] < 1.5

        # STATUS follows the connection count.
        async def connect_and_watch() -> str:
            async with (
                aiohttp.ClientSession(cookies={"session": token}) as http,
                http.ws_connect(f"{service.base_url}/ws/portfolio") as ws,
            ):
                await ws.receive_json()  # connected
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    _, got = await asyncio.to_thread(_next, manager, "STATUS", 5)
                    if got["STATUS"].startswith("1 WebSocket connections (1 users)"):
                        return got["STATUS"]
                raise AssertionError("STATUS never showed the connection")

        status = asyncio.run(connect_and_watch())
        assert status.startswith("1 WebSocket connections (1 users)")

        service.signal(signal.SIGTERM)
        _, stopping = _next(manager, "STOPPING", timeout=5)
        assert stopping["STOPPING"] == "1"
        assert stopping["STATUS"].startswith("Draining")
        assert service.stop() == 0


def test_no_watchdog_pings_when_the_watchdog_belongs_to_another_process(
    tmp_path: Path, services: list[Service]
) -> None:
    name = f"portfolio-stream-notify-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        env = service_env(tmp_path, NOTIFY_SOCKET="@" + name, WATCHDOG_USEC=100_000, WATCHDOG_PID=1)
        service = Service(env, tmp_path / "server.log")
        services.append(service)
        _next(manager, "READY", timeout=30)
        with pytest.raises((AssertionError, TimeoutError)):
            _next(manager, "WATCHDOG", timeout=0.5)
        service.signal(signal.SIGTERM)
        _next(manager, "STOPPING", timeout=5)
        assert service.stop() == 0
