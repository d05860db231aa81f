"""A psycopg 3 connection pool whose every call is bounded, and the store's health beside it.

Every call is bounded by DATABASE_TIMEOUT_S, the wait for a pooled connection included: it
runs as a task of its own that the caller stops waiting for at the deadline, so a dead or
partitioned server is a 503 ``store_unavailable`` at once, not a request held while psycopg
cancels the query (which itself may take seconds against a server that does not answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from app.migrations import SchemaUpgrade
from app.pg_connect import connect, conninfo_for, display_url, migrate, pg_unavailability
from app.pg_queries import MIGRATIONS
from app.store_health import StoreHealth, StoreUnavailable

T = TypeVar("T")
Connection = psycopg.AsyncConnection[Any]
Work = Callable[[Connection], Awaitable[T]]

# psycopg's own default: a statement is prepared on the server from its 5th use on.
PREPARE_THRESHOLD = 5
# Starting the pool may take a few connection set-ups: each within the timeout.
OPEN_ATTEMPTS = 3


class BoundedPool:
    """The connections to one PostgreSQL database; ``call`` runs work on one, bounded."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        timeout_s: float = 3.0,
        prepared_statements: bool = True,
    ) -> None:
        self.url = display_url(url)
        self.health = StoreHealth(self.url)
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
        except PoolTimeout:
            await pool.close()
            raise StoreUnavailable(
                f"DATABASE_URL={self.url}: could not open {self._pool_size} connections in "
                f"{self._timeout * OPEN_ATTEMPTS:g} s (the server's max_connections too low "
                "for every node's DATABASE_POOL_SIZE?)"
            ) from None
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
            await self.call(write, write=True)
        except StoreUnavailable:
            return False
        return True

    async def call(self, work: Work[T], *, write: bool) -> T:
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
