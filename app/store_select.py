"""The user store DATABASE_URL names: a SQLite file (the default) or a PostgreSQL server."""

from __future__ import annotations

from app.pg_store import PostgresStore
from app.store import Store
from app.user_store import UserStore
from config.settings import Settings


def store_for(settings: Settings) -> UserStore:
    """The store for ``settings``, not yet opened."""
    if settings.database_is_postgres:
        return PostgresStore(
            settings.database_url,
            hash_concurrency=settings.login_hash_concurrency,
            session_check_interval_s=settings.session_check_interval_s,
            pool_size=settings.database_pool_size,
            timeout_s=settings.database_timeout_s,
            prepared_statements=settings.database_prepared_statements,
        )
    return Store(
        settings.sqlite_path,
        hash_concurrency=settings.login_hash_concurrency,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        session_check_interval_s=settings.session_check_interval_s,
    )
