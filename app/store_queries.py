"""The store's schema and SQL statements, each run on the store's worker thread."""

from __future__ import annotations

import sqlite3
from typing import Any

from app.users import User

SCHEMA = """
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
-- One row rewritten to find out whether the disk takes writes again (readiness).
CREATE TABLE IF NOT EXISTS store_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""


def insert_user(
    db: sqlite3.Connection, username: str, password_hash: str, is_admin: bool, now: float
) -> str:
    cursor = db.execute(
        "INSERT INTO users (id, username, password_hash, is_admin, created_at) "
        "VALUES ('pending', ?, ?, ?, ?)",
        (username, password_hash, int(is_admin), now),
    )
    user_id = f"user-{cursor.lastrowid}"
    db.execute("UPDATE users SET id = ? WHERE seq = ?", (user_id, cursor.lastrowid))
    return user_id


def select_user(db: sqlite3.Connection, column: str, value: str) -> User | None:
    row = db.execute(
        f"SELECT id, username, is_admin, created_at FROM users WHERE {column} = ?",  # noqa: S608 - column is one of two literals
        (value,),
    ).fetchone()
    return User(row[0], row[1], bool(row[2]), row[3]) if row else None


def select_credentials(db: sqlite3.Connection, username: str) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = db.execute(
        "SELECT id, username, is_admin, created_at, password_hash FROM users WHERE username = ?",
        (username,),
    ).fetchone()
    return row


def select_session(db: sqlite3.Connection, token_hash: str, now: float) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = db.execute(
        "SELECT u.id, u.username, u.is_admin, u.created_at, s.expires_at FROM sessions s "
        "JOIN users u ON u.id = s.user_id WHERE s.token_hash = ? AND s.expires_at > ?",
        (token_hash, now),
    ).fetchone()
    return row


def update_hash(db: sqlite3.Connection, user_id: str, password_hash: str) -> None:
    db.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))


def select_live(db: sqlite3.Connection, hashes: list[str], now: float) -> set[str]:
    live: set[str] = set()
    for start in range(0, len(hashes), 500):
        chunk = hashes[start : start + 500]
        marks = ",".join("?" * len(chunk))
        live.update(
            row[0]
            for row in db.execute(
                f"SELECT token_hash FROM sessions WHERE token_hash IN ({marks}) "  # noqa: S608 - placeholders only
                "AND expires_at > ?",
                (*chunk, now),
            )
        )
    return live
