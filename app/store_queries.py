"""The SQLite store's schema (numbered migrations) and statements, each run on the store's
worker thread (app/sqlite_worker.py)."""

from __future__ import annotations

import sqlite3

from app.migrations import Migration
from app.users import Session, User

# Version 1 is the schema from before versioning, kept with IF NOT EXISTS so that a database
# made then is adopted as version 1 as it stands.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "users, sessions and the readiness probe",
        (
            """CREATE TABLE IF NOT EXISTS users (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                username TEXT NOT NULL UNIQUE COLLATE NOCASE,
                password_hash TEXT NOT NULL,
                is_admin INTEGER NOT NULL DEFAULT 0,
                created_at REAL NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS sessions (
                token_hash TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                created_at REAL NOT NULL,
                expires_at REAL NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user_id)",
            "CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions(expires_at)",
            # One row rewritten to find out whether the disk takes writes again (readiness).
            "CREATE TABLE IF NOT EXISTS store_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL)",
        ),
    ),
)


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


def select_users(db: sqlite3.Connection) -> list[User]:
    rows = db.execute("SELECT id, username, is_admin, created_at FROM users ORDER BY seq")
    return [User(r[0], r[1], bool(r[2]), r[3]) for r in rows]


def select_credentials(db: sqlite3.Connection, username: str) -> tuple[User, str] | None:
    row = db.execute(
        "SELECT id, username, is_admin, created_at, password_hash FROM users WHERE username = ?",
        (username,),
    ).fetchone()
    return (User(row[0], row[1], bool(row[2]), row[3]), row[4]) if row else None


def delete_user(db: sqlite3.Connection, username: str) -> str | None:
    row = db.execute("DELETE FROM users WHERE username = ? RETURNING id", (username,)).fetchone()
    return row[0] if row else None


def update_password(db: sqlite3.Connection, username: str, password_hash: str) -> bool:
    cursor = db.execute(
        "UPDATE users SET password_hash = ? WHERE username = ?", (password_hash, username)
    )
    return cursor.rowcount > 0


def insert_session(
    db: sqlite3.Connection, token_hash: str, user_id: str, now: float, expires_at: float
) -> None:
    db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
    db.execute(
        "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        (token_hash, user_id, now, expires_at),
    )


def select_session(db: sqlite3.Connection, token_hash: str, now: float) -> Session | None:
    row = db.execute(
        "SELECT u.id, u.username, u.is_admin, u.created_at, s.expires_at FROM sessions s "
        "JOIN users u ON u.id = s.user_id WHERE s.token_hash = ? AND s.expires_at > ?",
        (token_hash, now),
    ).fetchone()
    return Session(User(row[0], row[1], bool(row[2]), row[3]), token_hash, row[4]) if row else None


def delete_session(db: sqlite3.Connection, token_hash: str) -> str | None:
    row = db.execute(
        "DELETE FROM sessions WHERE token_hash = ? RETURNING user_id", (token_hash,)
    ).fetchone()
    return row[0] if row else None


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
