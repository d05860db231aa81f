"""Resource exhaustion against a real server: descriptors, a full disk, a read-only or locked
database.

Descriptors: idle TCP connections that never send a request must not take the descriptors the
service keeps in reserve for /healthz, the broker and the store. Disk: a full or read-only
filesystem and a locked database are reported in one clear line or a 503, never a traceback.
The disk scenarios mount a small tmpfs (root only; skipped elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import PASSWORD, Server, http_status, live_service, server_env
from tests.ops.conftest import free_port

pytestmark = pytest.mark.slow

NOFILE = 256
MAX_TOTAL_CONNECTIONS = 100
IDLE_CONNECTIONS = 400


def test_healthz_answers_while_idle_connections_exhaust_descriptors(tmp_path: Path) -> None:
    with live_service(
        tmp_path,
        ["nina"],
        nofile=NOFILE,
        MAX_TOTAL_CONNECTIONS=MAX_TOTAL_CONNECTIONS,
        MAX_CONNECTIONS_PER_USER=5,
    ) as live:
        server = live.server
        idle: list[socket.socket] = []
        try:
            for _ in range(IDLE_CONNECTIONS):
                sock = socket.socket()
                sock.settimeout(2)
                with contextlib.suppress(OSError):
                    sock.connect((server.host, server.port))
                idle.append(sock)
            started = time.monotonic()
            status = http_status(f"{server.base_url}/healthz", timeout=5)
            took = time.monotonic() - started
            assert (status, took < 2) == (200, True), f"/healthz {status} after {took:.1f}s"
            assert server.open_files() < NOFILE
        finally:
            for sock in idle:
                sock.close()
        assert "Too many open files" not in server.log()
        server.assert_no_traceback()


@contextlib.contextmanager
def small_disk(size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size``; skips the test where mounting is not allowed."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = Path(f"/tmp/portfolio-stream-disk-{uuid.uuid4().hex[:8]}")  # noqa: S108
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        mountpoint.rmdir()


def fill(directory: Path) -> None:
    """Write until the filesystem has no space left."""
    with (directory / "filler").open("wb") as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()


def login(base: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - loopback http
        f"{base}/api/auth/login",
        data=b'{"username": "nina", "password": "' + PASSWORD.encode() + b'"}',
        headers={"Content-Type": "application/json", "Origin": base},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def test_a_full_disk_answers_logins_503_and_readyz_says_so(tmp_path: Path) -> None:
    with small_disk("4m") as disk:
        env_overrides = {"DATABASE_URL": f"sqlite:///{disk}/portfolio-stream.db"}
        with live_service(tmp_path, ["nina"], **env_overrides) as live:
            base = live.server.base_url
            assert login(base)[0] == 200
            fill(disk)
            status, body = login(base)
            assert status == 503, (status, body)
            assert http_status(f"{base}/readyz") == 503
            live.server.assert_no_traceback()


def start_failure(tmp_path: Path, database: Path) -> tuple[int, str]:
    """Start the service on ``database``; its exit code and output (it must not start)."""
    env = server_env(tmp_path, DATABASE_URL=f"sqlite:///{database}", PORT=free_port())
    server = Server(env, tmp_path / "start.log")
    try:
        code = server.proc.wait(timeout=30)
    finally:
        server.kill()
    return code, server.log()


def test_a_read_only_database_at_start_is_one_line_naming_database_url(tmp_path: Path) -> None:
    with small_disk("4m") as disk:
        database = disk / "portfolio-stream.db"
        sqlite3.connect(database).close()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        code, output = start_failure(tmp_path, database)
    assert code != 0
    assert "Traceback" not in output and "DATABASE_URL" in output, output[-3000:]


def test_a_locked_database_at_start_is_one_line_naming_database_url(tmp_path: Path) -> None:
    database = tmp_path / "locked.db"
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("CREATE TABLE held (x)")
        code, output = start_failure(tmp_path, database)
    finally:
        holder.close()
    assert code != 0
    assert "Traceback" not in output and "DATABASE_URL" in output, output[-3000:]
