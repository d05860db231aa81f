"""Users and sessions in PostgreSQL (DATABASE_URL=postgresql://...), shared by every node.

The same rules as the SQLite store (``StoreCore``). Every request looks its session up in the
shared database, so a session made on one node works on all and a logout anywhere is refused
everywhere at once; sockets already open on other nodes hear of it over LISTEN/NOTIFY
(app/pg_revocations.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable

from argon2 import PasswordHasher

from app.migrations import SchemaUpgrade
from app.pg_database import PostgresDatabase
from app.pg_revocations import RevocationFeed
from app.store_core import StoreCore


class PostgresStore(StoreCore):
    """The user store on a PostgreSQL server."""

    def __init__(
        self,
        url: str,
        clock: Callable[[], float] = time.time,
        *,
        hash_concurrency: int = 2,
        session_check_interval_s: float = 30.0,
        pool_size: int = 5,
        timeout_s: float = 3.0,
        prepared_statements: bool = True,
    ) -> None:
        self._database = PostgresDatabase(
            url,
            pool_size=pool_size,
            timeout_s=timeout_s,
            prepared_statements=prepared_statements,
            origin=secrets.token_hex(8),
        )
        super().__init__(
            self._database,
            PasswordHasher(),
            clock,
            hash_concurrency=hash_concurrency,
            session_check_interval_s=session_check_interval_s,
        )
        self._feed = RevocationFeed(
            self._database.connect,
            self._database.origin,
            self.revocations,
            self.check_sessions,
            ping_interval_s=session_check_interval_s,
            timeout_s=timeout_s,
        )
        self._feed_task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        """Whether revocations made on other nodes reach this one now."""
        return self._feed.listening.is_set()

    async def open(self) -> SchemaUpgrade:
        upgrade = await super().open()
        self._feed_task = asyncio.create_task(self._feed.run(), name="store-revocation-feed")
        # Listening before serving, so no logout elsewhere falls between start and LISTEN;
        # if it cannot start now, it keeps trying and the periodic re-check covers the gap.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._feed.listening.wait(), self._database.timeout_s)
        return upgrade

    async def close(self) -> None:
        if self._feed_task is not None:
            self._feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed_task
            self._feed_task = None
        await super().close()
