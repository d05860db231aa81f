"""Numbered schema migrations, recorded in a ``schema_version`` table of the database itself.

Each backend lists its migrations in order (``app/store_queries.py`` for SQLite,
``app/pg_queries.py`` for PostgreSQL); opening the store, or ``portfolio-stream db upgrade``,
applies the ones the database has not recorded, each in its own transaction together with its
row in ``schema_version``, so a migration is applied whole or not at all, and only once.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from config.logging import get_logger

log = get_logger()


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SchemaUpgrade:
    """What opening the store did to the schema: the versions it applied, where the database
    stands, and the latest version this release knows."""

    applied: tuple[int, ...]
    version: int
    known: int

    def describe(self) -> str:
        if not self.applied:
            return f"database schema is up to date (version {self.version})"
        done = ", ".join(str(v) for v in self.applied)
        return f"database schema upgraded to version {self.version} (applied {done})"


def report(upgrade: SchemaUpgrade) -> None:
    """The service's log lines for an upgrade made at start (the CLI prints ``describe``)."""
    if upgrade.applied:
        log.info(
            "[Store] Database schema upgraded",
            version=upgrade.version,
            applied=",".join(str(v) for v in upgrade.applied),
        )
    if upgrade.version > upgrade.known:
        # A newer release migrated it (a rolling upgrade): migrations add, never remove.
        log.warning(
            "[Store] Database schema is newer than this release",
            version=upgrade.version,
            known=upgrade.known,
        )


def pending(migrations: Sequence[Migration], applied: Collection[int]) -> list[Migration]:
    """The migrations not yet recorded, in order."""
    return [m for m in migrations if m.version not in applied]


def latest(migrations: Sequence[Migration]) -> int:
    return max((m.version for m in migrations), default=0)


def check_numbering(migrations: Sequence[Migration]) -> None:
    """Versions are 1, 2, 3, ... in order: a gap or a repeat is a mistake in the code."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations must be numbered 1..n in order, got {versions}")
