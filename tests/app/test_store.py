"""Users and sessions (SPEC §10): argon2 hashes, hashed 256-bit session ids, expiry — in SQLite
and in PostgreSQL alike."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from app.store import InvalidUsername, UserExists
from app.user_store import UserStore
from tests.app.support import WallClock
from tests.postgres import BACKENDS

STORE_BACKENDS = BACKENDS
Rows = Callable[[str], list[tuple[Any, ...]]]


async def test_passwords_are_stored_as_argon2id_hashes(store: UserStore, stored_rows: Rows) -> None:
    await store.create_user("alice", "correct horse battery")
    [(stored,)] = stored_rows("SELECT password_hash FROM users")
    assert isinstance(stored, str) and stored.startswith("$argon2id$")
    assert "correct horse battery" not in stored


async def test_authenticate_accepts_only_the_right_password(store: UserStore) -> None:
    created = await store.create_user("alice", "pw-1", is_admin=True)
    user = await store.authenticate("alice", "pw-1")
    assert user == created and user.is_admin and user.id.startswith("user-")
    assert await store.authenticate("alice", "pw-2") is None
    assert await store.authenticate("nobody", "pw-1") is None
    assert await store.authenticate("ALICE", "pw-1") == created  # usernames are case-blind


async def test_session_ids_are_256_bit_and_stored_only_as_sha256(
    store: UserStore, stored_rows: Rows
) -> None:
    user = await store.create_user("alice", "pw")
    token = await store.create_session(user.id, 3600)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert len(raw) == 32
    assert token != await store.create_session(user.id, 3600)
    stored = [r[0] for r in stored_rows("SELECT token_hash FROM sessions")]
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    assert token not in stored
    assert await store.session_user(token) == user


async def test_sessions_expire(store: UserStore, clock: WallClock) -> None:
    user = await store.create_user("alice", "pw")
    token = await store.create_session(user.id, 60)
    clock.now += 59
    assert await store.session_user(token) == user
    clock.now += 1
    assert await store.session_user(token) is None


async def test_revoked_sessions_stop_working(store: UserStore) -> None:
    user = await store.create_user("alice", "pw")
    token = await store.create_session(user.id, 3600)
    other = await store.create_session(user.id, 3600)
    assert await store.revoke_session(token) is True
    assert await store.session_user(token) is None
    assert await store.session_user(other) == user
    assert await store.revoke_session(token) is False


async def test_unknown_or_absurd_tokens_find_nobody(store: UserStore) -> None:
    assert await store.session_user("") is None
    assert await store.session_user("nope") is None
    assert await store.session_user("x" * 10_000) is None


async def test_removing_a_user_removes_their_sessions(store: UserStore) -> None:
    user = await store.create_user("alice", "pw")
    token = await store.create_session(user.id, 3600)
    assert await store.remove_user("alice") is True
    assert await store.session_user(token) is None
    assert await store.remove_user("alice") is False


async def test_usernames_are_unique_and_validated(store: UserStore) -> None:
    await store.create_user("alice", "pw")
    with pytest.raises(UserExists):
        await store.create_user("Alice", "pw")
    for bad in ("", "a b", "x" * 65, "robert'); DROP TABLE users;--"):
        with pytest.raises(InvalidUsername):
            await store.create_user(bad, "pw")
    with pytest.raises(ValueError, match="password"):
        await store.create_user("bob", "")
    assert [u.username for u in await store.list_users()] == ["alice"]


async def test_set_password_replaces_the_old_one(store: UserStore) -> None:
    await store.create_user("alice", "old")
    assert await store.set_password("alice", "new") is True
    assert await store.authenticate("alice", "old") is None
    assert await store.authenticate("alice", "new") is not None
    assert await store.set_password("nobody", "x") is False


async def test_ensure_user_is_idempotent(store: UserStore) -> None:
    first = await store.ensure_user("demo", "pw")
    again = await store.ensure_user("demo", "other")
    assert first == again
    assert await store.authenticate("demo", "pw") is not None
