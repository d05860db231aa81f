"""Expiring counters shared by the cluster: what a login throttle (or any fixed-window budget)
needs to hold across nodes. Each counter is one Redis key whose window starts at its first hit
and ends with the key's expiry, so nothing outlives its window even if a node dies mid-way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from app.cluster.client import bounded
from app.cluster.keys import counter_key, held_key
from app.cluster.scripts import script


@dataclass(frozen=True, slots=True)
class Count:
    """A counter's value and the seconds until its window closes (0 when none is open)."""

    count: int
    resets_in_s: float


@dataclass(frozen=True, slots=True)
class Reservation:
    granted: bool
    count: int
    retry_after_s: float


@dataclass(frozen=True, slots=True)
class Hold:
    """The answer to ``hold``: whether the attempt is held, the settled count, the live holds
    (this one included when held) and the seconds until the count's window closes."""

    granted: bool
    count: int
    held: int
    resets_in_s: float


# How a hold is settled: count a hit, clear the count, or only give the hold back.
Settlement = Literal["add", "reset", "release"]


def _seconds(pttl: int) -> float:
    return max(0, int(pttl)) / 1000


class ExpiringCounters:
    """Counters in one namespace (e.g. ``login:user``, ``login:addr``)."""

    def __init__(self, redis: Redis, namespace: str, *, timeout_s: float) -> None:
        self._redis = redis
        self._namespace = namespace
        self._timeout = timeout_s

    def _key(self, key: str) -> str:
        return counter_key(self._namespace, key)

    async def add(self, key: str, window_s: float) -> Count:
        """Count one hit; the first hit opens a window of ``window_s``."""
        async with bounded(self._timeout):
            count, pttl = await script("counter_add").run(
                self._redis, [self._key(key)], [max(1, round(window_s * 1000))]
            )
        return Count(int(count), _seconds(pttl))

    async def reserve(self, key: str, limit: int, window_s: float) -> Reservation:
        """Take one unit if fewer than ``limit`` were taken in the open window, atomically."""
        async with bounded(self._timeout):
            granted, count, pttl = await script("counter_reserve").run(
                self._redis, [self._key(key)], [limit, max(1, round(window_s * 1000))]
            )
        ok = bool(int(granted))
        return Reservation(ok, int(count), 0.0 if ok else _seconds(pttl))

    async def hold(self, key: str, hold_id: str, *, limit: int, ttl_s: float) -> Hold:
        """Hold one attempt if the settled count plus the live holds is under ``limit``; the
        hold lasts ``ttl_s`` unless settled first (a node that dies leaks it no longer)."""
        async with bounded(self._timeout):
            granted, count, held, pttl = await script("counter_hold").run(
                self._redis,
                [self._key(key), held_key(self._namespace, key)],
                [limit, hold_id, max(1, round(ttl_s * 1000))],
            )
        return Hold(bool(int(granted)), int(count), int(held), _seconds(pttl))

    async def settle(self, key: str, hold_id: str, how: Settlement, window_s: float) -> int:
        """Give a hold back, counting a hit (``add``, which opens a window of ``window_s``
        if none is), clearing the count (``reset``) or neither (``release``); the count after."""
        async with bounded(self._timeout):
            count = await script("counter_settle").run(
                self._redis,
                [self._key(key), held_key(self._namespace, key)],
                [hold_id, how, max(1, round(window_s * 1000))],
            )
        return int(count)

    async def peek(self, *keys: str) -> list[Count]:
        async with bounded(self._timeout), self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(self._key(key))
                pipe.pttl(self._key(key))
            answers = await pipe.execute()
        return [
            Count(int(answers[i] or 0), _seconds(answers[i + 1]) if answers[i] else 0.0)
            for i in range(0, len(answers), 2)
        ]

    async def reset(self, key: str) -> None:
        async with bounded(self._timeout):
            await self._redis.delete(self._key(key))
