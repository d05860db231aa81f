"""Reaching PostgreSQL: the URL, what its errors mean to an operator, and the schema upgrade.

An error the environment causes — server down or unreachable, authentication refused, no
such database, too many connections, a read-only standby, no answer in time — is a reason
an operator can act on (``pg_unavailability``); anything else is a bug and propagates.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.migrations import Migration, SchemaUpgrade, latest, pending
from app.store_health import StoreUnavailable

# Every node opening the store takes this lock (any 64-bit key unique to this schema) before it
# looks at schema_version, so nodes starting together apply each migration once, one by one.
SCHEMA_LOCK = 0x5046_5354_5245_414D  # "PFSTREAM"
# Another node's migration is waited for this long (ms of work for today's schema): longer
# means it is stuck, and start-up stops with that reason instead of hanging.
SCHEMA_LOCK_TIMEOUT_S = 60.0
# user:password@ in a URL (the password may hold anything but '@' and '/').
_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@/\s]*@")
_PASSWORD_PARAM = re.compile(r"([?&]password=)[^&\s\"]*")


def display_url(url: str) -> str:
    """The URL as logs and errors show it: the password replaced by ***."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1:***@", url))


def conninfo_for(url: str, timeout_s: float) -> str:
    """libpq's connection string for ``url``, bounded by ``timeout_s`` unless the URL sets its
    own connect_timeout; StoreUnavailable when libpq cannot read the URL."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise StoreUnavailable(
            f"DATABASE_URL={display_url(url)}: not a usable PostgreSQL URL ({one_line(error)})"
        ) from None
    extra: dict[str, Any] = {}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = max(2, math.ceil(timeout_s))  # libpq's minimum is 2 s
    return make_conninfo(url, **extra)


def one_line(error: BaseException) -> str:
    """libpq's messages run over several lines (a hint after a tab): the first one says it
    (without any password a URL in it carries)."""
    lines = [" ".join(line.split()) for line in str(error).splitlines() if line.strip()]
    return display_url(lines[0]) if lines else type(error).__name__


def pg_unavailability(error: BaseException) -> str | None:
    """Why the server cannot be used now, if ``error`` says so; None when it is a bug."""
    if isinstance(error, errors.ReadOnlySqlTransaction):
        return f"the server is read-only (a standby?): {one_line(error)}"
    if isinstance(error, psycopg.OperationalError | OSError):
        # Connection refused or lost, authentication failed, no such database, too many
        # connections, disk full on the server, a pool with no free connection in time.
        return one_line(error)
    if isinstance(error, TimeoutError):
        return "no answer from the server in time"
    return None


async def migrate(
    conn: psycopg.AsyncConnection[Any], migrations: Sequence[Migration]
) -> SchemaUpgrade:
    """Apply the pending migrations, each in its own transaction with its schema_version row,
    each under the schema lock (transaction-scoped, so it also holds behind PgBouncer in
    transaction mode, and is released however the transaction ends)."""
    async with conn.transaction():
        await _lock(conn)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
            "description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = await _versions(conn)
    applied: list[int] = []
    for migration in pending(migrations, done):
        async with conn.transaction():
            await _lock(conn)
            if migration.version in await _versions(conn):
                continue  # another node applied it meanwhile
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                (migration.version, migration.description),
            )
        applied.append(migration.version)
    version = max(await _versions(conn), default=0)
    return SchemaUpgrade(tuple(applied), version, latest(migrations))


async def _lock(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute(f"SET LOCAL lock_timeout = {int(SCHEMA_LOCK_TIMEOUT_S * 1000)}")
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))


async def _versions(conn: psycopg.AsyncConnection[Any]) -> set[int]:
    cursor = await conn.execute("SELECT version FROM schema_version")
    return {row[0] for row in await cursor.fetchall()}


async def connect(conninfo: str, timeout_s: float) -> psycopg.AsyncConnection[Any]:
    """A connection of its own (schema upgrade, LISTEN), never one from the pool."""
    async with asyncio.timeout(timeout_s):
        return await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, prepare_threshold=None
        )
