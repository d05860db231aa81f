"""Users and sessions in SQLite (DATABASE_URL=sqlite:///path), the default store.

All SQLite work runs on one worker thread (app/sqlite_worker.py), keeping the event loop free
and the connection single-threaded. The rules — hashing, sessions, revocations — are
``StoreCore``'s (app/store_core.py), shared with the PostgreSQL store (app/pg_store.py).
This module also re-exports what callers of the store need, so they import it from one place.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from argon2 import PasswordHasher

from app.migrations import SchemaUpgrade
from app.sqlite_worker import SQLITE_BUSY_TIMEOUT_MS, SqliteWorker
from app.store_core import StoreCore
from app.store_health import StoreHealth, StoreUnavailable
from app.store_queries import (
    MIGRATIONS,
    delete_session,
    delete_user,
    insert_session,
    insert_user,
    select_credentials,
    select_live,
    select_session,
    select_user,
    select_users,
    update_hash,
    update_password,
)
from app.user_store import UserColumn, UserStore
from app.users import (
    USERNAME_MAX,
    HashingBusy,
    InvalidUsername,
    Session,
    User,
    UserExists,
    hash_token,
    validate_username,
)


class SqliteDatabase:
    """``StoreDatabase`` over one SQLite file."""

    def __init__(self, path: Path, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> None:
        self._sql = SqliteWorker(path, MIGRATIONS, busy_timeout_ms)

    @property
    def is_open(self) -> bool:
        return self._sql.is_open

    @property
    def health(self) -> StoreHealth:
        return self._sql.health

    async def open(self) -> SchemaUpgrade:
        return await self._sql.open()

    async def close(self) -> None:
        await self._sql.close()

    async def probe(self) -> bool:
        return await self._sql.probe()

    async def insert_user(
        self, username: str, password_hash: str, is_admin: bool, now: float
    ) -> str:
        try:
            return await self._sql.write(insert_user, username, password_hash, is_admin, now)
        except sqlite3.IntegrityError as exc:
            raise UserExists(f"user {username!r} already exists") from exc

    async def user(self, column: UserColumn, value: str) -> User | None:
        return await self._sql.read(select_user, column, value)

    async def credentials(self, username: str) -> tuple[User, str] | None:
        return await self._sql.read(select_credentials, username)

    async def users(self) -> list[User]:
        return await self._sql.read(select_users)

    async def delete_user(self, username: str) -> str | None:
        return await self._sql.write(delete_user, username)

    async def update_password(self, username: str, password_hash: str) -> bool:
        return await self._sql.write(update_password, username, password_hash)

    async def update_hash(self, user_id: str, password_hash: str) -> None:
        await self._sql.write(update_hash, user_id, password_hash)

    async def insert_session(
        self, token_hash: str, user_id: str, now: float, expires_at: float
    ) -> None:
        await self._sql.write(insert_session, token_hash, user_id, now, expires_at)

    async def session(self, token_hash: str, now: float) -> Session | None:
        return await self._sql.read(select_session, token_hash, now)

    async def live(self, token_hashes: list[str], now: float) -> set[str]:
        return await self._sql.read(select_live, token_hashes, now)

    async def delete_session(self, token_hash: str) -> str | None:
        return await self._sql.write(delete_session, token_hash)


class Store(StoreCore):
    """The user store in a SQLite file."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        *,
        hash_concurrency: int = 2,
        busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
        session_check_interval_s: float = 30.0,
    ) -> None:
        super().__init__(
            SqliteDatabase(path, busy_timeout_ms),
            PasswordHasher(),
            clock,
            hash_concurrency=hash_concurrency,
            session_check_interval_s=session_check_interval_s,
        )


__all__ = [
    "USERNAME_MAX",
    "HashingBusy",
    "InvalidUsername",
    "Session",
    "Store",
    "StoreUnavailable",
    "User",
    "UserExists",
    "UserStore",
    "hash_token",
    "validate_username",
]
