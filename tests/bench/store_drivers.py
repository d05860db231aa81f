"""PostgreSQL drivers compared on the store's two paths: the session lookup and the login.

Run once, by hand, on loopback (not part of `make bench`, not collected by pytest):

    .venv/bin/pip install asyncpg 'sqlalchemy[asyncio]'   # the alternatives measured
    .venv/bin/python -m tests.bench.store_drivers [--url postgresql://postgres@127.0.0.1/postgres]

It creates a database of its own (dropped at the end) with the store's real schema, 1,000 users
and a session each, then for every driver measures:

- ``lookup``: the session lookup (a join of sessions and users by token hash), which every API
  call and every WebSocket upgrade makes: one at a time (p50/p99 in µs) and with 16 callers on a
  pool of 10 connections (lookups per second);
- ``login``: the database part of a login (read the credentials, then one transaction deleting
  expired sessions and inserting the new one), next to one argon2 verification for scale;

and then the lookup as the service makes it, through ``Store`` (SQLite) and ``PostgresStore``.

The figures and the choice they led to are in docs/scaling.md ("Users and sessions on
PostgreSQL").
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from argon2 import PasswordHasher
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from app.pg_connect import migrate
from app.pg_queries import MIGRATIONS
from app.pg_store import PostgresStore
from app.store import Store
from app.user_store import UserStore
from app.users import hash_token

USERS = 1000
SEQUENTIAL = 2000
WARMUP = 200
CALLERS = 16
PER_CALLER = 250
LOGINS = 500
POOL = 10
ROUNDS = 3

LOOKUP = (
    "SELECT u.id, u.username, u.is_admin, u.created_at, s.expires_at FROM sessions s "
    "JOIN users u ON u.id = s.user_id WHERE s.token_hash = %s AND s.expires_at > %s"
)
CREDENTIALS = (
    "SELECT id, username, is_admin, created_at, password_hash FROM users "
    "WHERE lower(username) = lower(%s)"
)
EXPIRED = "DELETE FROM sessions WHERE expires_at <= %s"
INSERT = (
    "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (%s, %s, %s, %s)"
)


def dollar(query: str) -> str:
    """asyncpg's placeholders are $1, $2, ..."""
    parts = query.split("%s")
    return "".join(f"{part}${i}" if i < len(parts) else part for i, part in enumerate(parts, 1))


@dataclass
class Driver:
    """One way of talking to the server: a lookup and a login, on a pool of POOL connections."""

    name: str
    lookup: Callable[[str, float], Awaitable[Any]]
    login: Callable[[str, str, float], Awaitable[Any]]
    close: Callable[[], Awaitable[None]]


async def psycopg_driver(url: str, prepare_threshold: int | None) -> Driver:
    pool = AsyncConnectionPool(
        url,
        min_size=POOL,
        max_size=POOL,
        open=False,
        kwargs={"autocommit": True, "prepare_threshold": prepare_threshold},
    )
    await pool.open(wait=True)

    async def lookup(token_hash: str, now: float) -> Any:
        async with pool.connection() as conn:
            cursor = await conn.execute(LOOKUP, (token_hash, now))
            return await cursor.fetchone()

    async def login(username: str, token_hash: str, now: float) -> Any:
        async with pool.connection() as conn:
            row = await (await conn.execute(CREDENTIALS, (username,))).fetchone()
            assert row is not None
            async with conn.transaction():
                await conn.execute(EXPIRED, (now - 10**9,))
                await conn.execute(INSERT, (token_hash, row[0], now, now + 3600))

    label = "psycopg 3 + pool, " + (
        "unprepared" if prepare_threshold is None else f"prepare_threshold={prepare_threshold}"
    )
    return Driver(label, lookup, login, pool.close)


async def asyncpg_driver(url: str, statement_cache_size: int) -> Driver:
    import asyncpg  # type: ignore[import-not-found, unused-ignore]

    pool = await asyncpg.create_pool(
        url, min_size=POOL, max_size=POOL, statement_cache_size=statement_cache_size
    )
    lookup_sql, credentials_sql = dollar(LOOKUP), dollar(CREDENTIALS)
    expired_sql, insert_sql = dollar(EXPIRED), dollar(INSERT)

    async def lookup(token_hash: str, now: float) -> Any:
        return await pool.fetchrow(lookup_sql, token_hash, now)

    async def login(username: str, token_hash: str, now: float) -> Any:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(credentials_sql, username)
            async with conn.transaction():
                await conn.execute(expired_sql, now - 10**9)
                await conn.execute(insert_sql, token_hash, row[0], now, now + 3600)

    label = "asyncpg, " + ("statement cache" if statement_cache_size else "statement_cache_size=0")
    return Driver(label, lookup, login, pool.close)


async def sqlalchemy_driver(url: str) -> Driver:
    from sqlalchemy import text  # type: ignore[import-not-found, unused-ignore]
    from sqlalchemy.ext.asyncio import (  # type: ignore[import-not-found, unused-ignore]
        create_async_engine,
    )

    engine = create_async_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1),
        pool_size=POOL,
        max_overflow=0,
        connect_args={"prepare_threshold": None},
    )

    def named(query: str) -> Any:
        names = iter(("a", "b", "c", "d"))
        return text("".join(f":{next(names)}" if p == "%s" else p for p in _split(query)))

    lookup_sql, credentials_sql = named(LOOKUP), named(CREDENTIALS)
    expired_sql, insert_sql = named(EXPIRED), named(INSERT)

    async def lookup(token_hash: str, now: float) -> Any:
        async with engine.connect() as conn:
            return (await conn.execute(lookup_sql, {"a": token_hash, "b": now})).first()

    async def login(username: str, token_hash: str, now: float) -> Any:
        async with engine.connect() as conn:
            row = (await conn.execute(credentials_sql, {"a": username})).first()
            await conn.commit()
            async with conn.begin():
                await conn.execute(expired_sql, {"a": now - 10**9})
                await conn.execute(
                    insert_sql, {"a": token_hash, "b": row[0], "c": now, "d": now + 3600}
                )

    async def close() -> None:
        await engine.dispose()

    # Warm the pool to POOL connections, as the other drivers start.
    async def touch() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    await asyncio.gather(*(touch() for _ in range(POOL)))
    return Driver("SQLAlchemy 2 async Core (psycopg)", lookup, login, close)


def _split(query: str) -> list[str]:
    pieces = query.split("%s")
    out: list[str] = []
    for i, piece in enumerate(pieces):
        out.append(piece)
        if i < len(pieces) - 1:
            out.append("%s")
    return out


async def measure(driver: Driver, tokens: list[str]) -> dict[str, float]:
    now = time.time()
    for token in tokens[:WARMUP]:
        assert await driver.lookup(token, now) is not None
    times = []
    for i in range(SEQUENTIAL):
        started = time.perf_counter()
        found = await driver.lookup(tokens[i % len(tokens)], now)
        times.append(time.perf_counter() - started)
        assert found is not None
    times.sort()

    async def caller(offset: int) -> None:
        for i in range(PER_CALLER):
            await driver.lookup(tokens[(offset + i) % len(tokens)], now)

    started = time.perf_counter()
    await asyncio.gather(*(caller(c * 37) for c in range(CALLERS)))
    concurrent = CALLERS * PER_CALLER / (time.perf_counter() - started)

    logins = []
    for i in range(LOGINS):
        started = time.perf_counter()
        await driver.login(f"bench-{i % USERS}", hash_token(secrets.token_urlsafe(32)), now)
        logins.append(time.perf_counter() - started)
    logins.sort()
    return {
        "lookup_p50_us": times[len(times) // 2] * 1e6,
        "lookup_p99_us": times[int(len(times) * 0.99)] * 1e6,
        "lookup_mean_us": statistics.fmean(times) * 1e6,
        "lookups_per_s": concurrent,
        "login_p50_us": logins[len(logins) // 2] * 1e6,
        "login_p99_us": logins[int(len(logins) * 0.99)] * 1e6,
    }


async def seed(url: str) -> list[str]:
    """The store's schema, USERS users with a session each; returns the sessions' hashes."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn, MIGRATIONS)
        now = time.time()
        tokens = [secrets.token_urlsafe(32) for _ in range(USERS)]
        async with conn.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO users (id, username, password_hash, is_admin, created_at) "
                "VALUES (%s, %s, 'x', false, %s)",
                [(f"user-{i}", f"bench-{i}", now) for i in range(USERS)],
            )
            await cursor.executemany(
                INSERT,
                [(hash_token(t), f"user-{i}", now, now + 86400) for i, t in enumerate(tokens)],
            )
    return tokens


async def measure_store(store: UserStore, tokens: list[str]) -> dict[str, float]:
    """The session lookup as the service makes it: ``store.session(cookie)``."""
    for token in tokens[:WARMUP]:
        assert await store.session(token) is not None
    times = []
    for i in range(SEQUENTIAL):
        started = time.perf_counter()
        found = await store.session(tokens[i % len(tokens)])
        times.append(time.perf_counter() - started)
        assert found is not None
    times.sort()

    async def caller(offset: int) -> None:
        for i in range(PER_CALLER):
            await store.session(tokens[(offset + i) % len(tokens)])

    started = time.perf_counter()
    await asyncio.gather(*(caller(c * 37) for c in range(CALLERS)))
    return {
        "lookup_p50_us": times[len(times) // 2] * 1e6,
        "lookup_p99_us": times[int(len(times) * 0.99)] * 1e6,
        "lookups_per_s": CALLERS * PER_CALLER / (time.perf_counter() - started),
    }


async def through_the_store(uri: str, tokens: list[str]) -> None:
    """The same lookup through the service's stores, SQLite for comparison."""
    with tempfile.TemporaryDirectory() as directory:
        sqlite = Store(Path(directory) / "bench.db")
        await sqlite.open()
        user = await sqlite.create_user("bench", "bench-password")
        sqlite_tokens = [await sqlite.create_session(user.id, 86400) for _ in range(USERS)]
        stores: list[tuple[str, UserStore, list[str]]] = [
            ("SQLite Store (worker thread)", sqlite, sqlite_tokens),
            ("PostgresStore, prepared statements", PostgresStore(uri, pool_size=POOL), tokens),
            (
                "PostgresStore, unprepared",
                PostgresStore(uri, pool_size=POOL, prepared_statements=False),
                tokens,
            ),
        ]
        results: dict[str, list[dict[str, float]]] = {}
        try:
            for _, store, _ in stores[1:]:
                await store.open()
            for _ in range(ROUNDS):
                for label, store, store_tokens in stores:
                    results.setdefault(label, []).append(await measure_store(store, store_tokens))
        finally:
            for _, store, _ in stores:
                await store.close()
    print(f"\nthrough the store: store.session(cookie), median of {ROUNDS} rounds")
    print(f"{'store':42} {'p50':>7} {'p99':>7} {'conc/s':>8}")
    for label, rounds in results.items():
        r = {key: statistics.median(one[key] for one in rounds) for key in rounds[0]}
        print(
            f"{label:42} {r['lookup_p50_us']:7.0f} {r['lookup_p99_us']:7.0f} "
            f"{r['lookups_per_s']:8.0f}"
        )


async def main(admin_url: str) -> None:
    name = f"portfolio_stream_bench_{secrets.token_hex(4)}"
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    uri = admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        raw_tokens = await seed(url)
        tokens = [hash_token(t) for t in raw_tokens]
        makers: list[Callable[[], Awaitable[Driver]]] = [
            lambda: psycopg_driver(url, None),
            lambda: psycopg_driver(url, 0),
            lambda: asyncpg_driver(uri, 100),
            lambda: asyncpg_driver(uri, 0),
            lambda: sqlalchemy_driver(uri),
        ]
        results: dict[str, list[dict[str, float]]] = {}
        for _ in range(ROUNDS):  # interleaved, so a noisy moment does not favour one driver
            for make in makers:
                try:
                    driver = await make()
                except ImportError as error:
                    print(f"(skipped: {error})")
                    continue
                try:
                    results.setdefault(driver.name, []).append(await measure(driver, tokens))
                finally:
                    await driver.close()
        print(f"median of {ROUNDS} rounds; lookups and logins in µs, conc/s = lookups per second")
        print(
            f"{'driver':42} {'p50':>7} {'p99':>7} {'mean':>7} {'conc/s':>8} {'login50':>8} "
            f"{'login99':>8}"
        )
        for label, rounds in results.items():
            r = {key: statistics.median(one[key] for one in rounds) for key in rounds[0]}
            print(
                f"{label:42} {r['lookup_p50_us']:7.0f} {r['lookup_p99_us']:7.0f} "
                f"{r['lookup_mean_us']:7.0f} {r['lookups_per_s']:8.0f} "
                f"{r['login_p50_us']:8.0f} {r['login_p99_us']:8.0f}"
            )
        hasher = PasswordHasher()
        stored = hasher.hash("bench-password")
        started = time.perf_counter()
        for _ in range(5):
            hasher.verify(stored, "bench-password")
        verify_us = (time.perf_counter() - started) / 5 * 1e6
        print(f"argon2 verify (production parameters): {verify_us:.0f} µs")
        await through_the_store(uri, raw_tokens)
    finally:
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    asyncio.run(main(parser.parse_args().url))
