"""Login throttling: repeated failed logins lock a username, and many lock a client address."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# Failure records kept before the expired ones are swept: bounds memory under a spray of
# made-up usernames without a pass over the table on every failure.
THROTTLE_SWEEP_AT = 10_000


@dataclass(slots=True)
class _Failures:
    count: int
    first_at: float


class LoginThrottle:
    """Locks a username out after repeated failed logins, and a client address after many.

    The address limit is separate and higher: behind a reverse proxy many users share one
    address, and a handful of typos must not lock everyone out. A success clears only the
    username's count, so one valid account cannot be used to reset an address's budget.
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
        return ("user", username.strip().lower()), ("addr", address or "unknown")

    def retry_after(self, username: str, address: str | None) -> float:
        """Seconds until this username/address may try again; 0 when neither is locked."""
        now = self._clock()
        wait = 0.0
        for key in self._keys(username, address):
            entry = self._failures.get(key)
            if entry is None:
                continue
            if now - entry.first_at >= self._lockout:
                del self._failures[key]
            elif entry.count >= self._limits[key[0]]:
                wait = max(wait, self._lockout - (now - entry.first_at))
        return wait

    def failed(self, username: str, address: str | None) -> None:
        now = self._clock()
        for key in self._keys(username, address):
            entry = self._failures.get(key)
            if entry is None or now - entry.first_at >= self._lockout:
                self._failures[key] = _Failures(1, now)
            else:
                entry.count += 1
        if len(self._failures) > THROTTLE_SWEEP_AT:
            self._failures = {
                k: v for k, v in self._failures.items() if now - v.first_at < self._lockout
            }

    def succeeded(self, username: str) -> None:
        self._failures.pop(self._keys(username, None)[0], None)
