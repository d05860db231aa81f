"""Whether the user store can be written: read-only, locked, full and failing disks.

Those are faults of the environment, not bugs: they are reported as ``StoreUnavailable`` with
a reason an operator can act on (one line at start, 503 ``store_unavailable`` while serving,
``/readyz``), and the state clears by itself at the next write that succeeds.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from config.logging import get_logger

log = get_logger()

# SQLite result codes (extended ones start with these) meaning the file cannot be used now.
_REASONS = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_READONLY": "the database is read-only",
    "SQLITE_BUSY": "the database is locked by another process",
    "SQLITE_LOCKED": "the database is locked by another process",
    "SQLITE_IOERR": "disk I/O error",
    "SQLITE_CANTOPEN": "cannot open the database file",
    "SQLITE_PERM": "permission denied",
    "SQLITE_CORRUPT": "the file is not a usable SQLite database",
    "SQLITE_NOTADB": "the file is not a usable SQLite database",
}


class StoreUnavailable(Exception):
    """The database cannot be used right now; the message says why."""


def unavailability(error: BaseException) -> str | None:
    """Why the store cannot be used, if ``error`` says so; None when it is a bug instead."""
    if isinstance(error, sqlite3.Error):
        name = getattr(error, "sqlite_errorname", None) or ""
        for prefix, reason in _REASONS.items():
            if name.startswith(prefix):
                return f"{reason} ({error})"
        return None
    if isinstance(error, OSError):  # e.g. creating the database's directory
        return f"{error.strerror or error}"
    return None


class StoreHealth:
    """The store's state as an operator sees it; transitions are logged once, not per call."""

    def __init__(self, database: str) -> None:
        self._database = database
        self.error: str | None = None

    @property
    def available(self) -> bool:
        return self.error is None

    def failed(self, reason: str) -> None:
        if self.error is None:
            log.error("[Store] Database unavailable", database=self._database, error=reason)
        self.error = reason

    def recovered(self) -> None:
        if self.error is not None:
            log.info("[Store] Database available again", database=self._database)
        self.error = None

    def status(self) -> dict[str, Any]:
        if self.error is None:
            return {"state": "ok"}
        return {"state": "unavailable", "error": self.error}
