"""One SQLite connection owned by one worker thread, with the store's health kept beside it.

Every statement runs on that thread (the event loop never waits on the disk, the connection
is never shared between threads). A failure the environment causes — read-only, locked, full
— becomes ``StoreUnavailable`` and marks the store unavailable until a write succeeds again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from app.migrations import Migration, SchemaUpgrade, check_numbering, latest, pending
from app.store_health import StoreHealth, StoreUnavailable, unavailability

T = TypeVar("T")

# The CLI writes to the same file while the service runs: wait for its lock rather than fail
# (the service takes SQLITE_BUSY_TIMEOUT_MS from its settings).
SQLITE_BUSY_TIMEOUT_MS = 5000

Statement = Callable[..., T]  # called as func(connection, *args) on the worker thread


class SqliteWorker:
    """Async facade over one SQLite connection (autocommit; ``write`` wraps a transaction)."""

    def __init__(
        self,
        path: Path,
        migrations: Sequence[Migration],
        busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    ) -> None:
        check_numbering(migrations)
        self._path = path
        self._migrations = migrations
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._db: sqlite3.Connection | None = None
        self.url = f"sqlite:///{path}"
        self.health = StoreHealth(self.url)

    @property
    def is_open(self) -> bool:
        return self._db is not None

    async def open(self) -> SchemaUpgrade:
        """Open (creating it if needed) and apply pending migrations; StoreUnavailable names
        DATABASE_URL and the reason."""
        loop = asyncio.get_running_loop()
        try:
            self._db, upgrade = await loop.run_in_executor(self._executor, self._open_sync)
            return upgrade
        except (sqlite3.Error, OSError) as error:
            reason = unavailability(error)
            if reason is None:
                raise
            raise StoreUnavailable(f"DATABASE_URL={self.url}: {reason}") from None

    def _open_sync(self) -> tuple[sqlite3.Connection, SchemaUpgrade]:
        if str(self._path) != ":memory:":
            self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self._path), check_same_thread=False, isolation_level=None)
        try:
            # First, so that a lock held elsewhere is waited for, not failed on at once.
            db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            upgrade = self._migrate(db)
        except BaseException:
            db.close()
            raise
        return db, upgrade

    def _migrate(self, db: sqlite3.Connection) -> SchemaUpgrade:
        """Apply each pending migration in its own write transaction, which also serialises
        processes opening the file at once: each re-reads what is applied under the lock."""
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
            "description TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        applied: list[int] = []
        for migration in pending(self._migrations, _versions(db)):
            db.execute("BEGIN IMMEDIATE")
            try:
                if migration.version not in _versions(db):  # not applied by another process
                    for statement in migration.statements:
                        db.execute(statement)
                    db.execute(
                        "INSERT INTO schema_version (version, description, applied_at) "
                        "VALUES (?, ?, ?)",
                        (migration.version, migration.description, time.time()),
                    )
                    applied.append(migration.version)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return SchemaUpgrade(
            tuple(applied), max(_versions(db), default=0), latest(self._migrations)
        )

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)

    async def read(self, func: Statement[T], *args: Any) -> T:
        return await self._call(func, args, write=False)

    async def write(self, func: Statement[T], *args: Any) -> T:
        """``func`` inside BEGIN IMMEDIATE … COMMIT (ROLLBACK if it raises)."""
        result = await self._call(func, args, write=True)
        self.health.recovered()
        return result

    async def probe(self) -> bool:
        """Try a real write (what a full or read-only disk refuses); True if the store took it."""
        try:
            await self.write(
                lambda db: db.execute(
                    "INSERT OR REPLACE INTO store_probe (id, at) VALUES (1, julianday('now'))"
                )
            )
        except StoreUnavailable:
            return False
        return True

    async def _call(self, func: Statement[T], args: tuple[Any, ...], *, write: bool) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._run_sync, func, args, write)
        except (sqlite3.Error, OSError) as error:
            reason = unavailability(error)
            if reason is None:
                raise
            self.health.failed(reason)
            raise StoreUnavailable(reason) from error

    def _run_sync(self, func: Statement[T], args: tuple[Any, ...], write: bool) -> T:
        if self._db is None:
            raise RuntimeError("store is not open")
        db = self._db
        if not write:
            return func(db, *args)
        db.execute("BEGIN IMMEDIATE")
        try:
            result = func(db, *args)
            db.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back (a full disk does): only end what is open.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result


def _versions(db: sqlite3.Connection) -> set[int]:
    return {row[0] for row in db.execute("SELECT version FROM schema_version")}
