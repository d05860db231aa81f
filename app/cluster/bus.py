"""The event bus over Redis (SPEC §11): what this node publishes goes into the shared state; what
its handlers receive are the change notices of the users it holds.

``publish`` keeps the in-process bus's promise — synchronous, O(1), the runbook's
``eventBus.emit`` line written here, by the node that publishes — and queues the event for one
writer task, which applies queued events in order, many per round trip, through the fenced
write script. Nothing published is dropped because Redis is away: the writer keeps its queue and
retries with backoff (one ``ERROR`` line when Redis goes, one ``INFO`` when it is back).

Redis may come back without its data. The consuming node keeps a generation token in Redis
(``app.cluster.keys.GENERATION``); when it is gone, the writer drops what it had queued (the
broker's ledger holds the newer truth), asks the broker to rebuild (``set_rebuild``: each
account's whole state written again through ``replace_state``), and writes a new token only
after those writes landed. Readers wait for the token before showing a state (``ClusterView``),
so no browser is shown a portfolio Redis forgot.

Handlers registered with ``subscribe`` are fed by ``deliver`` (the notice subscriber's
``on_event``), exactly as the in-process bus feeds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.backoff import Backoff
from app.bus import BusClosed, Handler, Unsubscribe, dispatch, log_emit, subscribe_to
from app.cluster.client import bounded
from app.cluster.keys import GENERATION
from app.cluster.state import SharedPortfolio, WriteResult
from app.events import Event, validate_payload
from config.logging import get_logger

log = get_logger()

# Events per round trip: one pipeline of this many script calls holds Redis for well under a
# millisecond, and a burst of price ticks is written in a few round trips.
WRITE_BATCH: Final = 256
# Events kept while Redis is away. Past this the queue is dropped and every account is rebuilt
# from the broker's ledger when Redis returns (the ledger has every change the queue had).
MAX_PENDING: Final = 100_000
# How often an idle writer checks that Redis still holds the state it wrote (a flush or a
# replacement that never broke a connection).
GENERATION_CHECK_S: Final = 1.0
# (user, epoch) pairs whose refused writes were logged, before the memory is cleared.
MAX_REFUSALS_LOGGED: Final = 10_000

Rebuild = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Replacement:
    user_id: str
    events: tuple[Event, ...]
    epoch: int


@dataclass(frozen=True, slots=True)
class _Write:
    event: Event
    epoch: int  # the account epoch its publisher held when it published (fencing)


@dataclass(frozen=True, slots=True)
class BusStatus:
    available: bool
    pending: int
    writer_epoch: int | None
    rebuilds: int
    refused_writes: int


class RedisBus:
    """``EventBus`` for a node of a cluster; see the module docstring."""

    def __init__(
        self,
        state: SharedPortfolio,
        redis: Redis,
        *,
        timeout_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
        clock: Callable[[], float] = time.time,
        max_pending: int = MAX_PENDING,
        generation_check_s: float = GENERATION_CHECK_S,
    ) -> None:
        self._state = state
        self._redis = redis
        self._timeout = timeout_s
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._clock = clock
        self._max_pending = max_pending
        self._check_every = generation_check_s
        self._handlers: dict[str, list[Handler]] = {}
        self._queue: deque[_Write | _Replacement] = deque()
        # Per user, the epoch of the account lease this node holds for it (set by the lease
        # wiring); a publisher without one writes with epoch 0, refused once a lease holder
        # has written.
        self._epochs: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # set while the queue is empty and written
        self._drained.set()
        self._writer: asyncio.Task[None] | None = None
        self._rebuild: Rebuild | None = None
        self._running = False
        self._closed = False
        self._emitted = 0
        self._available = True
        self._writing = False
        self._generation: str | None = None
        self._must_rebuild = False
        self._checked_at = float("-inf")
        self._rebuilds = 0
        self._refused = 0
        self._refusals_logged: set[tuple[str, int]] = set()

    # -- EventBus ----------------------------------------------------------------------------

    @property
    def events_emitted(self) -> int:
        return self._emitted

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self._running

    def publish(self, event_type: str, payload: dict[str, Any], *, quiet: bool = False) -> Event:
        if self._closed:
            raise BusClosed(f"bus is closed; dropped {event_type}")
        validate_payload(event_type, payload)
        event = Event(event_type, payload, self._clock(), quiet)
        self._emitted += 1
        log_emit(event)
        self._enqueue(_Write(event, self._epochs.get(event.user_id, 0)))
        return event

    def replace_state(self, user_id: str, events: Sequence[Event]) -> None:
        """Make ``events`` the user's whole shared state, in one step (see ``SharedPortfolio
        .replace``); each event is logged like a publish."""
        if self._closed:
            raise BusClosed(f"bus is closed; dropped the state of {user_id}")
        for event in events:
            validate_payload(event.type, event.payload)
            self._emitted += 1
            log_emit(event)
        self._enqueue(_Replacement(user_id, tuple(events), self._epochs.get(user_id, 0)))

    def subscribe(self, event_type: str, handler: Handler) -> Unsubscribe:
        return subscribe_to(self._handlers, event_type, handler)

    async def start(self) -> None:
        self._running = True
        self._closed = False
        self._writer = asyncio.create_task(self._write_loop(), name="redis-bus-writer")

    async def close(self) -> None:
        """Refuse further publishes, write what is queued (bounded by the Redis timeout), stop."""
        self._closed = True
        if self._writer is not None:
            if self._queue and self._available:
                self._wake.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._timeout):
                        await self._drained.wait()
            if self._queue:
                log.error(
                    "[Cluster] Events not written to Redis at shutdown", pending=len(self._queue)
                )
            self._writer.cancel()
            await asyncio.wait([self._writer])
            self._writer = None
        self._running = False

    # -- the cluster's side ------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """A notice of a user held here, as an event: every handler of its type runs."""
        dispatch(event, self._handlers.get(event.type, ()))

    def set_epoch(self, user_id: str, epoch: int | None) -> None:
        """The account epoch this node's writes of ``user_id`` carry from now on (None: it
        consumes the user's account no more). What is queued keeps the epoch it had."""
        if epoch is None:
            self._epochs.pop(user_id, None)
        else:
            self._epochs[user_id] = epoch

    def set_rebuild(self, rebuild: Rebuild) -> None:
        """How the shared state is written again after Redis lost it (the broker's rebuild)."""
        self._rebuild = rebuild

    @property
    def status(self) -> BusStatus:
        return BusStatus(
            available=self._available,
            pending=len(self._queue),
            writer_epoch=max(self._epochs.values(), default=None),
            rebuilds=self._rebuilds,
            refused_writes=self._refused,
        )

    # -- the writer --------------------------------------------------------------------------

    def _enqueue(self, item: _Write | _Replacement) -> None:
        if len(self._queue) >= self._max_pending:
            log.error(
                "[Cluster] Redis write queue full; dropped it, the broker will rebuild the state",
                dropped=len(self._queue),
            )
            self._queue.clear()
            self._must_rebuild = True
        self._queue.append(item)
        self._drained.clear()
        self._wake.set()

    async def _write_loop(self) -> None:
        while True:
            try:
                await self._write_some()
                if not self._available:
                    self._available = True
                    self._backoff.reset()
                    log.info("[Cluster] Redis writes resumed", pending=len(self._queue))
            except (RedisError, OSError) as error:
                if self._available:
                    self._available = False
                    log.error(
                        "[Cluster] Redis unavailable: events are kept and written when it returns",
                        error=repr(error),
                        pending=len(self._queue),
                    )
                await asyncio.sleep(self._backoff.next_delay())

    async def _write_some(self) -> None:
        """One turn: make sure of the epoch and the generation, then write one batch."""
        if not self._writing and not self._queue:
            # A node that never publishes (it consumes no account) never writes at all.
            self._wake.clear()
            await self._wake.wait()
            return
        if not self._writing:
            async with bounded(self._timeout):
                await self._redis.set(GENERATION, secrets.token_hex(8), nx=True)
                raw = await self._redis.get(GENERATION)
            self._generation = _text(raw)
            self._checked_at = time.monotonic()
            self._writing = True
        if (
            not self._available
            or self._must_rebuild
            or time.monotonic() - self._checked_at >= self._check_every
        ):
            await self._check_generation()
        if not self._queue:
            self._drained.set()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_every):
                    await self._wake.wait()
            return
        await self._write_batch()

    async def _check_generation(self) -> None:
        async with bounded(self._timeout):
            raw = await self._redis.get(GENERATION)
        self._checked_at = time.monotonic()
        current = _text(raw)
        if current is not None and current == self._generation and not self._must_rebuild:
            return
        await self._rebuild_state(lost=current != self._generation)

    async def _rebuild_state(self, *, lost: bool) -> None:
        dropped = len(self._queue)
        self._queue.clear()
        self._must_rebuild = False
        self._rebuilds += 1
        log.error(
            "[Cluster] Redis lost the shared state; rebuilding it from the broker"
            if lost
            else "[Cluster] Rebuilding the shared state from the broker",
            droppedEvents=dropped,
        )
        if self._rebuild is not None:
            await self._rebuild()
        while self._queue:
            await self._write_batch()
        token = secrets.token_hex(8)
        async with bounded(self._timeout):
            await self._redis.set(GENERATION, token)
        self._generation = token
        log.info("[Cluster] Shared state rebuilt", generation=token)

    async def _write_batch(self) -> None:
        """Write the oldest queued events (or one replacement); removed only once written."""
        queue = self._queue
        head = queue[0]
        if isinstance(head, _Replacement):
            result = await self._state.replace(head.user_id, head.events, epoch=head.epoch)
            self._check(result, head.user_id, head.epoch)
            queue.popleft()
            return
        writes: list[_Write] = []
        for item in queue:
            if isinstance(item, _Replacement) or len(writes) >= WRITE_BATCH:
                break
            writes.append(item)
        results = await self._state.apply_many(
            [w.event for w in writes], epoch=[w.epoch for w in writes]
        )
        for write, result in zip(writes, results, strict=True):
            self._check(result, write.event.user_id, write.epoch)
        for _ in writes:
            queue.popleft()

    def _check(self, result: WriteResult, user_id: str, epoch: int) -> None:
        if not result.applied:
            self._refused += 1
            if (user_id, epoch) in self._refusals_logged:
                return  # one line per user and stale epoch: a woken holder may have many
            if len(self._refusals_logged) >= MAX_REFUSALS_LOGGED:
                self._refusals_logged.clear()
            self._refusals_logged.add((user_id, epoch))
            log.warning(
                "[Cluster] Write refused: a newer writer holds this account",
                userId=user_id,
                epoch=epoch,
                fencingEpoch=result.fencing_epoch,
            )


def _text(raw: bytes | str | None) -> str | None:
    if not raw:
        return None
    return raw.decode() if isinstance(raw, bytes) else raw
