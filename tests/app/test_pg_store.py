"""Several nodes on one PostgreSQL store (issue 11 item 6): a session made on one node works on
every node, a logout anywhere is refused everywhere at once, and the revocation reaches the
sockets of every node (LISTEN/NOTIFY), even after the listening connection was cut."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

from app.keys import STORE_KEY
from app.sessions import RevokedBecause, SessionRevoked
from app.store import hash_token
from app.user_store import UserStore
from config.settings import Settings
from tests.app.support import PASSWORD, TIMEOUT, Client, cookie, until
from tests.conftest import ClientFactory
from tests.postgres import TestDatabase

STORE_BACKENDS = ("postgresql",)
CLI = str(Path(sys.executable).with_name("portfolio-stream"))


async def two_nodes(app_client: ClientFactory) -> tuple[Client, Client]:
    """Two instances of the service on the same database, as two nodes would be."""
    return await app_client(), await app_client()


async def login(node: Client, username: str = "alice") -> str:
    response = await node.post("/api/auth/login", json={"username": username, "password": PASSWORD})
    assert response.status == 200, await response.text()
    token = response.cookies["session"].value
    node.session.cookie_jar.clear()
    return token


async def me(node: Client, token: str) -> int:
    return (await node.get("/api/auth/me", headers=cookie(token))).status


class Heard:
    """Revocations published on one node's store, awaitable."""

    def __init__(self, store: UserStore) -> None:
        self.events: list[SessionRevoked] = []
        self._changed = asyncio.Event()
        store.revocations.subscribe(self._record)

    def _record(self, event: SessionRevoked) -> None:
        self.events.append(event)
        self._changed.set()

    async def next(self) -> SessionRevoked:
        async with asyncio.timeout(TIMEOUT):
            while not self.events:
                self._changed.clear()
                await self._changed.wait()
        return self.events.pop(0)


async def watch(node: Client, token: str) -> None:
    """What an open WebSocket on ``node`` does with its session."""
    store = node.app[STORE_KEY]
    session = await store.session(token)
    assert session is not None
    store.watch_session(session)


async def test_a_session_made_on_one_node_works_on_another_and_logout_anywhere_ends_it(
    app_client: ClientFactory,
) -> None:
    a, b = await two_nodes(app_client)
    token = await login(a)
    assert await me(b, token) == 200
    assert (await (await b.get("/api/auth/me", headers=cookie(token))).json())["user"][
        "username"
    ] == "alice"
    logout = await b.post("/api/auth/logout", json={}, headers=cookie(token))
    assert logout.status == 200
    assert await me(a, token) == 401  # at once: every request looks the session up
    assert await me(b, token) == 401


async def test_a_logout_on_one_node_reaches_the_sockets_of_another_at_once(
    app_client: ClientFactory,
) -> None:
    a, b = await two_nodes(app_client)
    first, second = await login(a), await login(a)
    await watch(a, first)
    on_a, on_b = Heard(a.app[STORE_KEY]), Heard(b.app[STORE_KEY])
    alice = await a.app[STORE_KEY].get_user_by_username("alice")
    assert alice is not None

    def logout(token: str) -> SessionRevoked:
        return SessionRevoked(alice.id, hash_token(token), RevokedBecause.LOGOUT)

    assert (await b.post("/api/auth/logout", json={}, headers=cookie(first))).status == 200
    assert await on_a.next() == logout(first)  # heard over NOTIFY, long before any re-check
    assert await on_b.next() == logout(first)  # published by b itself
    assert (await a.post("/api/auth/logout", json={}, headers=cookie(second))).status == 200
    assert await on_a.next() == logout(second)
    # Notices arrive in commit order: b hearing a's means b has had (and skipped) its own.
    assert await on_b.next() == logout(second)
    await a.app[STORE_KEY].check_sessions()
    assert on_a.events == [] and on_b.events == []  # each node published each logout once


async def test_a_user_removed_on_one_node_is_a_revocation_on_every_node(
    app_client: ClientFactory,
) -> None:
    a, b = await two_nodes(app_client)
    token = await login(b, "bob")
    await watch(b, token)
    on_b = Heard(b.app[STORE_KEY])
    bob = await a.app[STORE_KEY].get_user_by_username("bob")
    assert bob is not None
    assert await a.app[STORE_KEY].remove_user("bob")
    assert await on_b.next() == SessionRevoked(bob.id, None, RevokedBecause.USER_REMOVED)
    assert await me(b, token) == 401


async def test_the_cli_works_on_the_shared_database_and_reaches_the_nodes_at_once(
    app_client: ClientFactory, postgres: TestDatabase, tmp_path: Path
) -> None:
    node = await app_client()
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env["DATABASE_URL"] = postgres.url

    async def cli(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            CLI, *args, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, args
        return out.decode().strip()

    token = await cli("sessions", "create", "carol")
    assert await me(node, token) == 200
    await watch(node, token)
    heard = Heard(node.app[STORE_KEY])
    assert await cli("users", "remove", "carol") == "removed carol"
    event = await heard.next()
    assert event.reason is RevokedBecause.USER_REMOVED
    assert event.covers(event.user_id, hash_token(token))
    assert await me(node, token) == 401


async def test_revocations_missed_while_the_listening_connection_was_cut_are_caught_up(
    app_client: ClientFactory, postgres: TestDatabase, log_lines: io.StringIO
) -> None:
    """The server ends a's listening connection (a restart, a failover, an idle cut); a logout
    on b while a is not listening still reaches a: a re-checks its sessions on reconnecting."""
    a, b = await two_nodes(app_client)
    token = await login(a)
    await watch(a, token)
    heard = Heard(a.app[STORE_KEY])
    terminated = postgres.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN %%' AND pid <> pg_backend_pid()"
    )
    assert len(terminated) == 2  # one listening connection per node
    assert (await b.post("/api/auth/logout", json={}, headers=cookie(token))).status == 200
    event = await heard.next()
    # Heard over NOTIFY if a was listening again already, else found by the catch-up re-check.
    assert event.token_hash == hash_token(token)
    assert event.reason in (RevokedBecause.LOGOUT, RevokedBecause.REVOKED)
    await until(lambda: "Listening again for session revocations" in log_lines.getvalue())
    text = log_lines.getvalue()
    assert "ERROR [Store] Not listening for session revocations from other nodes: " in text
    assert "Traceback" not in text
