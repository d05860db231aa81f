"""The user store as the application sees it, whichever database holds it.

``UserStore`` is what the routes, the WebSocket handler, the factory and the CLI use (the app
holds it under ``STORE_KEY``). ``StoreCore`` (app/store_core.py) implements it once — argon2
hashing on a bounded pool, hashed session ids, expiry, revocation signals — over a
``StoreDatabase``: the statements of one backend, SQLite (app/store.py) or PostgreSQL
(app/pg_store.py). Every database method raises ``StoreUnavailable`` when the database cannot
be used now (full disk, lock held, server down, no answer within the timeout).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Literal, Protocol

from app.migrations import SchemaUpgrade
from app.sessions import Revocations
from app.store_health import StoreHealth
from app.users import Session, User

UserColumn = Literal["id", "username"]


class UserStore(Protocol):
    """Users and sessions: what every node shares when the database is shared."""

    @property
    def revocations(self) -> Revocations:
        """Every end of a session while it may be in use: logout, user removed (here or on
        another node), expiry."""
        ...

    @property
    def is_open(self) -> bool: ...

    @property
    def health(self) -> StoreHealth: ...

    async def open(self) -> SchemaUpgrade:
        """Connect and apply pending schema migrations; StoreUnavailable names DATABASE_URL."""
        ...

    async def close(self) -> None: ...

    async def probe(self) -> bool:
        """Try a write now; True (and healthy again) if the database took it."""
        ...

    async def create_user(
        self, username: str, password: str, *, is_admin: bool = False
    ) -> User: ...

    async def ensure_user(
        self, username: str, password: str, *, is_admin: bool = False
    ) -> User: ...

    async def get_user(self, user_id: str) -> User | None: ...

    async def get_user_by_username(self, username: str) -> User | None: ...

    async def list_users(self) -> list[User]: ...

    async def remove_user(self, username: str) -> bool: ...

    async def set_password(self, username: str, password: str) -> bool: ...

    async def authenticate(self, username: str, password: str) -> User | None:
        """Raises HashingBusy at once when every hashing slot is taken."""
        ...

    async def create_session(self, user_id: str, ttl_s: float) -> str: ...

    async def session(self, token: str) -> Session | None: ...

    async def session_user(self, token: str) -> User | None: ...

    def watch_session(self, session: Session) -> Callable[[], None]:
        """Publish the end of ``session`` on ``revocations`` however it ends; returns the
        function that stops watching."""
        ...

    async def check_sessions(self) -> None: ...

    async def live_sessions(self, token_hashes: Collection[str]) -> set[str]: ...

    async def revoke_session(self, token: str) -> bool: ...


class StoreDatabase(Protocol):
    """One backend's statements; rows come back as the service's own types."""

    @property
    def is_open(self) -> bool: ...

    @property
    def health(self) -> StoreHealth: ...

    async def open(self) -> SchemaUpgrade: ...

    async def close(self) -> None: ...

    async def probe(self) -> bool: ...

    async def insert_user(
        self, username: str, password_hash: str, is_admin: bool, now: float
    ) -> str:
        """The new user's id; raises UserExists when the name is taken (in any case)."""
        ...

    async def user(self, column: UserColumn, value: str) -> User | None: ...

    async def credentials(self, username: str) -> tuple[User, str] | None:
        """The user and their password hash."""
        ...

    async def users(self) -> list[User]:
        """Every user, in creation order."""
        ...

    async def delete_user(self, username: str) -> str | None:
        """Delete the user and their sessions; their id, or None if there was none."""
        ...

    async def update_password(self, username: str, password_hash: str) -> bool: ...

    async def update_hash(self, user_id: str, password_hash: str) -> None: ...

    async def insert_session(
        self, token_hash: str, user_id: str, now: float, expires_at: float
    ) -> None:
        """Store a session (and drop the ones expired by ``now``)."""
        ...

    async def session(self, token_hash: str, now: float) -> Session | None: ...

    async def live(self, token_hashes: list[str], now: float) -> set[str]: ...

    async def delete_session(self, token_hash: str) -> str | None:
        """Delete the session; its user's id, or None if there was none."""
        ...
