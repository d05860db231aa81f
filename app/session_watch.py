"""Sessions in use by open sockets, re-checked so their end is noticed wherever it happens.

A logout in this process is published by the store itself. Two ends are not: a session's
expiry (nothing happens at that moment) and a change made by another process —
``portfolio-stream users remove`` runs in its own. ``SessionWatch`` covers both: it checks at
each watched session's expiry and every SESSION_CHECK_INTERVAL_S, and publishes
``SessionRevoked`` on the store's revocations for each session that no longer authenticates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from app.sessions import Revocations, RevokedBecause, SessionRevoked
from app.store_health import StoreUnavailable
from config.logging import get_logger

log = get_logger()

LiveSessions = Callable[[Collection[str]], Awaitable[set[str]]]


@dataclass(slots=True)
class _Watched:
    user_id: str
    expires_at: float
    watchers: int


class SessionWatch:
    """Publishes a revocation for every watched session that ends unannounced."""

    def __init__(
        self,
        live_sessions: LiveSessions,
        revocations: Revocations,
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._live_sessions = live_sessions
        self._revocations = revocations
        self._interval = interval_s
        self._clock = clock
        self._watched: dict[str, _Watched] = {}
        self._wakeup: asyncio.Future[None] | None = None  # the run loop's wait for its next check
        revocations.subscribe(self._forget)

    def watch(self, token_hash: str, user_id: str, expires_at: float) -> Callable[[], None]:
        """Watch a session while a socket uses it; returns the function that stops watching."""
        entry = self._watched.get(token_hash)
        if entry is None:
            entry = self._watched[token_hash] = _Watched(user_id, expires_at, 0)
            if self._wakeup is not None:  # it may expire before the next check planned so far
                _wake(self._wakeup)
        entry.watchers += 1
        done = False

        def unwatch() -> None:
            nonlocal done
            if done or self._watched.get(token_hash) is not entry:
                return  # already undone, or the session was revoked meanwhile
            done = True
            entry.watchers -= 1
            if entry.watchers <= 0:
                del self._watched[token_hash]

        return unwatch

    def next_check_in(self) -> float:
        """Seconds until the next check: the interval, or sooner when a session expires."""
        delay = self._interval
        if self._watched:
            soonest = min(entry.expires_at for entry in self._watched.values())
            delay = min(delay, soonest - self._clock())
        return max(0.0, delay)

    async def check(self) -> None:
        """Publish a revocation for each watched session that has expired or is gone."""
        now = self._clock()
        for token_hash, entry in list(self._watched.items()):
            if entry.expires_at <= now:
                self._publish(token_hash, entry, RevokedBecause.EXPIRED)
        if not self._watched:
            return
        # Only the sessions asked about: one watched while the store answers was not.
        asked = list(self._watched.items())
        try:
            live = await self._live_sessions([token_hash for token_hash, _ in asked])
        except StoreUnavailable:
            return  # cannot tell now; the sockets keep their sessions until the next check
        for token_hash, entry in asked:
            if token_hash not in live:
                self._publish(token_hash, entry, RevokedBecause.REVOKED)

    def _publish(self, token_hash: str, entry: _Watched, because: RevokedBecause) -> None:
        if self._watched.get(token_hash) is entry:  # not announced meanwhile
            self._revocations.publish(SessionRevoked(entry.user_id, token_hash, because))

    async def run(self) -> None:
        """Check until cancelled (the store's cleanup context runs this as a task)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("[Auth] Session check failed", watched=len(self._watched))
            # A new watch wakes this only to move the next check earlier (its session was
            # just looked up): checking at every wake cost a query of all N sessions for
            # each of N sockets opening in a reconnect storm.
            periodic_at = loop.time() + self._interval
            while (delay := min(periodic_at - loop.time(), self.next_check_in())) > 0:
                self._wakeup = wakeup = loop.create_future()
                timer = loop.call_later(delay, _wake, wakeup)
                try:
                    await wakeup
                finally:
                    timer.cancel()

    def _forget(self, event: SessionRevoked) -> None:
        """Announced already (logout, a removal here, or this watch): never publish it again."""
        for token_hash, entry in list(self._watched.items()):
            if event.covers(entry.user_id, token_hash):
                del self._watched[token_hash]


def _wake(wakeup: asyncio.Future[None]) -> None:
    if not wakeup.done():
        wakeup.set_result(None)
