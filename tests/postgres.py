"""A real PostgreSQL for the tests: the local server (127.0.0.1:5432, user postgres, trust auth).

Each test session creates a database of its own (``portfolio_stream_test_<random>``) and drops
it at the end; each test that uses it starts from a known state (``TestDatabase.reset``). Tests
that need PostgreSQL skip, saying why, only when no server answers; ``.ci/run`` starts it.
Set TEST_POSTGRES_URL to use another server (its admin database).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from app.user_store import UserStore

# A test module setting STORE_BACKENDS = BACKENDS runs its store tests on both (tests/app).
BACKENDS = ("sqlite", "postgresql")
StoreFactory = Callable[..., Awaitable[UserStore]]

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
START_HINT = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)


def unreachable_reason(admin_url: str = ADMIN_URL) -> str | None:
    """Why no test database can be made there, or None when the server answers."""
    try:
        with psycopg.connect(admin_url, connect_timeout=3):
            return None
    except psycopg.OperationalError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        return f"no PostgreSQL server reachable at {admin_url} ({first}); {START_HINT}"


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (as a URL, as DATABASE_URL must be)."""
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


class TestDatabase:
    """A database created for this test session on the test server."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, admin_url: str = ADMIN_URL, prefix: str = "portfolio_stream_test") -> None:
        self.admin_url = admin_url
        self.name = f"{prefix}_{secrets.token_hex(4)}"
        self.url = with_database(admin_url, self.name)

    def create(self) -> TestDatabase:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        return self

    def drop(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )

    def query(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(make_conninfo(self.url), autocommit=True) as conn:
            cursor = conn.execute(query, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def reset(self, users: Sequence[tuple[Any, ...]] = ()) -> None:
        """No sessions, and exactly these users: rows of (seq, id, username, password_hash,
        is_admin, created_at). The schema must exist (a store opened on it once)."""
        with psycopg.connect(make_conninfo(self.url), autocommit=True) as conn, conn.transaction():
            conn.execute("TRUNCATE users, sessions, store_probe RESTART IDENTITY CASCADE")
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO users (seq, id, username, password_hash, is_admin, created_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    [
                        (seq, uid, name, pw, bool(admin), at)
                        for seq, uid, name, pw, admin, at in users
                    ],
                )
            conn.execute(
                "SELECT setval(pg_get_serial_sequence('users', 'seq'), "
                "coalesce((SELECT max(seq) FROM users), 0) + 1, false)"
            )
