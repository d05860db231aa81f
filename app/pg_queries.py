"""The PostgreSQL store's schema (numbered migrations) and the statements it runs."""

from __future__ import annotations

from app.migrations import Migration

# Usernames are unique and matched case-blind, as SQLite's COLLATE NOCASE does (they are ASCII
# by validation, so lower() and NOCASE agree). Times are the store clock's epoch seconds, like
# SQLite's, so a session's expiry is decided by the same clock on every backend.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "users, sessions and the readiness probe",
        (
            """CREATE TABLE users (
                seq BIGSERIAL PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                username TEXT NOT NULL,
                password_hash TEXT NOT NULL,
                is_admin BOOLEAN NOT NULL DEFAULT FALSE,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE UNIQUE INDEX users_username ON users (lower(username))",
            """CREATE TABLE sessions (
                token_hash TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX sessions_user ON sessions (user_id)",
            "CREATE INDEX sessions_expiry ON sessions (expires_at)",
            # One row rewritten to find out whether the server takes writes again (readiness).
            "CREATE TABLE store_probe (id INTEGER PRIMARY KEY, at TIMESTAMPTZ NOT NULL)",
        ),
    ),
)
