"""The `portfolio-stream` console script (SPEC §1, issue 2 item 7), run as a real subprocess:
users add/list/passwd/remove with the password on stdin, and sessions that work as cookies."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.settings import Settings
from tests.app.support import Client, Session, connect, cookie
from tests.conftest import ClientFactory

CLI = str(Path(sys.executable).with_name("portfolio-stream"))


@dataclass
class Result:
    code: int
    out: str
    err: str


Cli = Callable[..., Awaitable[Result]]


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "cli" / "users.db"


@pytest.fixture
def cli(database: Path, tmp_path: Path) -> Cli:
    """Run ``portfolio-stream ARGS`` on the test database with ``stdin`` piped in."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env["DATABASE_URL"] = f"sqlite:///{database}"

    async def run(*args: str, stdin: str = "") -> Result:
        process = await asyncio.create_subprocess_exec(
            CLI,
            *args,
            cwd=tmp_path,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 30)
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())

    return run


async def served(app_client: ClientFactory, database: Path) -> Client:
    """The real app on the database the CLI wrote."""
    return await app_client(database_url=f"sqlite:///{database}")


async def login_status(client: Client, username: str, password: str) -> int:
    response = await client.post(
        "/api/auth/login", json={"username": username, "password": password}
    )
    client.session.cookie_jar.clear()
    return response.status


async def test_users_add_and_list_with_passwords_from_stdin(cli: Cli, database: Path) -> None:
    added = await cli("users", "add", "alice", stdin="alice-password\n")
    assert added.code == 0, added.err
    assert added.out.strip() == "created user alice (user-1)"
    admin = await cli(
        "users", "add", "root", "--admin", "--password-stdin", stdin="root-password\n"
    )
    assert admin.code == 0 and admin.out.strip() == "created admin root (user-2)"
    duplicate = await cli("users", "add", "ALICE", stdin="pw\n")
    assert duplicate.code == 1 and "already exists" in duplicate.err
    bad_name = await cli("users", "add", "al ice", stdin="pw\n")
    assert bad_name.code == 1 and "username" in bad_name.err
    empty = await cli("users", "add", "bob", stdin="\n")
    assert empty.code != 0 and "password" in empty.err
    listed = await cli("users", "list")
    assert listed.code == 0
    assert listed.out.splitlines() == ["user-1\talice\tuser", "user-2\troot\tadmin"]
    with sqlite3.connect(database) as db:
        hashes = [row[0] for row in db.execute("SELECT password_hash FROM users")]
    assert len(hashes) == 2 and all(h.startswith("$argon2id$") for h in hashes)
    assert not any("password" in h for h in hashes)


async def test_sessions_create_prints_a_working_session_cookie(
    cli: Cli, app_client: ClientFactory, database: Path
) -> None:
    assert (await cli("users", "add", "root", "--admin", stdin="pw\n")).code == 0
    created = await cli("sessions", "create", "root")
    assert created.code == 0 and len(created.out.splitlines()) == 1
    token = created.out.strip()
    missing = await cli("sessions", "create", "nobody")
    assert missing.code == 1 and "no user" in missing.err
    client = await served(app_client, database)
    me = await client.get("/api/auth/me", headers=cookie(token))
    assert (await me.json())["user"]["username"] == "root"
    # The runbook's curl: -H "Cookie: session=ADMIN_SESSION_ID"
    stats = await client.get("/api/admin/websocket-stats", headers=cookie(token))
    assert stats.status == 200 and (await stats.json())["status"] == "offline"
    ws, connected = await connect(client, Session(token, "user-1"))
    assert connected["userId"] == "user-1"
    await ws.close()


async def test_passwd_and_remove(cli: Cli, app_client: ClientFactory, database: Path) -> None:
    assert (await cli("users", "add", "alice", stdin="old-password\n")).code == 0
    token = (await cli("sessions", "create", "alice")).out.strip()
    changed = await cli("users", "passwd", "alice", stdin="new-password\n")
    assert changed.code == 0 and "password changed" in changed.out
    assert (await cli("users", "passwd", "nobody", stdin="x\n")).code == 1
    client = await served(app_client, database)
    assert await login_status(client, "alice", "old-password") == 401
    assert await login_status(client, "alice", "new-password") == 200
    assert (await client.get("/api/auth/me", headers=cookie(token))).status == 200

    removed = await cli("users", "remove", "alice")
    assert removed.code == 0 and removed.out.strip() == "removed alice"
    assert (await cli("users", "remove", "alice")).code == 1
    assert (await cli("users", "list")).out == ""
    assert (await client.get("/api/auth/me", headers=cookie(token))).status == 401
