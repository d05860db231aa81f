"""Helpers for the cluster tests: events, a recorder of the subscriber's callbacks, waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis

from app.cluster.client import node_id_for, pubsub_pool
from app.cluster.subscriber import NoticeSubscriber
from app.events import Event
from config.settings import Settings
from tests.app.support import account, closed, order, position, trade

__all__ = [
    "REDIS_TIMEOUT_S",
    "Recorder",
    "account",
    "closed",
    "cluster_settings",
    "event",
    "eventually",
    "order",
    "position",
    "running_subscriber",
    "trade",
]

# Every exchange with the test's Redis (on loopback) is bounded by this.
REDIS_TIMEOUT_S = 2.0


def event(kind: str, payload: dict[str, Any], *, quiet: bool = False) -> Event:
    return Event(kind, payload, time.time(), quiet)


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 5.0, what: str = ""
) -> None:
    """Wait, bounded, until ``condition`` holds: for state held by another process (Redis),
    which sends this one no signal to await."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.01)


class Recorder:
    """The subscriber's two callbacks, recording what they were given, and awaitable."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.resyncs: list[str] = []
        self._changed = asyncio.Event()

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    def on_resync(self, user_id: str) -> None:
        self.resyncs.append(user_id)
        self._changed.set()

    async def wait(self, condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


def cluster_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "node_id": "node-a",
        "redis_timeout_s": 1.0,
        "redis_backoff_initial_s": 0.05,
        "redis_backoff_max_s": 0.2,
        "redis_unsubscribe_delay_s": 5.0,
        "redis_probe_interval_s": 0.2,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def running_subscriber(
    settings: Settings, recorder: Recorder, publisher: Redis
) -> AsyncIterator[NoticeSubscriber]:
    """A started subscriber on its own pub/sub pool, closed on the way out."""
    node_id = node_id_for(settings)
    pool = pubsub_pool(settings, node_id)
    subscriber = NoticeSubscriber(
        pool,
        publisher,
        node_id=node_id,
        on_event=recorder.on_event,
        on_resync=recorder.on_resync,
        unsubscribe_delay_s=settings.redis_unsubscribe_delay_s,
        probe_interval_s=settings.redis_probe_interval_s,
        backoff_initial_s=settings.redis_backoff_initial_s,
        backoff_max_s=settings.redis_backoff_max_s,
        timeout_s=settings.redis_timeout_s,
    )
    await subscriber.start()
    try:
        yield subscriber
    finally:
        await subscriber.close()
        await pool.disconnect()
