"""This node's copy of the shared state of the users it holds connections of.

For each such user the node keeps a mirror (the app's ``PortfolioStore``) that snapshots are
built from, in step with Redis: ``hold`` subscribes to the user's channel first, then reads the
user's whole state with its offset, installs it and positions the notice gate there, so every
later notice continues it (SPEC §11: subscribe first, then read, drop older notices). A gap, a
new epoch or a lost pub/sub connection makes the subscriber call ``on_resync``: the state is
read again and every connection of the user is sent a fresh snapshot (``resnapshot``), ``seq``
continuing, so a browser never sees a hole.

A state is shown only when it is whole: while Redis has no generation token (it lost its data
and the consumer is still rebuilding it) the read is retried and the mirror kept as it was, up
to ``generation_wait_s``. A user that could not be read at all has no snapshot yet (``snapshot``
answers None and the writer sends nothing); it gets one as soon as a read succeeds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

from redis.exceptions import RedisError

from app.backoff import Backoff
from app.cluster.state import SharedPortfolio
from app.cluster.subscriber import NoticeSubscriber
from app.portfolio import PortfolioStore
from config.logging import get_logger

log = get_logger()

# How long readers wait for a rebuilt state (a generation token) before showing what Redis
# has: a consumer's rebuild is one REST reconciliation per account, bounded by its timeout.
GENERATION_WAIT_S: Final = 15.0
RETRY_INITIAL_S: Final = 0.2
RETRY_MAX_S: Final = 2.0


class ClusterView:
    def __init__(
        self,
        state: SharedPortfolio,
        subscriber: NoticeSubscriber,
        mirror: PortfolioStore,
        *,
        subscribe_timeout_s: float,
        generation_wait_s: float = GENERATION_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = state
        self._subscriber = subscriber
        self._mirror = mirror
        self._subscribe_timeout = subscribe_timeout_s
        self._generation_wait = generation_wait_s
        self._clock = clock
        self._refs: dict[str, int] = {}
        self._loaded: set[str] = set()
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._missing_since: dict[str, float] = {}
        self._retries: dict[str, Backoff] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._resnapshot: Callable[[str], None] = lambda _user: None
        self._closed = False
        self.reads = 0
        self.read_failures = 0

    def set_resnapshot(self, resnapshot: Callable[[str], None]) -> None:
        """What sends every connection of a user a fresh snapshot (the stream's hub)."""
        self._resnapshot = resnapshot

    # -- connections -------------------------------------------------------------------------

    async def hold(self, user_id: str) -> None:
        """Follow ``user_id`` for one more connection; the first one waits (bounded) until the
        user's state is read, so its snapshot is ready when the client asks."""
        self._refs[user_id] = self._refs.get(user_id, 0) + 1
        # Counted by the subscriber too (one acquire per hold, one release per release). Without
        # a pub/sub connection nothing is confirmed: the hold stands, and is read on reconnect.
        wait_s = self._subscribe_timeout if self._subscriber.status.connected else 0
        await self._subscriber.acquire(user_id, wait_s)
        if user_id in self._loaded and self._subscriber.position(user_id) is not None:
            return  # still followed (e.g. in its unsubscribe grace period): the mirror is live
        task = self._loading.get(user_id)
        if task is None:
            task = self._start_load(user_id)
        await asyncio.wait([task], timeout=self._subscribe_timeout)

    def release(self, user_id: str) -> None:
        refs = self._refs.get(user_id, 0)
        if refs <= 0:
            return
        if refs == 1:
            del self._refs[user_id]
        else:
            self._refs[user_id] = refs - 1
        self._subscriber.release(user_id)

    def snapshot(self, user_id: str, channels: frozenset[str] | set[str]) -> dict[str, Any] | None:
        """The user's snapshot from the mirror, or None while its state was never read."""
        if user_id not in self._loaded:
            return None
        return self._mirror.snapshot(user_id, channels)

    def is_loaded(self, user_id: str) -> bool:
        return user_id in self._loaded

    @property
    def users(self) -> int:
        return len(self._refs)

    # -- the subscriber's calls --------------------------------------------------------------

    def on_resync(self, user_id: str) -> None:
        if self._closed:
            return
        if user_id in self._loading:
            self._again.add(user_id)  # read once more after the read in flight
            return
        self._start_load(user_id)

    def on_forget(self, user_id: str) -> None:
        """The subscriber no longer follows the user: its mirror goes."""
        if user_id in self._refs:
            return
        self._loaded.discard(user_id)
        self._mirror.drop(user_id)
        self._missing_since.pop(user_id, None)
        self._retries.pop(user_id, None)
        timer = self._timers.pop(user_id, None)
        if timer is not None:
            timer.cancel()

    async def close(self) -> None:
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = list(self._loading.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- reading -----------------------------------------------------------------------------

    def _start_load(self, user_id: str) -> asyncio.Task[None]:
        timer = self._timers.pop(user_id, None)
        if timer is not None:
            timer.cancel()
        task = asyncio.create_task(self._load(user_id), name=f"cluster-read:{user_id}")
        self._loading[user_id] = task
        return task

    async def _load(self, user_id: str) -> None:
        try:
            await self._read_and_install(user_id)
        finally:
            self._loading.pop(user_id, None)
        if user_id in self._again and not self._closed:
            self._again.discard(user_id)
            self._start_load(user_id)

    async def _read_and_install(self, user_id: str) -> None:
        self.reads += 1
        try:
            state = await self._state.read(user_id)
        except (RedisError, OSError) as error:
            self.read_failures += 1
            log.debug("[Cluster] State read failed", userId=user_id, error=repr(error))
            self._retry(user_id)
            return
        if state.generation is None and self._waits_for_rebuild(user_id):
            self._retry(user_id)
            return
        self._missing_since.pop(user_id, None)
        self._retries.pop(user_id, None)
        if user_id not in self._refs and not self._subscriber.is_subscribed(user_id):
            return  # nobody here follows the user any more
        self._mirror.replace(user_id, state.portfolio)
        self._loaded.add(user_id)
        # Notices buffered since the subscription are applied to the mirror here, in order.
        self._subscriber.set_position(user_id, state.epoch, state.offset)
        self._resnapshot(user_id)

    def _waits_for_rebuild(self, user_id: str) -> bool:
        now = self._clock()
        since = self._missing_since.setdefault(user_id, now)
        if now - since < self._generation_wait:
            return True
        log.warning(
            "[Cluster] No rebuilt shared state in time; showing what Redis holds",
            userId=user_id,
            waitedS=round(now - since, 1),
        )
        return False

    def _retry(self, user_id: str) -> None:
        if self._closed or user_id not in self._refs:
            return
        backoff = self._retries.setdefault(user_id, Backoff(RETRY_INITIAL_S, RETRY_MAX_S))
        delay = backoff.next_delay()
        self._timers[user_id] = asyncio.get_running_loop().call_later(
            delay, self._retry_due, user_id
        )

    def _retry_due(self, user_id: str) -> None:
        self._timers.pop(user_id, None)
        if not self._closed and user_id in self._refs and user_id not in self._loading:
            self._start_load(user_id)
