"""Users and sessions over any ``StoreDatabase``: the rules, kept apart from the SQL.

Passwords are argon2id hashes; session ids are 256-bit random tokens of which only the SHA-256
is stored, so a leaked database does not leak live sessions. Password hashing runs on its own
bounded pool, so a flood of logins never delays the session lookup behind every API call and
upgrade. Ending a session (logout, removing its user) is published on ``revocations`` so open
sockets can be closed; ``SessionWatch`` adds expiry and ends it did not see happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app.migrations import SchemaUpgrade
from app.session_watch import SessionWatch
from app.sessions import Revocations, RevokedBecause, SessionRevoked
from app.store_health import StoreHealth
from app.user_store import StoreDatabase
from app.users import (
    SESSION_ID_BYTES,
    SESSION_ID_MAX_CHARS,
    HashingBusy,
    Session,
    User,
    UserExists,
    dummy_hash,
    hash_token,
    validate_username,
)

T = TypeVar("T")


class StoreCore:
    """``UserStore`` over one backend's database."""

    def __init__(
        self,
        database: StoreDatabase,
        hasher: PasswordHasher,
        clock: Callable[[], float] = time.time,
        *,
        hash_concurrency: int = 2,
        session_check_interval_s: float = 30.0,
    ) -> None:
        self._db = database
        self._clock = clock
        self._hasher = hasher
        # Each argon2 check costs ~100 ms of CPU and 64 MiB: at most this many at once.
        self._hash_executor = ThreadPoolExecutor(
            max_workers=hash_concurrency, thread_name_prefix="store-hash"
        )
        self._hash_slots = hash_concurrency
        self._hashing = 0
        self._revocations = Revocations()
        self._watch = SessionWatch(
            self.live_sessions, self._revocations, session_check_interval_s, clock
        )
        self._watch_task: asyncio.Task[None] | None = None

    @property
    def revocations(self) -> Revocations:
        return self._revocations

    @property
    def is_open(self) -> bool:
        return self._db.is_open

    @property
    def health(self) -> StoreHealth:
        return self._db.health

    async def probe(self) -> bool:
        return await self._db.probe()

    async def _hash(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._hash_executor, func, *args)

    async def open(self) -> SchemaUpgrade:
        """Raises StoreUnavailable (naming DATABASE_URL) when the database cannot be used."""
        upgrade = await self._db.open()
        self._watch_task = asyncio.create_task(self._watch.run(), name="session-watch")
        return upgrade

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        await self._db.close()
        self._hash_executor.shutdown(wait=True)

    # Users

    async def create_user(self, username: str, password: str, *, is_admin: bool = False) -> User:
        name = validate_username(username)
        if not password:
            raise ValueError("password must not be empty")
        password_hash = await self._hash(self._hasher.hash, password)
        now = self._clock()
        user_id = await self._db.insert_user(name, password_hash, is_admin, now)
        return User(user_id, name, is_admin, now)

    async def ensure_user(self, username: str, password: str, *, is_admin: bool = False) -> User:
        """Create the user unless it exists (demo users); returns the stored user."""
        existing = await self.get_user_by_username(username)
        if existing is not None:
            return existing
        try:
            return await self.create_user(username, password, is_admin=is_admin)
        except UserExists:  # created meanwhile, by another node or process
            found = await self.get_user_by_username(username)
            assert found is not None
            return found

    async def get_user(self, user_id: str) -> User | None:
        return await self._db.user("id", user_id)

    async def get_user_by_username(self, username: str) -> User | None:
        return await self._db.user("username", username.strip())

    async def list_users(self) -> list[User]:
        return await self._db.users()

    async def remove_user(self, username: str) -> bool:
        """Delete the user and their sessions; published as a revocation of all of them."""
        user_id = await self._db.delete_user(username.strip())
        if user_id is None:
            return False
        self._revocations.publish(SessionRevoked(user_id, None, RevokedBecause.USER_REMOVED))
        return True

    async def set_password(self, username: str, password: str) -> bool:
        password_hash = await self._hash(self._hasher.hash, password)
        return await self._db.update_password(username.strip(), password_hash)

    async def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password matches; None otherwise (constant-ish time either way).

        Raises HashingBusy at once when every hashing slot is taken.
        """
        if self._hashing >= self._hash_slots:
            raise HashingBusy
        self._hashing += 1
        try:
            found = await self._db.credentials(username.strip())
            # Verifying against a dummy hash for unknown users keeps login timing uniform;
            # made on the first login, whoever it is for, so the CLI never pays for it.
            stored = found[1] if found else await self._hash(dummy_hash)
            if not await self._hash(self._verify, stored, password) or found is None:
                return None
            user = found[0]
            if self._hasher.check_needs_rehash(stored):
                rehashed = await self._hash(self._hasher.hash, password)
                await self._db.update_hash(user.id, rehashed)
        finally:
            self._hashing -= 1
        return user

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
        await self._db.insert_session(hash_token(token), user_id, now, now + ttl_s)
        return token

    async def session(self, token: str) -> Session | None:
        """The live session behind a session id, with its expiry."""
        if not token or len(token) > SESSION_ID_MAX_CHARS:
            return None
        return await self._db.session(hash_token(token), self._clock())

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
        return await self._db.live(hashes, self._clock()) if hashes else set()

    async def revoke_session(self, token: str) -> bool:
        """Log a session out; published as its revocation."""
        token_hash = hash_token(token)
        user_id = await self._db.delete_session(token_hash)
        if user_id is None:
            return False
        self._revocations.publish(SessionRevoked(user_id, token_hash, RevokedBecause.LOGOUT))
        return True
