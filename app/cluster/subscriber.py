"""The node's one pub/sub connection: users' change notices in, events and resync calls out.

- ``acquire``/``release`` reference-count a user's channel; subscribes leave in batches (one
  command for all the users acquired in a loop turn), unsubscribes after a grace period.
- The connection (``app.cluster.link``) is replaced when it fails, and also when two probes in
  a row went unanswered: it may look healthy and deliver nothing.
- A user whose grace period ended (or who was dropped with a lost connection) is reported to
  ``on_forget``: nothing about it is followed any more.
- Notices pass a per-user gate (``app.cluster.gate``): in order they become events; on a gap,
  a new epoch or a replaced connection the caller's ``on_resync(user_id)`` is called instead,
  and the caller re-reads the state and calls ``set_position``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError

from app.cluster.client import bounded
from app.cluster.gate import NoticeGate, Verdict
from app.cluster.keys import probe_channel, user_channel, user_of_channel
from app.cluster.link import PubSubLink
from app.cluster.notices import BadNotice, Notice, decode_notice
from app.cluster.probe import ProbeTracker
from app.cluster.subscriptions import SubscriptionBook
from app.events import Event
from config.logging import get_logger

log = get_logger()


@dataclass(frozen=True, slots=True)
class SubscriberStatus:
    connected: bool
    subscribed_users: int
    wanted_users: int
    probe_rtt_s: float | None
    probes_answered: int
    lag_s: float | None
    reconnects: int
    resyncs: int
    gaps: int
    stale_notices: int
    bad_notices: int


class NoticeSubscriber:
    """One per node; ``start`` it once, ``close`` it on the way out."""

    def __init__(
        self,
        pool: ConnectionPool,
        publisher: Redis,
        *,
        node_id: str,
        on_event: Callable[[Event], None],
        on_resync: Callable[[str], None],
        on_forget: Callable[[str], None] | None = None,
        unsubscribe_delay_s: float,
        probe_interval_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeout = timeout_s
        self._publisher = publisher
        self._on_event = on_event
        self._on_resync = on_resync
        self._on_forget = on_forget
        self._probe_interval = probe_interval_s
        self._clock = clock
        self._probe_channel = probe_channel(node_id)
        self._book = SubscriptionBook(unsubscribe_delay_s)
        self._gate = NoticeGate()
        self._probe = ProbeTracker()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._resyncs = self._bad = 0
        self._closed = False
        self._link = PubSubLink(
            pool,
            greeting=self._probe_channel,
            on_connect=self._connection_reset,
            on_frame=self._handle,
            take_commands=self._take_commands,
            timeout_s=timeout_s,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
        )

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._link.run(), name="redis-pubsub"),
            asyncio.create_task(self._probe_loop(), name="redis-pubsub-probe"),
        ]

    async def close(self) -> None:
        self._closed = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # wait(), not awaiting each: suppressing their CancelledError could swallow ours.
            await asyncio.wait(self._tasks)
        self._tasks = []
        if self._timer is not None:
            self._timer.cancel()

    # -- the caller's side -------------------------------------------------------------------

    async def acquire(self, user_id: str, timeout_s: float | None = None) -> bool:
        """Hold the user's channel. True once Redis confirmed the subscription (read the snapshot
        only then); False when that did not happen within ``timeout_s``. The hold stands either
        way, and a user whose subscription arrives later gets an ``on_resync`` call."""
        self._book.acquire(user_id)
        self._gate.track(user_id)
        if self._book.is_live(user_id):
            return True
        self._link.wake()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(user_id, []).append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            return False
        finally:
            waiting = self._waiters.get(user_id)
            if waiting is not None and waiter in waiting:
                waiting.remove(waiter)
        return not self._closed

    def release(self, user_id: str) -> None:
        self._book.release(user_id, self._clock())
        self._arm_timer()

    def set_position(self, user_id: str, epoch: str | None, offset: int) -> None:
        """Tell the gate what the snapshot just read held. Notices buffered meanwhile are
        delivered (through ``on_event``) before this returns; a user whose notices already
        flow keeps its position."""
        deliver, resync = self._gate.set_position(user_id, epoch, offset)
        for notice in deliver:
            self._deliver(notice)
        if resync:
            self._call_resync(user_id)

    def request_resync(self, user_id: str) -> None:
        """Forget the user's position and get an ``on_resync`` call (e.g. a failed re-read)."""
        if self._book.is_wanted(user_id):
            self._gate.begin_resync(user_id)
            self._call_resync(user_id)

    def position(self, user_id: str) -> tuple[str | None, int] | None:
        return self._gate.position(user_id)

    def is_subscribed(self, user_id: str) -> bool:
        return self._book.is_live(user_id)

    @property
    def status(self) -> SubscriberStatus:
        now = self._clock()
        return SubscriberStatus(
            connected=self._link.connected,
            subscribed_users=self._book.live_count,
            wanted_users=self._book.wanted_count,
            probe_rtt_s=self._probe.rtt_s,
            probes_answered=self._probe.answered,
            lag_s=self._probe.lag_s(now) if self._link.connected else None,
            reconnects=self._link.losses,
            resyncs=self._resyncs,
            gaps=self._gate.gaps + self._gate.epoch_changes,
            stale_notices=self._gate.stale,
            bad_notices=self._bad,
        )

    # -- the connection ----------------------------------------------------------------------

    def _connection_reset(self) -> None:
        """A new connection holds no subscription: every wanted user is subscribed again."""
        for user_id in self._book.connection_reset():
            self._forget(user_id)
        self._probe.reset()

    def _take_commands(self) -> tuple[list[str], list[str]]:
        for user_id in self._book.due(self._clock()):
            self._forget(user_id)
        subscribe, unsubscribe = self._book.take_commands()
        self._arm_timer()
        return [user_channel(u) for u in subscribe], [user_channel(u) for u in unsubscribe]

    def _forget(self, user_id: str) -> None:
        """The user is no longer followed here: its position goes, and the caller is told."""
        self._gate.forget(user_id)
        if self._on_forget is not None:
            try:
                self._on_forget(user_id)
            except Exception:
                log.exception("[Cluster] Forget handler failed", userId=user_id)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._book.next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._link.wake)

    # -- messages ----------------------------------------------------------------------------

    def _handle(self, frame: list[Any]) -> None:
        kind, channel = bytes(frame[0]), bytes(frame[1]).decode()
        if kind == b"message":
            self._on_message(channel, bytes(frame[2]))
        elif kind in (b"subscribe", b"unsubscribe") and channel != self._probe_channel:
            user_id = user_of_channel(channel)
            if user_id is not None:
                self._on_confirmed(user_id, kind == b"subscribe")

    def _on_message(self, channel: str, data: bytes) -> None:
        if channel == self._probe_channel:
            with contextlib.suppress(ValueError):
                self._probe.received(int(data), self._clock())
            return
        user_id = user_of_channel(channel)
        if user_id is None:
            return
        try:
            notice = decode_notice(data, user_id)
        except BadNotice as error:
            self._bad += 1
            log.warning("[Cluster] Ignored a malformed notice", userId=user_id, error=str(error))
            return
        verdict = self._gate.offer(user_id, notice)
        if verdict is Verdict.DELIVER:
            self._deliver(notice)
        elif verdict is Verdict.RESYNC:
            self._call_resync(user_id)

    def _on_confirmed(self, user_id: str, subscribed: bool) -> None:
        if not self._book.confirmed(user_id, subscribed):
            return
        waiters = self._waiters.pop(user_id, [])
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        was_live = self._book.take_resync_flag(user_id)
        if was_live or (not waiters and self._gate.position(user_id) is None):
            self._gate.begin_resync(user_id)
            self._call_resync(user_id)

    def _deliver(self, notice: Notice) -> None:
        if notice.event is None:
            return  # a reset is judged by the gate, never delivered
        try:
            self._on_event(notice.event)
        except Exception:
            log.exception("[Cluster] Event handler failed", eventType=notice.event.type)

    def _call_resync(self, user_id: str) -> None:
        self._resyncs += 1
        try:
            self._on_resync(user_id)
        except Exception:
            log.exception("[Cluster] Resync handler failed", userId=user_id)

    # -- the probe ---------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        seq = 0
        while True:
            await asyncio.sleep(self._probe_interval)
            if not self._link.connected:
                continue
            if self._probe.tick():
                log.warning(
                    "[Cluster] Redis pub/sub probe unanswered; reconnecting",
                    probeIntervalS=self._probe_interval,
                )
                self._link.replace("probe unanswered")
                continue
            seq += 1
            self._probe.sent(seq, self._clock())
            # A failed publish stays unanswered: the next ticks count it.
            with contextlib.suppress(RedisError, OSError):
                async with bounded(min(self._timeout, self._probe_interval)):
                    await self._publisher.publish(self._probe_channel, str(seq))
