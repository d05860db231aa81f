"""Concurrent login floods: the throttles hold however many guesses arrive at once (SPEC §8)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable
from typing import Any, TypeVar

from tests.app.support import PASSWORD, Client, connect, session_for
from tests.conftest import ClientFactory
from tests.postgres import BACKENDS

STORE_BACKENDS = BACKENDS  # the auth and API paths on SQLite and on PostgreSQL

T = TypeVar("T")


async def guess(client: Client, username: str, password: str) -> int:
    response = await client.post(
        "/api/auth/login", json={"username": username, "password": password}
    )
    await response.read()
    return response.status


async def burst(client: Client, guesses: list[tuple[str, str]]) -> Counter[int]:
    statuses = await asyncio.gather(*(guess(client, user, pw) for user, pw in guesses))
    return Counter(statuses)


def verified(statuses: Counter[Any]) -> int:
    """Guesses whose password was actually checked (answered 401 or 200)."""
    return statuses[401] + statuses[200]


async def test_concurrent_guesses_for_one_user_verify_at_most_the_limit(
    app_client: ClientFactory,
) -> None:
    # Enough hashing slots that the limit, not the hashing bound, is what refuses guesses.
    client = await app_client(login_max_failures=5, login_lockout_s=300, login_hash_concurrency=5)
    guesses = [("alice", f"wrong-{n}") for n in range(199)] + [("alice", PASSWORD)]
    statuses = await burst(client, guesses)
    assert verified(statuses) <= 5, statuses
    assert statuses[429] > 0, statuses
    assert set(statuses) <= {401, 429, 503, 200}, statuses
    # Once the limit is spent, even the right password waits out the lockout.
    assert await guess(client, "alice", PASSWORD) == 429


async def test_concurrent_guesses_from_one_address_verify_at_most_its_limit(
    app_client: ClientFactory,
) -> None:
    client = await app_client(
        login_max_failures=5, login_max_failures_per_address=6, login_hash_concurrency=6
    )
    guesses = [(f"nobody-{n}", "wrong") for n in range(200)]
    statuses = await burst(client, guesses)
    assert verified(statuses) <= 6, statuses
    assert statuses[429] > 0, statuses
    assert await guess(client, "carol", PASSWORD) == 429


async def timed(call: Awaitable[T]) -> tuple[T, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await call
    return result, loop.time() - start


async def test_a_burst_of_bad_logins_does_not_stall_other_users_sessions(
    app_client: ClientFactory,
) -> None:
    """Session lookups (every API call, every upgrade) never queue behind password hashing."""
    client = await app_client(login_max_failures_per_address=1000)
    alice = await session_for(client, "alice")
    await guess(client, "nobody", "wrong")  # the dummy hash is made once, on the first login
    tasks = [asyncio.create_task(guess(client, f"nobody-{n}", "wrong")) for n in range(40)]
    # Once one guess is answered the server holds the rest: hashing or already refused.
    answered, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    me, (ws, _) = await asyncio.gather(
        client.get("/api/auth/me", headers=alice.headers), connect(client, alice)
    )
    # Ordering, not a wall-clock figure (a loaded machine slows both sides): had the lookups
    # queued behind the hashing in progress, a checked guess would have been answered first.
    checked_first = [
        t.result() for t in tasks if t.done() and t not in answered and t.result() == 401
    ]
    burst_still_running = not all(task.done() for task in tasks)
    await ws.close()
    statuses = Counter(await asyncio.gather(*tasks))
    assert me.status == 200
    assert not checked_first, statuses
    assert verified(statuses) > 0, statuses  # some guesses really were hashing meanwhile
    assert burst_still_running, statuses


async def test_logins_beyond_the_hashing_bound_are_refused_at_once(
    app_client: ClientFactory,
) -> None:
    client = await app_client(login_hash_concurrency=1, login_max_failures_per_address=1000)
    await guess(client, "nobody", "wrong")  # the dummy hash is made once, on the first login
    loop = asyncio.get_running_loop()

    async def attempt(n: int) -> tuple[int, str | None, dict[str, Any], float]:
        body = {"username": f"nobody-{n}", "password": "wrong"}
        response = await client.post("/api/auth/login", json=body)
        payload = await response.json()
        return response.status, response.headers.get("Retry-After"), payload, loop.time()

    results = await asyncio.gather(*(attempt(n) for n in range(10)))
    refused = [r for r in results if r[0] == 503]
    checked = [r for r in results if r[0] == 401]
    assert refused and checked, results
    # Ordering, not a wall-clock figure (a loaded machine slows both sides): all ten are in
    # flight at once, so a refusal that waited for the slot would be answered after a hash.
    first_checked_at = min(answered_at for *_, answered_at in checked)
    for _, retry_after, body, answered_at in refused:
        assert body["error"] == "login_busy"
        assert retry_after == "1"
        assert answered_at < first_checked_at, results  # not queued behind the hashing
    # Refusals are not failures: the address is not locked, a calm retry is checked.
    assert await guess(client, "alice", PASSWORD) == 200


async def test_unknown_users_cost_a_password_check_too(app_client: ClientFactory) -> None:
    """No user-enumeration oracle: an unknown username takes as long as a wrong password."""
    client = await app_client(login_max_failures=100)
    await guess(client, "nobody", "wrong")  # the dummy hash is made once, on the first login
    wrong = [(await timed(guess(client, "alice", "wrong")))[1] for _ in range(3)]
    unknown = [(await timed(guess(client, f"nobody-{n}", "wrong")))[1] for n in range(3)]
    assert min(unknown) > 0.5 * min(wrong), (unknown, wrong)
