"""One account's ledger kept in step with its stream, its REST truth and market prices.

The consumer calls ``on_connected`` after every (re)connect (with the time the gap began) and
``on_update`` for each new trade update. While a reconciliation pass runs, updates are held back;
the REST fetch is repeated (up to ``MAX_QUIET_PASSES``) until one pass saw no stream activity,
so the snapshot is consistent with the stream; then the snapshot's differences are published,
and the held-back updates are applied after it (the ledger counts a fill the snapshot already
holds only once). Every REST request is bounded by the REST timeout, so a pass holds updates for
a bounded time: if it fails (a timeout, an error), the held updates are applied and updates flow
live while REST is retried with backoff; a slightly stale ledger moved by live fills beats a
frozen one. ``problem`` says why the last attempt failed until one succeeds. An update the
ledger cannot square with what it holds (see ``AccountLedger.take_doubt``) starts a
reconciliation too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from alpaca.trading.client import TradingClient

from alpaca_bridge.dedup import RecentKeys
from alpaca_bridge.ledger import AccountLedger
from alpaca_bridge.payloads import BusEvent
from alpaca_bridge.reconcile import BrokerSnapshot, fetch_snapshot
from alpaca_bridge.rest_client import RestTimeout
from alpaca_bridge.wire_parser import TradeUpdate
from app.backoff import Backoff
from app.bus import BusClosed, EventBus
from app.events import TRADE_EXECUTED, Event
from config.logging import get_logger

log = get_logger()

MAX_QUIET_PASSES = 3
# Orders submitted this long before a gap began are read again: the broker's clock is not ours.
GAP_CLOCK_SKEW_S = 30.0
# Updates held back during one reconciliation; past this the oldest go (the snapshot has them).
MAX_HELD_UPDATES = 10_000
# Unreadable broker records already warned about (each is reported once).
MAX_SKIPPED_REMEMBERED = 1_000

RestProblem = Literal["rest_timeout", "reconcile_failed"]


class AccountSync:
    """Owns the ledger of ``account`` (a username) for ``user_id``; publishes what it implies.
    ``on_settled`` is called after every reconciliation attempt, whether it worked or not; the
    blocking REST calls run on ``executor``."""

    def __init__(
        self,
        *,
        account: str,
        user_id: str,
        client: TradingClient,
        bus: EventBus,
        backoff: Backoff,
        on_symbols_changed: Callable[[], None],
        on_settled: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        executor: Executor | None = None,
        hold_until_reconciled: bool = False,
        gap_started_at: float | None = None,
    ) -> None:
        """``hold_until_reconciled``: until a first reconciliation succeeded, live updates wait
        for it even while REST fails (a takeover in a cluster: the shared state keeps the last
        holder's whole truth rather than get one built from an empty ledger)."""
        self.account = account
        self._hold_until_reconciled = hold_until_reconciled
        self.ledger = AccountLedger(user_id)
        self._client = client
        self._bus = bus
        self._backoff = backoff
        self._on_symbols_changed = on_symbols_changed
        self._on_settled = on_settled
        # Orders updated since then are read again by the first reconciliation: a takeover
        # passes when the previous holder may have stopped.
        self._gap_started_at: float | None = gap_started_at
        self._clock = clock
        self._executor = executor  # None: the loop's default one
        self._held: deque[TradeUpdate] = deque(maxlen=MAX_HELD_UPDATES)
        self._holding = False
        self._activity = False
        self._again = False
        self._task: asyncio.Task[None] | None = None
        self._last_symbols: frozenset[str] = frozenset()
        self._skipped = RecentKeys(MAX_SKIPPED_REMEMBERED)
        self.reconciled_at: float | None = None
        self.problem: RestProblem | None = None  # why the last attempt failed, until one works
        self.last_error: str | None = None

    @property
    def reconciling(self) -> bool:
        return self._task is not None and not self._task.done()

    def on_connected(self, gap_started_at: float | None) -> None:
        """Start a reconciliation, or queue one more after the running one."""
        if gap_started_at is not None:
            self._gap_started_at = min(gap_started_at, self._gap_started_at or gap_started_at)
        self._start_reconciling()

    def _start_reconciling(self) -> None:
        if self.reconciling:
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(
            self._reconcile(), name=f"alpaca-reconcile:{self.account}"
        )

    def on_update(self, update: TradeUpdate) -> None:
        self._activity = True
        if self._holding:
            self._held.append(update)
            return
        self._publish(self.ledger.apply_update(update))
        doubt = self.ledger.take_doubt()
        if doubt is not None:
            # Reordered or missing updates: REST settles what the stream cannot.
            if not self.reconciling:
                log.warning(
                    "[AlpacaStream] Trade update contradicts the ledger; reconciling",
                    account=self.account,
                    reason=doubt,
                )
            self._start_reconciling()

    def on_prices(self, prices: dict[str, Decimal]) -> None:
        for symbol, price in prices.items():
            self._publish(self.ledger.apply_price(symbol, price))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _reconcile(self) -> None:
        self._again = True
        self._holding = True
        try:
            while self._again:
                self._again = False
                snapshot = await self._quiet_snapshot()
                self._report_skipped(snapshot)
                changes = self.ledger.apply_snapshot(
                    snapshot.account,
                    snapshot.positions,
                    snapshot.orders,
                    keep=snapshot.unreadable_symbols,
                )
                if self.reconciled_at is None:
                    # The first truth of this run: it replaces whatever the shared state held
                    # (a cluster's Redis outlives this process; symbols closed meanwhile go).
                    self._replace(changes)
                else:
                    self._publish(changes)
                self.reconciled_at = self._clock()
                self._on_settled()
                log.info(
                    "[AlpacaStream] Reconciled account",
                    account=self.account,
                    positions=len(snapshot.positions),
                    openOrders=len(self.ledger.open_order_ids()),
                    changes=len(changes),
                )
        except Exception:
            log.exception("[AlpacaStream] Reconciliation crashed", account=self.account)
        self._task = None
        self._release_held()

    def _report_skipped(self, snapshot: BrokerSnapshot) -> None:
        """One warning per unreadable record, not one per reconciliation that meets it again."""
        for record in snapshot.skipped:
            if self._skipped.add((record.kind, record.ident, record.reason)):
                log.warning(
                    "[AlpacaStream] Skipped a broker record",
                    account=self.account,
                    record=record.kind,
                    id=record.ident,
                    reason=record.reason,
                )

    def _release_held(self) -> None:
        """Apply held-back updates in arrival order and stop holding."""
        self._holding = False
        held = list(self._held)
        self._held.clear()
        for update in held:
            self.on_update(update)

    async def _quiet_snapshot(self) -> BrokerSnapshot:
        passes = 0
        while True:
            self._activity = False
            believed_open = [*self.ledger.open_order_ids(), *(u.order.id for u in self._held)]
            gap = self._gap_started_at
            since = None if gap is None else datetime.fromtimestamp(gap - GAP_CLOCK_SKEW_S, UTC)
            try:
                fetch = functools.partial(fetch_snapshot, self._client, believed_open, since)
                snapshot = await asyncio.get_running_loop().run_in_executor(self._executor, fetch)
            except Exception as exc:
                # REST down, hung or refusing: try again later (see the module docstring).
                if self.reconciled_at is not None or not self._hold_until_reconciled:
                    self._release_held()
                self.problem = (
                    "rest_timeout" if isinstance(exc, RestTimeout) else "reconcile_failed"
                )
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._on_settled()
                delay = self._backoff.next_delay() + self._backoff.initial_s
                log.error(
                    "[AlpacaStream] Reconciliation failed",
                    account=self.account,
                    error=self.last_error,
                    retryInMs=round(delay * 1000),
                )
                await asyncio.sleep(delay)
                continue
            self.problem = self.last_error = None
            self._backoff.reset()
            self._holding = True
            passes += 1
            if not self._activity or passes >= MAX_QUIET_PASSES:
                if gap == self._gap_started_at:
                    self._gap_started_at = None  # covered (a newer gap waits for its own pass)
                return snapshot

    def rebuild(self) -> None:
        """Write the account's whole state again (the shared state was lost), then check it
        against REST. An account never reconciled has nothing to write: its first pass will."""
        if self.reconciled_at is None:
            return
        self._replace(self.ledger.state_events())
        self.on_connected(None)

    def _replace(self, events: list[BusEvent]) -> None:
        now = time.time()
        try:
            self._bus.replace_state(
                self.ledger.user_id, [Event(e.type, e.payload, now, e.quiet) for e in events]
            )
        except BusClosed:
            return
        self._symbols_may_have_changed()

    def _publish(self, events: list[BusEvent]) -> None:
        symbols = self.ledger.symbols
        for event in events:
            try:
                self._bus.publish(event.type, event.payload, quiet=event.quiet)
            except BusClosed:
                return  # shutting down
            if event.type == TRADE_EXECUTED:
                log.info(
                    "[AlpacaStream] Emitted trade:executed event",
                    tradeId=event.payload["tradeId"],
                    symbol=event.payload["symbol"],
                    _userId=event.payload["userId"],
                    _account=self.account,
                )
        self._symbols_may_have_changed(symbols)

    def _symbols_may_have_changed(self, symbols: frozenset[str] | None = None) -> None:
        symbols = self.ledger.symbols if symbols is None else symbols
        if symbols != self._last_symbols:
            self._last_symbols = symbols
            self._on_symbols_changed()
