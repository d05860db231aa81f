"""LoginThrottle on its own, with a fake clock: reservations, settling, windows."""

from __future__ import annotations

import pytest

from app.login_throttle import LoginThrottle, Throttled


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, per_user: int = 3, per_address: int = 10) -> LoginThrottle:
    return LoginThrottle(per_user, 60.0, per_address, clock=clock)


async def fail(throttle: LoginThrottle, username: str, address: str | None) -> None:
    await (await throttle.reserve(username, address)).failed()


async def succeed(throttle: LoginThrottle, username: str, address: str | None) -> None:
    await (await throttle.reserve(username, address)).succeeded()


async def test_attempts_in_flight_count_against_the_limit() -> None:
    throttle = make(Clock())
    held = [await throttle.reserve("alice", "10.0.0.1") for _ in range(3)]
    with pytest.raises(Throttled) as refused:
        await throttle.reserve("alice", "10.0.0.2")
    # Nothing has failed yet: the caller is told to come back soon, not in a full lockout.
    assert refused.value.retry_after == 1.0
    await held[0].succeeded()
    await throttle.reserve("alice", "10.0.0.2")  # a slot came back


async def test_failures_lock_out_for_the_rest_of_the_window() -> None:
    clock = Clock()
    throttle = make(clock)
    for _ in range(3):
        await fail(throttle, "alice", "10.0.0.1")
    clock.now += 20
    with pytest.raises(Throttled) as refused:
        await throttle.reserve("ALICE ", "10.0.0.9")  # usernames are case- and space-blind
    assert refused.value.retry_after == pytest.approx(40.0)
    clock.now += 40
    await fail(throttle, "alice", "10.0.0.1")  # a fresh window


async def test_an_attempt_left_unsettled_is_released_uncounted() -> None:
    throttle = make(Clock(), per_user=1)
    for _ in range(5):
        async with await throttle.reserve("alice", None):
            pass  # e.g. the store was unavailable: no verdict, nothing counted
    attempt = await throttle.reserve("alice", None)
    await attempt.failed()
    await attempt.failed()  # settling twice counts once
    with pytest.raises(Throttled):
        await throttle.reserve("alice", None)


async def test_a_success_clears_the_username_but_not_the_address() -> None:
    throttle = make(Clock(), per_user=2, per_address=3)
    await fail(throttle, "alice", "10.0.0.1")
    await succeed(throttle, "alice", "10.0.0.1")
    await fail(throttle, "alice", "10.0.0.1")  # alice's count restarted at zero
    await fail(throttle, "bob", "10.0.0.1")  # the address's third failure
    with pytest.raises(Throttled):
        await throttle.reserve("carol", "10.0.0.1")
    await succeed(throttle, "carol", "10.0.0.2")
