"""app/systemd.py against real sockets: sd_notify datagrams, the watchdog, LISTEN_FDS."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.systemd import (
    Notifier,
    inherited_sockets,
    listen_fds,
    notify_address,
    supervise,
    watchdog_interval,
)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET (a filesystem path)."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        yield sock, str(path)


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


def test_notify_sends_ready_status_and_mainpid_in_one_datagram(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    try:
        assert notifier.enabled
        assert notifier.ready("0 WebSocket connections (0 users)")
        got = fields(sock.recv(4096))
        assert got == {
            "READY": "1",
            "STATUS": "0 WebSocket connections (0 users)",
            "MAINPID": str(os.getpid()),
        }
        assert notifier.stopping("Draining")
        assert fields(sock.recv(4096)) == {"STOPPING": "1", "STATUS": "Draining"}
    finally:
        notifier.close()


def test_abstract_namespace_address_is_supported() -> None:
    name = f"portfolio-stream-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        try:
            assert notifier.status("hello")
            assert sock.recv(4096) == b"STATUS=hello"
        finally:
            notifier.close()


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert notify_address(None) is None
    assert notify_address("vsock:2:1234") is None
    notifier.close()


def test_a_vanished_manager_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    try:
        assert notifier.status("nobody listens") is False
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_half_the_period_and_only_for_the_named_pid(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(env, pid=4242) == expected


def test_listen_fds_follows_the_protocol_and_unsets_the_environment() -> None:
    foreign = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:other"}
    assert listen_fds(foreign, pid=4242) == []
    assert foreign == {}  # unset even when they were meant for another process
    assert listen_fds({}, pid=4242) == []
    malformed = {"LISTEN_PID": "4242", "LISTEN_FDS": "many"}
    assert listen_fds(malformed, pid=4242) == []
    assert malformed == {}


def test_inherited_socket_is_taken_from_descriptor_3_in_the_activated_process() -> None:
    """A real exec with a listening socket on fd 3, exactly as systemd hands it over."""
    probe = (
        "import json, os, socket\n"
        "from app.systemd import inherited_sockets\n"
        "socks = inherited_sockets()\n"
        "print(json.dumps({'fds': [s.fileno() for s in socks],\n"
        "  'addr': [list(s.getsockname()) for s in socks],\n"
        "  'inheritable': [os.get_inheritable(s.fileno()) for s in socks],\n"
        "  'env': [k for k in os.environ if k.startswith('LISTEN_')]}))\n"
    )
    wrapper = (
        "import os, sys\n"
        "fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='http')\n"
        "os.execv(sys.executable, [sys.executable, '-c', sys.argv[2]])\n"
    )
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        fd = listener.fileno()
        result = subprocess.run(
            [sys.executable, "-c", wrapper, str(fd), probe],
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        report = json.loads(result.stdout)
        assert report == {
            "fds": [3],
            "addr": [list(listener.getsockname())],
            "inheritable": [False],
            "env": [],
        }


def test_inherited_sockets_ignores_a_descriptor_that_is_not_listening() -> None:
    probe = (
        "import os, socket\n"
        "from app.systemd import inherited_sockets\n"
        "print(len(inherited_sockets()))\n"
    )
    wrapper = (
        "import os, sys\n"
        "fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, '-c', sys.argv[2]])\n"
    )
    with socket.socket() as unbound:
        fd = unbound.fileno()
        result = subprocess.run(
            [sys.executable, "-c", wrapper, str(fd), probe],
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert result.stdout.strip().splitlines()[-1] == "0"


async def test_supervise_pings_from_the_loop_and_sends_status_only_on_change(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    sock.settimeout(0.05)
    received: list[tuple[float, dict[str, str]]] = []
    done = threading.Event()

    def receive() -> None:  # systemd's side, on its own thread with its own clock
        while not done.is_set():
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            received.append((time.monotonic(), fields(data)))

    receiver = threading.Thread(target=receive, name="fake-systemd")
    receiver.start()
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    status = ["1 WebSocket connections (1 users)"]
    task = asyncio.create_task(supervise(notifier, lambda: status[0], watchdog_s=0.02))
    try:
        await asyncio.sleep(0.3)
        status[0] = "2 WebSocket connections (1 users)"
        await asyncio.sleep(0.2)
        blocked_at = time.monotonic()
        time.sleep(0.4)  # noqa: ASYNC251 - a callback blocking the loop: the pings must stop
        blocked_until = time.monotonic()
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()
        done.set()
        receiver.join()

    pings = [at for at, got in received if got.get("WATCHDOG") == "1"]
    statuses = [got["STATUS"] for _, got in received if "STATUS" in got]
    assert len(pings) >= 15
    assert statuses == ["1 WebSocket connections (1 users)", "2 WebSocket connections (1 users)"]
    assert not [at for at in pings if blocked_at + 0.05 < at < blocked_until - 0.05]
    assert [at for at in pings if at > blocked_until], "pings resume once the loop is free"


def test_inherited_sockets_default_environment_is_untouched_without_activation() -> None:
    env = dict(os.environ)
    assert inherited_sockets({k: v for k, v in env.items() if not k.startswith("LISTEN_")}) == []
