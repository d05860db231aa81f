"""The per-user batch window (pure: the timer is injected).

The first event for a user opens the window and arms its timer; later events in the window
join the batch and never re-arm it, so an event waits at most one window, however busy the user.
A zero window has no timer but still flushes on the next loop turn, so a burst delivered
together (one bus drain) leaves as one batch rather than one per event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Protocol

from app.batching import Batch
from app.events import Event

Flush = Callable[[str, Batch], None]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """The part of the event loop the scheduler uses (a fake clock in tests)."""

    def call_later(
        self, delay: float, callback: Callable[[str], None], user_id: str, /
    ) -> Cancellable: ...

    def call_soon(self, callback: Callable[[str], None], user_id: str, /) -> Cancellable: ...


class BatchScheduler:
    """Collects each user's events into a batch and hands it to ``flush`` when its window ends."""

    def __init__(self, window_s: float, flush: Flush, timers: Timers | None = None) -> None:
        self._window = window_s
        self._flush = flush
        self._timers = timers  # None: the running loop, looked up when first needed
        self._batches: dict[str, Batch] = {}
        self._handles: dict[str, Cancellable] = {}
        # Read-only: lets the per-event path find an open batch with one dict lookup.
        self.open_batches: Mapping[str, Batch] = self._batches

    def add(self, user_id: str, event: Event) -> None:
        batch = self._batches.get(user_id)
        if batch is None:
            batch = self.open(user_id)
        batch.add(event)

    def open(self, user_id: str) -> Batch:
        """Open the user's window: a new batch, and its timer armed (no-op if already open)."""
        batch = self._batches.get(user_id)
        if batch is not None:
            return batch
        batch = self._batches[user_id] = Batch()
        timers = self._timers
        if timers is None:
            timers = self._timers = asyncio.get_running_loop()
        self._handles[user_id] = (
            timers.call_later(self._window, self.flush, user_id)
            if self._window > 0
            else timers.call_soon(self.flush, user_id)
        )
        return batch

    def flush(self, user_id: str) -> None:
        """End the user's window now (its timer fires here too); nothing pending is a no-op."""
        handle = self._handles.pop(user_id, None)
        if handle is not None:
            handle.cancel()
        batch = self._batches.pop(user_id, None)
        if batch is not None and not batch.is_empty():
            self._flush(user_id, batch)

    def flush_all(self) -> None:
        for user_id in list(self._handles):
            self.flush(user_id)

    def drop(self, user_id: str) -> None:
        """Forget the user's open window without sending it (their last connection closed)."""
        handle = self._handles.pop(user_id, None)
        if handle is not None:
            handle.cancel()
        self._batches.pop(user_id, None)

    def clear(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
        self._batches.clear()

    def pending(self) -> int:
        """Users whose window is open."""
        return len(self._handles)
