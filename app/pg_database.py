"""The PostgreSQL store's statements (``StoreDatabase``), each a bounded call on the pool.

Logging a session out or removing a user notifies the other nodes in the same transaction
(app/pg_revocations.py).
"""

from __future__ import annotations

from typing import Any

from psycopg import errors

from app.migrations import SchemaUpgrade
from app.pg_pool import BoundedPool, Connection
from app.pg_revocations import CHANNEL, notice
from app.sessions import RevokedBecause, SessionRevoked
from app.store_health import StoreHealth
from app.user_store import UserColumn
from app.users import Session, User, UserExists


class PostgresDatabase:
    """``StoreDatabase`` on a PostgreSQL server, shared by every node."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        timeout_s: float = 3.0,
        prepared_statements: bool = True,
        origin: str = "",
    ) -> None:
        self._pool = BoundedPool(
            url, pool_size=pool_size, timeout_s=timeout_s, prepared_statements=prepared_statements
        )
        self.origin = origin  # names this node in its notices, so it skips its own

    @property
    def is_open(self) -> bool:
        return self._pool.is_open

    @property
    def health(self) -> StoreHealth:
        return self._pool.health

    @property
    def timeout_s(self) -> float:
        return self._pool.timeout_s

    async def open(self) -> SchemaUpgrade:
        return await self._pool.open()

    async def close(self) -> None:
        await self._pool.close()

    async def probe(self) -> bool:
        return await self._pool.probe()

    async def connect(self) -> Connection:
        """A connection outside the pool (for LISTEN)."""
        return await self._pool.connect()

    async def _one(self, query: str, params: tuple[Any, ...], *, write: bool = False) -> Any:
        async def fetch(conn: Connection) -> Any:
            cursor = await conn.execute(query, params)
            return await cursor.fetchone()

        return await self._pool.call(fetch, write=write)

    async def insert_user(
        self, username: str, password_hash: str, is_admin: bool, now: float
    ) -> str:
        async def insert(conn: Connection) -> str:
            try:
                cursor = await conn.execute(
                    "WITH s AS (SELECT nextval(pg_get_serial_sequence('users', 'seq')) AS n) "
                    "INSERT INTO users (seq, id, username, password_hash, is_admin, created_at) "
                    "SELECT n, 'user-' || n, %s, %s, %s, %s FROM s RETURNING id",
                    (username, password_hash, is_admin, now),
                )
            except errors.UniqueViolation as exc:
                raise UserExists(f"user {username!r} already exists") from exc
            row = await cursor.fetchone()
            assert row is not None
            return str(row[0])

        return await self._pool.call(insert, write=True)

    async def user(self, column: UserColumn, value: str) -> User | None:
        where = "id = %s" if column == "id" else "lower(username) = lower(%s)"
        row = await self._one(
            f"SELECT id, username, is_admin, created_at FROM users WHERE {where}",  # noqa: S608 - one of two literals
            (value,),
        )
        return User(row[0], row[1], row[2], row[3]) if row else None

    async def credentials(self, username: str) -> tuple[User, str] | None:
        row = await self._one(
            "SELECT id, username, is_admin, created_at, password_hash FROM users "
            "WHERE lower(username) = lower(%s)",
            (username,),
        )
        return (User(row[0], row[1], row[2], row[3]), row[4]) if row else None

    async def users(self) -> list[User]:
        async def fetch(conn: Connection) -> list[User]:
            cursor = await conn.execute(
                "SELECT id, username, is_admin, created_at FROM users ORDER BY seq"
            )
            return [User(r[0], r[1], r[2], r[3]) for r in await cursor.fetchall()]

        return await self._pool.call(fetch, write=False)

    async def delete_user(self, username: str) -> str | None:
        async def delete(conn: Connection) -> str | None:
            cursor = await conn.execute(
                "DELETE FROM users WHERE lower(username) = lower(%s) RETURNING id", (username,)
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            await self._notify(conn, SessionRevoked(row[0], None, RevokedBecause.USER_REMOVED))
            return str(row[0])

        return await self._pool.call(delete, write=True)

    async def update_password(self, username: str, password_hash: str) -> bool:
        async def update(conn: Connection) -> bool:
            cursor = await conn.execute(
                "UPDATE users SET password_hash = %s WHERE lower(username) = lower(%s)",
                (password_hash, username),
            )
            return cursor.rowcount > 0

        return await self._pool.call(update, write=True)

    async def update_hash(self, user_id: str, password_hash: str) -> None:
        await self._one(
            "UPDATE users SET password_hash = %s WHERE id = %s RETURNING id",
            (password_hash, user_id),
            write=True,
        )

    async def insert_session(
        self, token_hash: str, user_id: str, now: float, expires_at: float
    ) -> None:
        async def insert(conn: Connection) -> None:
            await conn.execute("DELETE FROM sessions WHERE expires_at <= %s", (now,))
            await conn.execute(
                "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) "
                "VALUES (%s, %s, %s, %s)",
                (token_hash, user_id, now, expires_at),
            )

        await self._pool.call(insert, write=True)

    async def session(self, token_hash: str, now: float) -> Session | None:
        row = await self._one(
            "SELECT u.id, u.username, u.is_admin, u.created_at, s.expires_at FROM sessions s "
            "JOIN users u ON u.id = s.user_id WHERE s.token_hash = %s AND s.expires_at > %s",
            (token_hash, now),
        )
        return Session(User(row[0], row[1], row[2], row[3]), token_hash, row[4]) if row else None

    async def live(self, token_hashes: list[str], now: float) -> set[str]:
        async def fetch(conn: Connection) -> set[str]:
            cursor = await conn.execute(
                "SELECT token_hash FROM sessions WHERE token_hash = ANY(%s) AND expires_at > %s",
                (token_hashes, now),
            )
            return {row[0] for row in await cursor.fetchall()}

        return await self._pool.call(fetch, write=False)

    async def delete_session(self, token_hash: str) -> str | None:
        async def delete(conn: Connection) -> str | None:
            cursor = await conn.execute(
                "DELETE FROM sessions WHERE token_hash = %s RETURNING user_id", (token_hash,)
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            await self._notify(conn, SessionRevoked(row[0], token_hash, RevokedBecause.LOGOUT))
            return str(row[0])

        return await self._pool.call(delete, write=True)

    async def _notify(self, conn: Connection, event: SessionRevoked) -> None:
        """Tell the other nodes; delivered when (and only if) the transaction commits."""
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notice(self.origin, event)))
