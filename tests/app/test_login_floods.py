"""Concurrent login floods: the throttles hold however many guesses arrive at once (SPEC §8)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from tests.app.support import PASSWORD, Client
from tests.conftest import ClientFactory


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
    client = await app_client(login_max_failures=5, login_lockout_s=300)
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
    client = await app_client(login_max_failures=5, login_max_failures_per_address=10)
    guesses = [(f"nobody-{n}", "wrong") for n in range(200)]
    statuses = await burst(client, guesses)
    assert verified(statuses) <= 10, statuses
    assert statuses[429] > 0, statuses
    assert await guess(client, "carol", PASSWORD) == 429
