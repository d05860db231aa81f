"""Login throttling: repeated failed logins lock a username, and many lock a client address."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, Self

# Failure records kept before the expired ones are swept: bounds memory under a spray of
# made-up usernames without a pass over the table on every failure.
THROTTLE_SWEEP_AT = 10_000
# The wait given while the limit is reached only by attempts in flight: they may yet succeed.
IN_FLIGHT_RETRY_S = 1.0


class Throttled(Exception):
    """A login refused before its password is checked; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.0f}s")
        self.retry_after = retry_after


class Attempt(Protocol):
    """One reserved login attempt: settle it with ``failed``/``succeeded``; leaving the
    ``async with`` block unsettled (an error before the verdict) releases it uncounted.
    Settling twice counts once; settling never raises."""

    async def failed(self) -> None: ...

    async def succeeded(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *_: object) -> None: ...


class LoginThrottling(Protocol):
    """What the login handler needs: this process's ``LoginThrottle``, or the cluster-wide
    one (``app.cluster.login_throttle``) when the nodes share a Redis."""

    async def reserve(self, username: str, address: str | None) -> Attempt:
        """Reserve one attempt for this username and address, or raise Throttled."""
        ...


def throttle_subjects(username: str, address: str | None) -> tuple[str, str]:
    """The username and the address as counted: usernames case- and space-blind, a missing
    address as one shared ``unknown``."""
    return username.strip().lower(), address or "unknown"


@dataclass(slots=True)
class _Failures:
    count: int
    first_at: float
    pending: int = 0  # attempts reserved and not yet settled


class LoginThrottle:
    """Locks a username out after repeated failed logins, and a client address after many.

    The address limit is separate and higher: behind a reverse proxy many users share one
    address, and a handful of typos must not lock everyone out. A success clears only the
    username's count, so one valid account cannot be used to reset an address's budget.

    An attempt is reserved before its password is checked and settled after: checking takes
    ~100 ms, and guesses in flight count against the limit, so concurrent guesses cannot all
    slip past a check made before any of them failed.
    """

    def __init__(
        self,
        max_failures: int,
        lockout_s: float,
        max_failures_per_address: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = {"user": max_failures, "addr": max_failures_per_address}
        self._lockout = lockout_s
        self._clock = clock
        self._failures: dict[tuple[str, str], _Failures] = {}

    @staticmethod
    def _keys(username: str, address: str | None) -> tuple[tuple[str, str], ...]:
        user, addr = throttle_subjects(username, address)
        return ("user", user), ("addr", addr)

    def _entry(self, key: tuple[str, str], now: float) -> _Failures:
        """The key's live entry; a window that has run out starts afresh."""
        entry = self._failures.get(key)
        if entry is None:
            entry = self._failures[key] = _Failures(0, now)
        elif now - entry.first_at >= self._lockout:
            entry.count, entry.first_at = 0, now
        return entry

    async def reserve(self, username: str, address: str | None) -> LoginAttempt:
        """Reserve one attempt for this username and address, or raise Throttled."""
        now = self._clock()
        keys = self._keys(username, address)
        wait = 0.0
        for key in keys:
            entry = self._entry(key, now)
            limit = self._limits[key[0]]
            if entry.count >= limit:
                wait = max(wait, self._lockout - (now - entry.first_at))
            elif entry.count + entry.pending >= limit:
                wait = max(wait, IN_FLIGHT_RETRY_S)
        if wait > 0:
            self._forget_idle(keys)
            raise Throttled(wait)
        for key in keys:
            self._failures[key].pending += 1
        self._prune(now)
        return LoginAttempt(self, keys)

    def _settle(self, keys: tuple[tuple[str, str], ...], outcome: str) -> None:
        now = self._clock()
        for key in keys:
            entry = self._entry(key, now)
            entry.pending = max(0, entry.pending - 1)
            if outcome == "failed":
                if entry.count == 0:
                    entry.first_at = now
                entry.count += 1
            elif outcome == "succeeded" and key[0] == "user":
                entry.count = 0
        self._forget_idle(keys)

    def _forget_idle(self, keys: tuple[tuple[str, str], ...]) -> None:
        for key in keys:
            entry = self._failures.get(key)
            if entry is not None and entry.count == 0 and entry.pending == 0:
                del self._failures[key]

    def _prune(self, now: float) -> None:
        if len(self._failures) > THROTTLE_SWEEP_AT:
            self._failures = {
                k: v
                for k, v in self._failures.items()
                if v.pending or now - v.first_at < self._lockout
            }


class LoginAttempt:
    """An attempt reserved in this process (see ``Attempt``)."""

    def __init__(self, throttle: LoginThrottle, keys: tuple[tuple[str, str], ...]) -> None:
        self._throttle = throttle
        self._keys = keys
        self._open = True

    def _finish(self, outcome: str) -> None:
        if self._open:
            self._open = False
            self._throttle._settle(self._keys, outcome)

    async def failed(self) -> None:
        self._finish("failed")

    async def succeeded(self) -> None:
        self._finish("succeeded")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._finish("released")
