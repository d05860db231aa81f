"""Real users and real session cookies in the server's SQLite file, made through the Store API.

The server authenticates every upgrade by looking the cookie up in this file, exactly as in
production. Passwords are never checked during a bench (sessions are), so the users are hashed
with minimal argon2 parameters: with the production parameters, 5,000 users would take minutes
to create on 2 cores and measure nothing the bench is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import argon2

import app.store
from app.store import Store

SESSION_TTL_S = 24 * 3600.0
ADMIN = "bench-admin"


@dataclass(frozen=True)
class BenchUsers:
    path: Path
    sessions: list[tuple[str, str]]  # (userId, session id), one per user
    admin_token: str

    def user_ids(self) -> list[str]:
        return [user_id for user_id, _ in self.sessions]

    def connections(self, count: int, users: int) -> list[tuple[str, str]]:
        """``count`` connections over the first ``users`` users, round-robin."""
        chosen = self.sessions[:users]
        return [chosen[i % len(chosen)] for i in range(count)]


def _cheap_hasher() -> argon2.PasswordHasher:
    return argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def create_users(path: Path, count: int) -> BenchUsers:
    """A fresh database with ``count`` users (bench-user-N) and an admin, one session each."""
    _remove_database(path)
    original = app.store.PasswordHasher
    app.store.PasswordHasher = _cheap_hasher  # type: ignore[assignment, misc]
    try:
        store = Store(path)
    finally:
        app.store.PasswordHasher = original  # type: ignore[misc]
    await store.open()
    try:
        admin = await store.create_user(ADMIN, "bench-admin-password", is_admin=True)
        admin_token = await store.create_session(admin.id, SESSION_TTL_S)
        sessions = []
        for i in range(count):
            user = await store.create_user(f"bench-user-{i + 1}", "bench-password")
            sessions.append((user.id, await store.create_session(user.id, SESSION_TTL_S)))
    finally:
        await store.close()
    return BenchUsers(path, sessions, admin_token)
