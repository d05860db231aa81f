"""The internal event bus (SPEC §3).

``publish`` is synchronous and O(1): it validates, logs the runbook's ``eventBus.emit`` line and
queues the event; a single drain callback on the event loop hands queued events to subscribers in
order. A publisher (the broker consumer) therefore never waits on a subscriber, and one failing
handler is logged while the others still run. ``subscribe`` returns the callable that undoes it.

``EventBus`` is the interface; ``InProcessBus`` the single-node implementation. A Redis-backed
bus for scale-out (``app.cluster.bus``) implements the same methods.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from app.events import Event, validate_payload
from config.logging import get_logger

Handler = Callable[[Event], None]
Unsubscribe = Callable[[], None]

log = get_logger()


class EventBus(Protocol):
    """Async publish/subscribe inside the process."""

    @property
    def events_emitted(self) -> int: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def running(self) -> bool: ...

    def publish(self, event_type: str, payload: dict[str, Any], *, quiet: bool = False) -> Event:
        """Queue an event for every subscriber of its type; never blocks."""
        ...

    def replace_state(self, user_id: str, events: Sequence[Event]) -> None:
        """Make ``events`` (all of ``user_id``) the user's whole state in one step: a broker
        account's state rebuilt from REST. Readers never see a part of it."""
        ...

    def subscribe(self, event_type: str, handler: Handler) -> Unsubscribe:
        """Register a handler; returns the function that removes it again."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Deliver what is queued, then refuse further publishes."""
        ...


class BusClosed(RuntimeError):
    """Publishing on a bus that has been closed."""


class InProcessBus:
    """Single-process bus: ordered delivery through one loop callback per burst."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._handlers: dict[str, list[Handler]] = {}
        self._queue: deque[Event] = deque()
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._closed = False
        self._emitted = 0

    @property
    def events_emitted(self) -> int:
        return self._emitted

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self._running

    def handler_count(self, event_type: str | None = None) -> int:
        if event_type is not None:
            return len(self._handlers.get(event_type, ()))
        return sum(len(handlers) for handlers in self._handlers.values())

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._closed = False

    async def close(self) -> None:
        self._drain()
        self._running = False
        self._closed = True

    def subscribe(self, event_type: str, handler: Handler) -> Unsubscribe:
        return subscribe_to(self._handlers, event_type, handler)

    def publish(self, event_type: str, payload: dict[str, Any], *, quiet: bool = False) -> Event:
        if self._closed:
            raise BusClosed(f"bus is closed; dropped {event_type}")
        validate_payload(event_type, payload)
        event = Event(event_type, payload, self._clock(), quiet)
        self._emitted += 1
        log_emit(event)
        self._queue.append(event)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._drain)
        return event

    def replace_state(self, user_id: str, events: Sequence[Event]) -> None:
        """In one process the state never outlives its publisher: a rebuild is the events, in
        order (the first reconciliation of a start meets an empty state)."""
        for event in events:
            self.publish(event.type, event.payload, quiet=event.quiet)

    def _drain(self) -> None:
        self._drain_scheduled = False
        queue = self._queue
        while queue:
            event = queue.popleft()
            dispatch(event, self._handlers.get(event.type, ()))


def subscribe_to(
    handlers: dict[str, list[Handler]], event_type: str, handler: Handler
) -> Unsubscribe:
    """Add ``handler`` to a bus's table; returns the function that removes it again."""
    handlers.setdefault(event_type, []).append(handler)

    def unsubscribe() -> None:
        current = handlers.get(event_type)
        if current is not None and handler in current:
            # Copy-on-write: a drain in progress keeps iterating the old list.
            handlers[event_type] = [h for h in current if h is not handler]

    return unsubscribe


def dispatch(event: Event, handlers: list[Handler] | tuple[Handler, ...]) -> None:
    """Run every handler; a failing one is logged with its traceback and the rest still run."""
    for handler in handlers:
        try:
            handler(event)
        except Exception:
            log.exception(
                "[EventBus] Handler failed",
                eventType=event.type,
                userId=event.payload.get("userId"),
                handler=getattr(handler, "__qualname__", repr(handler)),
            )


def log_emit(event: Event) -> None:
    """The runbook's per-emit line; ``cut -d'"' -f2`` on it yields the event type."""
    if event.quiet and not log.debug_enabled:
        return
    payload = event.payload
    fields: dict[str, Any] = {"userId": payload["userId"]}
    symbol = payload.get("symbol")
    if symbol is not None:
        fields["symbol"] = symbol
    message = f'[EventBus] eventBus.emit("{event.type}")'
    if event.quiet:
        log.debug(message, **fields)
    else:
        log.info(message, **fields)
