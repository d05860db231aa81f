"""Users and sessions as the rest of the service sees them, and the rules for their names."""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher

USERNAME_MAX = 64
SESSION_ID_BYTES = 32  # 256-bit session ids (SPEC §10)
# A cookie longer than any id we issue (43 characters) is refused before it is hashed.
SESSION_ID_MAX_CHARS = 256


class UserExists(ValueError):
    """A user with that name already exists."""


class InvalidUsername(ValueError):
    """Usernames are 1-64 characters of letters, digits, '.', '_', '-' or '@'."""


class HashingBusy(Exception):
    """Every password-hashing slot is taken: the login is refused rather than queued."""


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    is_admin: bool
    created_at: float

    def public(self) -> dict[str, Any]:
        return {"userId": self.id, "username": self.username, "isAdmin": self.is_admin}


@dataclass(frozen=True, slots=True)
class Session:
    """A live session: its user, the hash it is stored under, when it expires (store clock)."""

    user: User
    token_hash: str
    expires_at: float


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
def dummy_hash() -> str:
    """An argon2 hash of a random password, made once per process (each costs ~100 ms of CPU
    and 64 MiB)."""
    return PasswordHasher().hash(secrets.token_hex(16))
