"""Expiring counters shared by the cluster: what a login throttle (or any fixed-window budget)
needs to hold across nodes. Each counter is one Redis key whose window starts at its first hit
and ends with the key's expiry, so nothing outlives its window even if a node dies mid-way.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from app.cluster.client import bounded
from app.cluster.keys import counter_key
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
