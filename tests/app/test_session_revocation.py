"""Every way a session ends is published, so sockets using it can be closed: logout, the user
removed (here or by another process), expiry — with either store backend."""

from __future__ import annotations

import asyncio

from app.keys import STORE_KEY
from app.session_watch import SessionWatch
from app.sessions import Revocations, RevokedBecause, SessionRevoked
from app.store import hash_token
from app.user_store import UserStore
from tests.app.support import TIMEOUT, WallClock, session_for
from tests.conftest import ClientFactory
from tests.postgres import BACKENDS, StoreFactory

STORE_BACKENDS = BACKENDS


def recorder(store: UserStore) -> list[SessionRevoked]:
    events: list[SessionRevoked] = []
    store.revocations.subscribe(events.append)
    return events


async def first_of(store: UserStore) -> SessionRevoked:
    """The next revocation published on ``store``."""
    heard: asyncio.Future[SessionRevoked] = asyncio.get_running_loop().create_future()
    unsubscribe = store.revocations.subscribe(lambda event: heard.done() or heard.set_result(event))
    try:
        return await asyncio.wait_for(heard, TIMEOUT)
    finally:
        unsubscribe()


async def watched(store: UserStore, token: str) -> None:
    session = await store.session(token)
    assert session is not None
    store.watch_session(session)


async def test_logout_publishes_the_sessions_revocation(store: UserStore) -> None:
    user = await store.create_user("alice", "pw")
    token = await store.create_session(user.id, 60)
    other = await store.create_session(user.id, 60)
    events = recorder(store)
    assert await store.revoke_session(token)
    assert events == [SessionRevoked(user.id, hash_token(token), RevokedBecause.LOGOUT)]
    assert not events[0].covers(user.id, hash_token(other))  # only that session
    assert not await store.revoke_session("never-issued")
    assert len(events) == 1


async def test_removing_a_user_revokes_every_session_of_theirs(store: UserStore) -> None:
    alice = await store.create_user("alice", "pw")
    bob = await store.create_user("bob", "pw")
    tokens = [await store.create_session(alice.id, 60) for _ in range(2)]
    events = recorder(store)
    assert await store.remove_user("alice")
    (event,) = events
    assert event.reason is RevokedBecause.USER_REMOVED and event.token_hash is None
    assert all(event.covers(alice.id, hash_token(t)) for t in tokens)
    assert not event.covers(bob.id, hash_token(await store.create_session(bob.id, 60)))
    assert not await store.remove_user("alice")
    assert len(events) == 1


async def test_a_watched_session_is_published_when_it_expires(
    store: UserStore, clock: WallClock
) -> None:
    user = await store.create_user("alice", "pw")
    token = await store.create_session(user.id, 60)
    await watched(store, token)
    events = recorder(store)
    clock.now += 59
    await store.check_sessions()
    assert events == []
    clock.now += 1
    await store.check_sessions()
    await store.check_sessions()
    assert events == [SessionRevoked(user.id, hash_token(token), RevokedBecause.EXPIRED)]


async def test_a_session_ended_by_another_process_is_published(
    store: UserStore, open_store: StoreFactory, clock: WallClock, store_backend: str
) -> None:
    """`portfolio-stream users remove` runs in a process of its own (or on another node):
    SQLite notices at the next check, PostgreSQL tells every node at once."""
    user = await store.create_user("alice", "pw")
    token = await store.create_session(user.id, 3600)
    await watched(store, token)
    events = recorder(store)
    await store.check_sessions()
    assert events == []
    elsewhere = await open_store(clock=clock)
    if store_backend == "sqlite":
        assert await elsewhere.remove_user("alice")
        await store.check_sessions()
        await store.check_sessions()
        assert events == [SessionRevoked(user.id, hash_token(token), RevokedBecause.REVOKED)]
        return
    heard = asyncio.ensure_future(first_of(store))
    assert await elsewhere.remove_user("alice")
    assert await heard == SessionRevoked(user.id, None, RevokedBecause.USER_REMOVED)
    await store.check_sessions()
    assert len(events) == 1  # the check does not announce it again


async def test_a_session_no_longer_watched_is_not_published(
    store: UserStore, clock: WallClock
) -> None:
    user = await store.create_user("alice", "pw")
    token = await store.create_session(user.id, 60)
    session = await store.session(token)
    assert session is not None
    unwatch = store.watch_session(session)
    store.watch_session(session)  # two sockets on one session
    unwatch()
    unwatch()  # undoing twice undoes once
    events = recorder(store)
    clock.now += 61
    await store.check_sessions()
    assert len(events) == 1  # the second socket still watches it


async def test_checks_are_due_at_the_interval_or_the_soonest_expiry(clock: WallClock) -> None:
    async def all_live(hashes: object) -> set[str]:
        return set()

    watch = SessionWatch(all_live, Revocations(), interval_s=30.0, clock=clock)
    assert watch.next_check_in() == 30.0
    unwatch = watch.watch("h1", "user-1", clock.now + 10)
    watch.watch("h2", "user-1", clock.now + 100)
    assert watch.next_check_in() == 10.0
    unwatch()
    assert watch.next_check_in() == 30.0


async def test_the_logout_route_publishes_the_revocation(app_client: ClientFactory) -> None:
    client = await app_client()
    alice = await session_for(client, "alice")
    events: list[SessionRevoked] = []
    client.app[STORE_KEY].revocations.subscribe(events.append)
    response = await client.post("/api/auth/logout", json={}, headers=alice.headers)
    assert response.status == 200
    assert events == [SessionRevoked(alice.user_id, hash_token(alice.token), RevokedBecause.LOGOUT)]


async def test_expiry_is_published_by_the_store_itself_when_it_comes(
    open_store: StoreFactory,
) -> None:
    """No one calls check_sessions here: the store's own watch wakes at the expiry."""
    store = await open_store(session_check_interval_s=3600)
    user = await store.create_user("alice", "pw")
    token = await store.create_session(user.id, 0.3)
    published = asyncio.Event()
    events: list[SessionRevoked] = []
    store.revocations.subscribe(lambda event: (events.append(event), published.set()))
    await watched(store, token)
    await asyncio.wait_for(published.wait(), 5)
    assert events == [SessionRevoked(user.id, hash_token(token), RevokedBecause.EXPIRED)]
