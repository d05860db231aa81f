"""From the bus to the sockets: each event joins its user's batch window, and a flushed batch
goes to each of the user's connections, filtered by the connection's channels.

Most of a user's tabs share one channel set, so a batch is serialized once per distinct set
and the same bytes go to each tab (``seq`` is spliced in per connection). A connection whose
writer is still busy gets the batch folded into its coalesced state instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from app.batch_scheduler import BatchScheduler, Timers
from app.batching import Batch
from app.connection import Connection
from app.events import POSITION_UPDATED, TRADE_EXECUTED, Event
from app.metrics import Metrics
from app.protocol import PreparedBatch
from config.logging import get_logger, utc_timestamp

log = get_logger()


class FanOut:
    """Routes bus events into per-user windows and delivers what each window flushes."""

    def __init__(
        self,
        by_user: Mapping[str, Mapping[str, Connection]],
        *,
        window_s: float,
        wall_clock: Callable[[], float],
        metrics: Metrics | None = None,
        timers: Timers | None = None,
    ) -> None:
        self._by_user = by_user
        self._wall = wall_clock
        self._metrics = metrics
        self.batches = BatchScheduler(window_s, self.deliver, timers)
        self._open_batches = self.batches.open_batches

    def on_event(self, event: Event) -> None:
        """The bus handler: log the event as the runbook shows, then batch it for its user."""
        payload = event.payload
        user_id = payload["userId"]
        if event.type == TRADE_EXECUTED:
            log.info(
                "[PortfolioStream] Processed trade:executed event",
                userId=user_id,
                symbol=payload["symbol"],
            )
        elif event.type == POSITION_UPDATED and (not event.quiet or log.debug_enabled):
            # Price ticks are DEBUG; skip even building the line when DEBUG is off.
            (log.debug if event.quiet else log.info)(
                "[PortfolioStream] Broadcast position update",
                userId=user_id,
                symbol=payload["symbol"],
                unrealizedPnl=payload["unrealizedPnl"],
            )
        # A user without connections is not buffered for: a snapshot carries what they missed.
        if user_id in self._by_user:
            # Once per event, so no call into the scheduler unless this opens the window.
            batch = self._open_batches.get(user_id)
            if batch is None:
                batch = self.batches.open(user_id)
            batch.add(event)

    def deliver(self, user_id: str, batch: Batch) -> None:
        conns = self._by_user.get(user_id)
        if not conns:
            return
        positions, orders, total = batch.summary()
        # A batch of nothing but price ticks is per-tick noise (one per tick at window 0).
        flushed = log.info if batch.loud else log.debug
        flushed(
            "[PortfolioStream] Batch flushed",
            userId=user_id,
            positionUpdates=positions,
            orderUpdates=orders,
            totalEvents=total,
        )
        prepared: dict[frozenset[str], PreparedBatch | None] = {}
        ts = utc_timestamp(self._wall())
        for conn in conns.values():
            writer = conn.writer
            channels = writer.channels
            if not channels or not batch.event_count(channels) or writer.fold_if_busy(batch):
                continue
            if channels not in prepared:
                body = batch.body(channels, ts)
                prepared[channels] = None if body is None else PreparedBatch.of(body)
            ready = prepared[channels]
            if ready is not None:
                writer.send(ready)
        if prepared and batch.oldest_emit is not None and self._metrics is not None:
            self._metrics.observe_latency(self._wall() - batch.oldest_emit)
