"""A versioned schema: numbered migrations recorded in ``schema_version``, applied once and whole,
at start-up and by ``portfolio-stream db upgrade``, however many nodes start at once."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from app.migrations import Migration
from app.pg_connect import migrate
from app.pg_queries import MIGRATIONS as PG_MIGRATIONS
from app.sqlite_worker import SqliteWorker
from app.store import Store
from app.store_queries import MIGRATIONS as SQLITE_MIGRATIONS
from config.settings import Settings
from tests.postgres import TestDatabase, unreachable_reason

CLI = str(Path(sys.executable).with_name("portfolio-stream"))
BROKEN = Migration(2, "a migration that fails half-way", ("CREATE TABLE t2 (x INT)", "BOGUS"))


@pytest.fixture
def fresh_postgres() -> Iterator[TestDatabase]:
    """An empty database of its own: these tests start from no schema at all."""
    reason = unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    database = TestDatabase(prefix="portfolio_stream_test_schema").create()
    yield database
    database.drop()


@pytest.fixture
async def pg_connection(
    fresh_postgres: TestDatabase,
) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    async with await psycopg.AsyncConnection.connect(fresh_postgres.url, autocommit=True) as conn:
        yield conn


async def db_upgrade(database_url: str, cwd: Path) -> tuple[int, str, str]:
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env["DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        CLI,
        "db",
        "upgrade",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode().strip(), err.decode().strip()


async def test_nodes_starting_together_apply_each_migration_once(
    fresh_postgres: TestDatabase, tmp_path: Path
) -> None:
    results = await asyncio.gather(*(db_upgrade(fresh_postgres.url, tmp_path) for _ in range(4)))
    assert all(code == 0 for code, _, _ in results), results
    outputs = sorted(out for _, out, _ in results)
    assert outputs == [
        "database schema is up to date (version 1)",
        "database schema is up to date (version 1)",
        "database schema is up to date (version 1)",
        "database schema upgraded to version 1 (applied 1)",
    ]
    assert fresh_postgres.query("SELECT version FROM schema_version") == [(1,)]
    assert fresh_postgres.query("SELECT count(*) FROM users") == [(0,)]


async def test_a_failing_postgresql_migration_leaves_nothing_and_is_retried(
    pg_connection: psycopg.AsyncConnection[tuple[object, ...]], fresh_postgres: TestDatabase
) -> None:
    with pytest.raises(psycopg.errors.SyntaxError):
        await migrate(pg_connection, (*PG_MIGRATIONS, BROKEN))
    # Version 1 applied and kept, version 2 not at all: not even its first statement.
    assert fresh_postgres.query("SELECT version FROM schema_version") == [(1,)]
    assert fresh_postgres.query("SELECT to_regclass('t2')") == [(None,)]
    # The lock was released, so the next start (here fixed) gets on with it.
    fixed = Migration(2, "fixed", ("CREATE TABLE t2 (x INT)",))
    upgrade = await migrate(pg_connection, (*PG_MIGRATIONS, fixed))
    assert upgrade.applied == (2,) and upgrade.version == 2
    again = await migrate(pg_connection, (*PG_MIGRATIONS, fixed))
    assert again.applied == () and again.version == 2


async def test_a_failing_sqlite_migration_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    worker = SqliteWorker(path, (*SQLITE_MIGRATIONS, BROKEN))
    with pytest.raises(sqlite3.OperationalError):
        await worker.open()
    await worker.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 't2'").fetchall() == []


async def test_a_sqlite_file_from_before_versioning_is_adopted_with_its_users(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the schema as releases before versioning made it
        for statement in SQLITE_MIGRATIONS[0].statements:
            db.execute(statement)
        db.execute(
            "INSERT INTO users (id, username, password_hash, is_admin, created_at) "
            "VALUES ('user-1', 'alice', 'x', 0, 1.0)"
        )
    store = Store(path)
    upgrade = await store.open()
    try:
        assert upgrade.applied == (1,) and upgrade.version == 1
        assert [u.username for u in await store.list_users()] == ["alice"]
    finally:
        await store.close()
    store = Store(path)
    assert (await store.open()).applied == ()
    await store.close()


async def test_db_upgrade_on_sqlite_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    assert await db_upgrade(url, tmp_path) == (
        0,
        "database schema upgraded to version 1 (applied 1)",
        "",
    )
    assert await db_upgrade(url, tmp_path) == (0, "database schema is up to date (version 1)", "")


async def test_db_upgrade_names_database_url_when_it_cannot_connect(tmp_path: Path) -> None:
    code, out, err = await db_upgrade("postgresql://app:s3cret@127.0.0.1:1/portfolio", tmp_path)
    assert code == 1 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("error: DATABASE_URL=postgresql://app:***@127.0.0.1:1/portfolio: ")
    assert "s3cret" not in err and "refused" in line.lower()
