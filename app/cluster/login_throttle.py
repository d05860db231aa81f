"""Login throttling that holds across the nodes sharing one Redis.

The same rules as ``app.login_throttle.LoginThrottle``, kept in Redis: per username and per
client address, a count of failed logins in a window that opens at the first failure and ends
``LOGIN_LOCKOUT_S`` later, plus the attempts in flight (``ExpiringCounters.hold``), each of
which expires by itself after ``CLUSTER_ENTRY_TTL_S`` so that a node dying mid-check leaks it
no longer. A success clears only the username's count.

Redis away, the node throttles by its own in-process ``LoginThrottle`` (one ``ERROR`` line,
then one ``INFO`` line when Redis answers again): never everyone locked out, never everyone let
in. It retries Redis after a backoff rather than on every login, so a hung Redis does not hold
each login for the Redis timeout.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Self, TypeVar

from redis.exceptions import RedisError

from app.backoff import Backoff
from app.cluster.counters import ExpiringCounters, Hold, Settlement
from app.cluster.node import ClusterNode
from app.login_throttle import (
    IN_FLIGHT_RETRY_S,
    Attempt,
    LoginThrottle,
    LoginThrottling,
    Throttled,
    throttle_subjects,
)
from config.logging import get_logger
from config.settings import Settings

log = get_logger()

T = TypeVar("T")

USER_NAMESPACE = "login:user"
ADDRESS_NAMESPACE = "login:addr"

# How each outcome settles the username's count and the address's.
_SETTLEMENTS: dict[str, tuple[Settlement, Settlement]] = {
    "failed": ("add", "add"),
    "succeeded": ("reset", "release"),
    "released": ("release", "release"),
}


class ClusterLoginThrottle:
    """``LoginThrottling`` over Redis counters, with ``local`` as the fallback."""

    def __init__(
        self,
        users: ExpiringCounters,
        addresses: ExpiringCounters,
        local: LoginThrottle,
        *,
        max_failures: int,
        max_failures_per_address: int,
        lockout_s: float,
        hold_ttl_s: float,
        backoff: Backoff,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = users
        self._addresses = addresses
        self._local = local
        self._max_failures = max_failures
        self._max_per_address = max_failures_per_address
        self._lockout = lockout_s
        self._hold_ttl = hold_ttl_s
        self._backoff = backoff
        self._clock = clock
        self.degraded = False
        self._next_try = 0.0

    async def reserve(self, username: str, address: str | None) -> Attempt:
        if self.degraded and self._clock() < self._next_try:
            return await self._local.reserve(username, address)
        user, addr = throttle_subjects(username, address)
        hold_id = secrets.token_hex(8)
        try:
            holds = await _both(
                self._users.hold(user, hold_id, limit=self._max_failures, ttl_s=self._hold_ttl),
                self._addresses.hold(
                    addr, hold_id, limit=self._max_per_address, ttl_s=self._hold_ttl
                ),
            )
        except RedisError as error:
            # A hold the other call took expires by itself (``hold_ttl_s``).
            self._lost(error)
            return await self._local.reserve(username, address)
        self._answered()
        attempt = ClusterAttempt(self, user, addr, hold_id)
        limits = (self._max_failures, self._max_per_address)
        refused = [(h, limit) for h, limit in zip(holds, limits, strict=True) if not h.granted]
        if refused:
            await attempt.settle("released")  # give back whichever of the two was held
            raise Throttled(max(self._wait(hold, limit) for hold, limit in refused))
        return attempt

    def _wait(self, hold: Hold, limit: int) -> float:
        if hold.count >= limit:
            return hold.resets_in_s or self._lockout
        return IN_FLIGHT_RETRY_S

    async def settle(self, user: str, addr: str, hold_id: str, outcome: str) -> None:
        how_user, how_addr = _SETTLEMENTS[outcome]
        try:
            await _both(
                self._users.settle(user, hold_id, how_user, self._lockout),
                self._addresses.settle(addr, hold_id, how_addr, self._lockout),
            )
        except RedisError as error:
            # The holds expire by themselves; a failure not counted is one guess more.
            self._lost(error)

    def _lost(self, error: BaseException) -> None:
        self._next_try = self._clock() + self._backoff.next_delay()
        if not self.degraded:
            self.degraded = True
            log.error(
                "[Auth] Login throttling by this node's limits only: Redis unavailable",
                error=repr(error),
            )

    def _answered(self) -> None:
        if self.degraded:
            self.degraded = False
            self._backoff.reset()
            log.info("[Auth] Login throttling cluster-wide again")


class ClusterAttempt:
    """An attempt held in Redis (see ``Attempt``)."""

    def __init__(self, throttle: ClusterLoginThrottle, user: str, addr: str, hold_id: str) -> None:
        self._throttle = throttle
        self._subjects = user, addr
        self._hold_id = hold_id
        self._open = True

    async def settle(self, outcome: str) -> None:
        if self._open:
            self._open = False
            await self._throttle.settle(*self._subjects, self._hold_id, outcome)

    async def failed(self) -> None:
        await self.settle("failed")

    async def succeeded(self) -> None:
        await self.settle("succeeded")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.settle("released")


async def _both(first: Awaitable[T], second: Awaitable[T]) -> tuple[T, T]:
    """Both calls at once, each run to its end (neither is left running); then the first
    one's failure, if any, is raised."""
    one, two = await asyncio.gather(first, second, return_exceptions=True)
    if isinstance(one, BaseException):
        raise one
    if isinstance(two, BaseException):
        raise two
    return one, two


def local_login_throttle(settings: Settings) -> LoginThrottle:
    return LoginThrottle(
        settings.login_max_failures,
        settings.login_lockout_s,
        settings.login_max_failures_per_address,
    )


def login_throttle_for(settings: Settings, node: ClusterNode | None) -> LoginThrottling:
    """The app's login throttle: cluster-wide over the node's Redis, else this process's."""
    local = local_login_throttle(settings)
    if node is None:
        return local
    return ClusterLoginThrottle(
        node.counters(USER_NAMESPACE),
        node.counters(ADDRESS_NAMESPACE),
        local,
        max_failures=settings.login_max_failures,
        max_failures_per_address=settings.login_max_failures_per_address,
        lockout_s=settings.login_lockout_s,
        hold_ttl_s=settings.cluster_entry_ttl_s,
        backoff=Backoff(settings.redis_backoff_initial_s, settings.redis_backoff_max_s),
    )
