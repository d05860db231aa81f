"""Users and sessions in SQLite (DATABASE_URL=sqlite:///path).

Passwords are argon2id hashes; session ids are 256-bit random tokens of which only the SHA-256
is stored, so a leaked database does not leak live sessions. All SQLite work runs on one worker
thread, keeping the event loop free and the connection single-threaded.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    is_admin INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user_id);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions(expires_at);
"""

USERNAME_MAX = 64
SESSION_ID_BYTES = 32  # 256-bit session ids (SPEC §10)
# A cookie longer than any id we issue (43 characters) is refused before it is hashed.
SESSION_ID_MAX_CHARS = 256
# The CLI writes to the same file while the service runs: wait for its lock rather than fail.
SQLITE_BUSY_TIMEOUT_MS = 5000


class UserExists(ValueError):
    """A user with that name already exists."""


class InvalidUsername(ValueError):
    """Usernames are 1-64 characters of letters, digits, '.', '_', '-' or '@'."""


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    is_admin: bool
    created_at: float

    def public(self) -> dict[str, Any]:
        return {"userId": self.id, "username": self.username, "isAdmin": self.is_admin}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def validate_username(username: str) -> str:
    name = username.strip()
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
    if not name or len(name) > USERNAME_MAX or not set(name) <= allowed:
        raise InvalidUsername(
            "username must be 1-64 characters of letters, digits, '.', '_', '-' or '@'"
        )
    return name


@functools.cache
def _dummy_hash() -> str:
    """An argon2 hash of a random password, made once per process (each costs ~100 ms of CPU
    and 64 MiB)."""
    return PasswordHasher().hash(secrets.token_hex(16))


class Store:
    """Async facade over a SQLite file holding users and sessions."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._hasher = PasswordHasher()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._db: sqlite3.Connection | None = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, func, *args)

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        if str(self._path) != ":memory:":
            self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self._path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        db.executescript(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    # Users

    async def create_user(self, username: str, password: str, *, is_admin: bool = False) -> User:
        name = validate_username(username)
        if not password:
            raise ValueError("password must not be empty")
        password_hash = await self._run(self._hasher.hash, password)
        return await self._run(self._insert_user, name, password_hash, is_admin)

    def _insert_user(self, username: str, password_hash: str, is_admin: bool) -> User:
        now = self._clock()
        try:
            with _transaction(self.db) as db:
                cursor = db.execute(
                    "INSERT INTO users (id, username, password_hash, is_admin, created_at) "
                    "VALUES ('pending', ?, ?, ?, ?)",
                    (username, password_hash, int(is_admin), now),
                )
                user_id = f"user-{cursor.lastrowid}"
                db.execute("UPDATE users SET id = ? WHERE seq = ?", (user_id, cursor.lastrowid))
        except sqlite3.IntegrityError as exc:
            raise UserExists(f"user {username!r} already exists") from exc
        return User(user_id, username, is_admin, now)

    async def ensure_user(self, username: str, password: str, *, is_admin: bool = False) -> User:
        """Create the user unless it exists (demo users); returns the stored user."""
        existing = await self.get_user_by_username(username)
        if existing is not None:
            return existing
        try:
            return await self.create_user(username, password, is_admin=is_admin)
        except UserExists:
            found = await self.get_user_by_username(username)
            assert found is not None
            return found

    async def get_user(self, user_id: str) -> User | None:
        return await self._run(self._select_user, "id", user_id)

    async def get_user_by_username(self, username: str) -> User | None:
        return await self._run(self._select_user, "username", username.strip())

    def _select_user(self, column: str, value: str) -> User | None:
        row = self.db.execute(
            f"SELECT id, username, is_admin, created_at FROM users WHERE {column} = ?",  # noqa: S608 - column is one of two literals
            (value,),
        ).fetchone()
        return User(row[0], row[1], bool(row[2]), row[3]) if row else None

    async def list_users(self) -> list[User]:
        rows = await self._run(
            lambda: self.db.execute(
                "SELECT id, username, is_admin, created_at FROM users ORDER BY seq"
            ).fetchall()
        )
        return [User(r[0], r[1], bool(r[2]), r[3]) for r in rows]

    async def remove_user(self, username: str) -> bool:
        def remove() -> bool:
            with _transaction(self.db) as db:
                cursor = db.execute("DELETE FROM users WHERE username = ?", (username.strip(),))
                return cursor.rowcount > 0

        return await self._run(remove)

    async def set_password(self, username: str, password: str) -> bool:
        password_hash = await self._run(self._hasher.hash, password)

        def update() -> bool:
            with _transaction(self.db) as db:
                cursor = db.execute(
                    "UPDATE users SET password_hash = ? WHERE username = ?",
                    (password_hash, username.strip()),
                )
                return cursor.rowcount > 0

        return await self._run(update)

    async def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password matches; None otherwise (constant-ish time either way)."""
        return await self._run(self._authenticate_sync, username.strip(), password)

    def _authenticate_sync(self, username: str, password: str) -> User | None:
        # Verifying against a dummy hash for unknown users keeps login timing uniform; made on
        # the first login, whoever it is for, so the CLI never pays for it.
        dummy = _dummy_hash()
        row = self.db.execute(
            "SELECT id, username, is_admin, created_at, password_hash FROM users "
            "WHERE username = ?",
            (username,),
        ).fetchone()
        stored = row[4] if row else dummy
        try:
            self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if self._hasher.check_needs_rehash(stored):
            self.db.execute(
                "UPDATE users SET password_hash = ? WHERE id = ?",
                (self._hasher.hash(password), row[0]),
            )
        return User(row[0], row[1], bool(row[2]), row[3])

    # Sessions

    async def create_session(self, user_id: str, ttl_s: float) -> str:
        """A new session id (returned once, stored only hashed)."""
        token = secrets.token_urlsafe(SESSION_ID_BYTES)
        now = self._clock()

        def insert() -> None:
            with _transaction(self.db) as db:
                db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
                db.execute(
                    "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) "
                    "VALUES (?, ?, ?, ?)",
                    (hash_token(token), user_id, now, now + ttl_s),
                )

        await self._run(insert)
        return token

    async def session_user(self, token: str) -> User | None:
        if not token or len(token) > SESSION_ID_MAX_CHARS:
            return None
        now = self._clock()

        def lookup() -> User | None:
            row = self.db.execute(
                "SELECT u.id, u.username, u.is_admin, u.created_at FROM sessions s "
                "JOIN users u ON u.id = s.user_id WHERE s.token_hash = ? AND s.expires_at > ?",
                (hash_token(token), now),
            ).fetchone()
            return User(row[0], row[1], bool(row[2]), row[3]) if row else None

        return await self._run(lookup)

    async def revoke_session(self, token: str) -> bool:
        def delete() -> bool:
            with _transaction(self.db) as db:
                cursor = db.execute(
                    "DELETE FROM sessions WHERE token_hash = ?", (hash_token(token),)
                )
                return cursor.rowcount > 0

        return await self._run(delete)


class _transaction:
    """BEGIN IMMEDIATE … COMMIT/ROLLBACK around a block (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
