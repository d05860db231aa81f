"""The PostgreSQL store's statements over a psycopg 3 connection pool.

Every call is bounded by DATABASE_TIMEOUT_S, the wait for a pooled connection included: it
runs as a task of its own that the caller stops waiting for at the deadline, so a dead or
partitioned server is a 503 ``store_unavailable`` at once, not a request held while psycopg
cancels the query (which itself may take seconds against a server that does not answer).
Logging a session out or removing a user notifies the other nodes in the same transaction
(app/pg_revocations.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors
from psycopg_pool import AsyncConnectionPool

from app.migrations import SchemaUpgrade
from app.pg_connect import connect, conninfo_for, display_url, migrate, pg_unavailability
from app.pg_queries import MIGRATIONS
from app.pg_revocations import CHANNEL, notice
from app.sessions import RevokedBecause, SessionRevoked
from app.store_health import StoreHealth, StoreUnavailable
from app.user_store import UserColumn
from app.users import Session, User, UserExists

T = TypeVar("T")
Connection = psycopg.AsyncConnection[Any]
Work = Callable[[Connection], Awaitable[T]]

# psycopg's own default: a statement is prepared on the server from its 5th use on.
PREPARE_THRESHOLD = 5
# Starting the pool may take a few connection set-ups: each within the timeout.
OPEN_ATTEMPTS = 3


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
        self.url = display_url(url)
        self.health = StoreHealth(self.url)
        self.origin = origin  # names this node in its notices, so it skips its own
        self._raw_url = url
        self._pool_size = pool_size
        self._timeout = timeout_s
        # None: never prepared, as PgBouncer in transaction mode needs (before 1.21).
        self._prepare_threshold = PREPARE_THRESHOLD if prepared_statements else None
        self._conninfo = ""
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._inflight: set[asyncio.Task[Any]] = set()

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    @property
    def timeout_s(self) -> float:
        return self._timeout

    async def open(self) -> SchemaUpgrade:
        """Upgrade the schema, then fill the pool; StoreUnavailable names DATABASE_URL."""
        self._conninfo = conninfo_for(self._raw_url, self._timeout)
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self._conninfo,
            min_size=self._pool_size,
            max_size=self._pool_size,
            open=False,
            timeout=self._timeout,
            kwargs={"autocommit": True, "prepare_threshold": self._prepare_threshold},
            name="store",
        )
        try:
            async with await self.connect() as conn:
                upgrade = await migrate(conn, MIGRATIONS)
            await pool.open(wait=True, timeout=self._timeout * OPEN_ATTEMPTS)
        except (psycopg.Error, OSError, TimeoutError) as error:
            await pool.close()
            reason = pg_unavailability(error)
            if reason is None:
                raise
            raise StoreUnavailable(f"DATABASE_URL={self.url}: {reason}") from None
        self._pool = pool
        return upgrade

    async def connect(self) -> Connection:
        """A connection outside the pool (schema upgrade, LISTEN), bounded by the timeout."""
        return await connect(self._conninfo, self._timeout)

    async def close(self) -> None:
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close(timeout=self._timeout)

    async def probe(self) -> bool:
        async def write(conn: Connection) -> None:
            await conn.execute(
                "INSERT INTO store_probe (id, at) VALUES (1, now()) "
                "ON CONFLICT (id) DO UPDATE SET at = excluded.at"
            )

        try:
            await self._call(write, write=True)
        except StoreUnavailable:
            return False
        return True

    # The bounded call

    async def _call(self, work: Work[T], *, write: bool) -> T:
        task = asyncio.create_task(self._on_connection(work, write))
        self._inflight.add(task)
        task.add_done_callback(self._settled)
        try:
            async with asyncio.timeout(self._timeout):
                result = await asyncio.shield(task)
        except TimeoutError:
            task.cancel()  # it finishes cancelling on its own; nobody waits for it
            reason = f"no answer from the server within {self._timeout:g} s"
        except (psycopg.Error, OSError) as error:
            found = pg_unavailability(error)
            if found is None:
                raise
            reason = found
        else:
            if write:
                self.health.recovered()
            return result
        self.health.failed(reason)
        raise StoreUnavailable(reason)

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here when its caller stopped waiting

    async def _on_connection(self, work: Work[T], write: bool) -> T:
        if self._pool is None:
            raise RuntimeError("store is not open")
        pool = self._pool
        for attempt in (1, 2):
            conn: Connection | None = None
            began = False  # whether a write's own statements may have reached the server
            try:
                async with pool.connection(timeout=self._timeout) as conn:
                    if not write:
                        return await work(conn)
                    async with conn.transaction():
                        began = True
                        return await work(conn)
            except psycopg.OperationalError:
                if conn is None or not conn.broken:
                    raise
                # The server closed it (it restarted, failed over): the pool's other
                # connections are likely dead too, so have them checked, and try once more
                # unless a write got past BEGIN (it may have committed).
                await pool.check()
                if began or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _one(self, query: str, params: tuple[Any, ...], *, write: bool = False) -> Any:
        async def fetch(conn: Connection) -> Any:
            cursor = await conn.execute(query, params)
            return await cursor.fetchone()

        return await self._call(fetch, write=write)

    # Statements

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

        return await self._call(insert, write=True)

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

        return await self._call(fetch, write=False)

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

        return await self._call(delete, write=True)

    async def update_password(self, username: str, password_hash: str) -> bool:
        async def update(conn: Connection) -> bool:
            cursor = await conn.execute(
                "UPDATE users SET password_hash = %s WHERE lower(username) = lower(%s)",
                (password_hash, username),
            )
            return cursor.rowcount > 0

        return await self._call(update, write=True)

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

        await self._call(insert, write=True)

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

        return await self._call(fetch, write=False)

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

        return await self._call(delete, write=True)

    async def _notify(self, conn: Connection, event: SessionRevoked) -> None:
        """Tell the other nodes; delivered when (and only if) the transaction commits."""
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notice(self.origin, event)))
