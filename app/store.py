"""Users and sessions in SQLite (DATABASE_URL=sqlite:///path).

Passwords are argon2id hashes; session ids are 256-bit random tokens of which only the SHA-256
is stored, so a leaked database does not leak live sessions. All SQLite work runs on one worker
thread (app/sqlite_worker.py), keeping the event loop free and the connection single-threaded;
password hashing runs on a separate, bounded pool, so a flood of logins never delays the session
lookup behind every API call and upgrade. Ending a session (logout, removing its user) is
published on ``revocations`` so open sockets can be closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app.session_watch import SessionWatch
from app.sessions import Revocations, RevokedBecause, SessionRevoked
from app.sqlite_worker import SQLITE_BUSY_TIMEOUT_MS, SqliteWorker
from app.store_health import StoreHealth, StoreUnavailable
from app.store_queries import (
    SCHEMA,
    insert_user,
    select_credentials,
    select_live,
    select_session,
    select_user,
    update_hash,
)
from app.users import (
    SESSION_ID_BYTES,
    SESSION_ID_MAX_CHARS,
    USERNAME_MAX,
    HashingBusy,
    InvalidUsername,
    Session,
    User,
    UserExists,
    dummy_hash,
    hash_token,
    validate_username,
)

T = TypeVar("T")


class Store:
    """Async facade over a SQLite file holding users and sessions."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        *,
        hash_concurrency: int = 2,
        busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
        session_check_interval_s: float = 30.0,
    ) -> None:
        self._sql = SqliteWorker(path, SCHEMA, busy_timeout_ms)
        self._clock = clock
        self._hasher = PasswordHasher()
        # Each argon2 check costs ~100 ms of CPU and 64 MiB: at most this many at once.
        self._hash_executor = ThreadPoolExecutor(
            max_workers=hash_concurrency, thread_name_prefix="store-hash"
        )
        self._hash_slots = hash_concurrency
        self._hashing = 0
        self.revocations = Revocations()
        self._watch = SessionWatch(
            self.live_sessions, self.revocations, session_check_interval_s, clock
        )
        self._watch_task: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        return self._sql.is_open

    @property
    def health(self) -> StoreHealth:
        return self._sql.health

    async def probe(self) -> bool:
        """Try a write now; True (and healthy again) if the database took it."""
        return await self._sql.probe()

    async def _hash(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._hash_executor, func, *args)

    async def open(self) -> None:
        """Raises StoreUnavailable (naming DATABASE_URL) when the file cannot be used."""
        await self._sql.open()
        self._watch_task = asyncio.create_task(self._watch.run(), name="session-watch")

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        await self._sql.close()
        self._hash_executor.shutdown(wait=True)

    # Users

    async def create_user(self, username: str, password: str, *, is_admin: bool = False) -> User:
        name = validate_username(username)
        if not password:
            raise ValueError("password must not be empty")
        password_hash = await self._hash(self._hasher.hash, password)
        now = self._clock()
        try:
            user_id = await self._sql.write(insert_user, name, password_hash, is_admin, now)
        except sqlite3.IntegrityError as exc:
            raise UserExists(f"user {name!r} already exists") from exc
        return User(user_id, name, is_admin, now)

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
        return await self._sql.read(select_user, "id", user_id)

    async def get_user_by_username(self, username: str) -> User | None:
        return await self._sql.read(select_user, "username", username.strip())

    async def list_users(self) -> list[User]:
        rows = await self._sql.read(
            lambda db: db.execute(
                "SELECT id, username, is_admin, created_at FROM users ORDER BY seq"
            ).fetchall()
        )
        return [User(r[0], r[1], bool(r[2]), r[3]) for r in rows]

    async def remove_user(self, username: str) -> bool:
        """Delete the user and their sessions; published as a revocation of all of them."""

        def remove(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "DELETE FROM users WHERE username = ? RETURNING id", (username.strip(),)
            ).fetchone()
            return row[0] if row else None

        user_id = await self._sql.write(remove)
        if user_id is None:
            return False
        self.revocations.publish(SessionRevoked(user_id, None, RevokedBecause.USER_REMOVED))
        return True

    async def set_password(self, username: str, password: str) -> bool:
        password_hash = await self._hash(self._hasher.hash, password)

        def update(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE users SET password_hash = ? WHERE username = ?",
                (password_hash, username.strip()),
            )
            return cursor.rowcount > 0

        return await self._sql.write(update)

    async def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password matches; None otherwise (constant-ish time either way).

        Raises HashingBusy at once when every hashing slot is taken.
        """
        if self._hashing >= self._hash_slots:
            raise HashingBusy
        self._hashing += 1
        try:
            row = await self._sql.read(select_credentials, username.strip())
            # Verifying against a dummy hash for unknown users keeps login timing uniform;
            # made on the first login, whoever it is for, so the CLI never pays for it.
            stored = row[4] if row else await self._hash(dummy_hash)
            if not await self._hash(self._verify, stored, password) or row is None:
                return None
            if self._hasher.check_needs_rehash(stored):
                rehashed = await self._hash(self._hasher.hash, password)
                await self._sql.write(update_hash, row[0], rehashed)
        finally:
            self._hashing -= 1
        return User(row[0], row[1], bool(row[2]), row[3])

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    # Sessions

    async def create_session(self, user_id: str, ttl_s: float) -> str:
        """A new session id (returned once, stored only hashed)."""
        token = secrets.token_urlsafe(SESSION_ID_BYTES)
        now = self._clock()

        def insert(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            db.execute(
                "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (hash_token(token), user_id, now, now + ttl_s),
            )

        await self._sql.write(insert)
        return token

    async def session(self, token: str) -> Session | None:
        """The live session behind a session id, with its expiry."""
        if not token or len(token) > SESSION_ID_MAX_CHARS:
            return None
        token_hash = hash_token(token)
        row = await self._sql.read(select_session, token_hash, self._clock())
        if row is None:
            return None
        return Session(User(row[0], row[1], bool(row[2]), row[3]), token_hash, row[4])

    def watch_session(self, session: Session) -> Callable[[], None]:
        """Have the end of ``session`` published on ``revocations`` even when nothing here
        ends it (expiry, removal by another process); returns the function that stops it."""
        return self._watch.watch(session.token_hash, session.user.id, session.expires_at)

    async def check_sessions(self) -> None:
        """Re-check every watched session now (otherwise done every SESSION_CHECK_INTERVAL_S
        and at each one's expiry)."""
        await self._watch.check()

    async def session_user(self, token: str) -> User | None:
        session = await self.session(token)
        return session.user if session else None

    async def live_sessions(self, token_hashes: Collection[str]) -> set[str]:
        """Which of these session hashes still authenticate (exist and have not expired)."""
        hashes = list(token_hashes)
        return await self._sql.read(select_live, hashes, self._clock()) if hashes else set()

    async def revoke_session(self, token: str) -> bool:
        """Log a session out; published as its revocation."""
        token_hash = hash_token(token)

        def delete(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "DELETE FROM sessions WHERE token_hash = ? RETURNING user_id", (token_hash,)
            ).fetchone()
            return row[0] if row else None

        user_id = await self._sql.write(delete)
        if user_id is None:
            return False
        self.revocations.publish(SessionRevoked(user_id, token_hash, RevokedBecause.LOGOUT))
        return True


__all__ = [
    "USERNAME_MAX",
    "HashingBusy",
    "InvalidUsername",
    "Session",
    "Store",
    "StoreUnavailable",
    "User",
    "UserExists",
    "hash_token",
    "validate_username",
]
