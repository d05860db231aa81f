"""A store that cannot be written: read-only, locked or full (real filesystems where possible).

At start that is one line naming DATABASE_URL and a non-zero exit; while serving it is 503
``store_unavailable`` and ``/readyz`` saying so, until the disk has room again.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.support import PASSWORD
from tests.conftest import ClientFactory
from tests.ops.conftest import CLI, service_env, workdir


def mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real, small filesystem of its own (a 2 MiB tmpfs): it can be filled or made read-only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root")
    where = tmp_path / "fs"
    mount_tmpfs(where, "2m")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "serve"],
        env=env,
        cwd=workdir(env) if workdir(env).is_dir() else None,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )


def assert_one_line_naming_database_url(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert "DATABASE_URL" in line
    return line


def test_a_read_only_database_stops_the_start_with_one_line(small_fs: Path, tmp_path: Path) -> None:
    database = small_fs / "portfolio-stream.db"
    sqlite3.connect(database).close()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    env = service_env(tmp_path, DATABASE_URL=f"sqlite:///{database}")
    line = assert_one_line_naming_database_url(serve(env))
    assert str(database) in line and "read-only" in line


def test_a_database_directory_on_a_read_only_filesystem_is_one_line(
    small_fs: Path, tmp_path: Path
) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    database = small_fs / "missing" / "portfolio-stream.db"
    env = service_env(tmp_path, DATABASE_URL=f"sqlite:///{database}")
    line = assert_one_line_naming_database_url(serve(env))
    assert str(database) in line


def test_a_database_locked_by_another_process_stops_the_start_with_one_line(
    tmp_path: Path,
) -> None:
    database = tmp_path / "portfolio-stream.db"
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("CREATE TABLE other (x)")
        holder.execute("BEGIN EXCLUSIVE")  # e.g. a backup or an operator's open transaction
        env = service_env(tmp_path, SQLITE_BUSY_TIMEOUT_MS="200")
        line = assert_one_line_naming_database_url(serve(env))
        assert "locked" in line
    finally:
        holder.close()


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no room left; returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            try:
                os.write(fd, b"\0" * 65536)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                return filler
    finally:
        os.close(fd)


@pytest.fixture
def database_on_small_fs(small_fs: Path, users_template: Path) -> Path:
    database = small_fs / "portfolio-stream.db"
    shutil.copyfile(users_template, database)
    return database


async def login(client: Any, username: str = "alice") -> Any:
    return await client.post("/api/auth/login", json={"username": username, "password": PASSWORD})


async def test_a_full_disk_is_503_store_unavailable_and_readyz_says_so(
    app_client: ClientFactory, small_fs: Path, database_on_small_fs: Path
) -> None:
    database = database_on_small_fs
    client = await app_client(database_url=f"sqlite:///{database}")
    assert (await login(client)).status == 200
    assert (await client.get("/readyz")).status == 200

    filler = fill(small_fs)
    for _ in range(3):
        refused = await login(client)
        assert refused.status == 503
        body = await refused.json()
        assert body["error"] == "store_unavailable", body
    ready = await client.get("/readyz")
    assert ready.status == 503
    readiness = await ready.json()
    assert readiness["checks"]["store"] is False
    assert readiness["store"]["state"] == "unavailable"
    assert "full" in readiness["store"]["error"]

    filler.unlink()  # the operator makes room: the service recovers by itself
    recovered = await client.get("/readyz")
    assert recovered.status == 200, await recovered.json()
    assert (await recovered.json())["store"] == {"state": "ok"}
    assert (await login(client)).status == 200


async def test_a_lock_held_by_another_process_is_503_until_it_is_released(
    app_client: ClientFactory, tmp_path: Path, log_lines: io.StringIO
) -> None:
    client = await app_client(sqlite_busy_timeout_ms=100)
    holder = sqlite3.connect(tmp_path / "portfolio-stream.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # holds the write lock, as a stuck writer would
        for _ in range(3):
            refused = await login(client)
            assert refused.status == 503
            assert (await refused.json())["error"] == "store_unavailable"
            assert refused.headers["Retry-After"]
        assert (await client.get("/readyz")).status == 503
        holder.execute("ROLLBACK")
        assert (await login(client)).status == 200
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["store"] == {"state": "ok"}
    finally:
        holder.close()
    text = log_lines.getvalue()
    assert "Traceback" not in text
    # Logged once when it happened and once when it ended, not once per refused request.
    assert text.count("ERROR [Store] Database unavailable: ") == 1, text
    assert text.count("INFO [Store] Database available again: ") == 1, text
