"""Positions, cash and P&L for one broker account: pure arithmetic, no I/O, injectable clock.

Every ``apply_*`` method returns the bus events the change implies (SPEC §3 payloads, money and
quantities as exact decimal strings) and the caller publishes them. The ledger is idempotent
against replays: an execution is counted once (by its id, or because a REST snapshot already
holds the order's cumulative fill), and order state never moves backwards (see ``_merge_order``),
so stream events that overlap a REST snapshot can be applied after it without double counting.

Delivery order does not matter for the quantity either: a fill's ``position_qty`` is the
broker's position after that execution, so the newest one (by ``timestamp``) already includes
every older execution, and a fill older than the figure the position holds moves cash only.
What the stream cannot settle (the average entry price after a late fill, a ``position_qty``
that contradicts our own sum) is left as a doubt for ``take_doubt``: the caller then asks REST.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from alpaca_bridge.payloads import (
    BusEvent,
    account_updated,
    money,
    order_updated,
    position_closed,
    position_updated,
    trade_executed,
)
from alpaca_bridge.positions import Position, signed_fill, trade
from alpaca_bridge.wire_parser import AccountState, OrderState, PositionState, TradeUpdate

# Orders kept after they end, so late or replayed updates for them are still recognised.
RECENT_TERMINAL_ORDERS = 500


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _OrderFills:
    """What of one order's fills is already in positions and cash."""

    covered: Decimal = Decimal(0)  # cumulative fill a REST snapshot holds
    seen: Decimal = Decimal(0)  # highest cumulative fill counted from any source
    executions: set[str] = field(default_factory=set)  # executions counted from the stream


class AccountLedger:
    """The portfolio of one account, owned by one user (``user_id`` goes on every event)."""

    def __init__(self, user_id: str, clock: Callable[[], datetime] = _utcnow) -> None:
        self.user_id = user_id
        self._clock = clock
        self._positions: dict[str, Position] = {}
        self._orders: OrderedDict[str, OrderState] = OrderedDict()
        self._fills: dict[str, _OrderFills] = {}
        # Per symbol: broker time of the position_qty the position holds (since the last snapshot).
        self._position_at: dict[str, datetime] = {}
        self._doubt: str | None = None
        self._cash = Decimal(0)
        self._buying_power_offset = Decimal(0)
        self._has_account = False
        self._last_account: tuple[str, str, str] | None = None

    # Read side

    @property
    def cash(self) -> Decimal:
        return self._cash

    @property
    def equity(self) -> Decimal:
        return self._cash + sum((p.market_value for p in self._positions.values()), Decimal(0))

    @property
    def buying_power(self) -> Decimal:
        """Alpaca's figure at the last snapshot, moved by cash since (an estimate in between)."""
        return self._cash + self._buying_power_offset

    @property
    def positions(self) -> Mapping[str, Position]:
        return self._positions

    @property
    def orders(self) -> Mapping[str, OrderState]:
        return self._orders

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(self._positions)

    def open_order_ids(self) -> list[str]:
        return [order.id for order in self._orders.values() if not order.terminal]

    def state_events(self) -> list[BusEvent]:
        """Everything held, as the events that would build it from nothing: each position, each
        order (oldest first) and the account (a shared state that was lost is written again)."""
        moment = self._clock()
        events = [self._position_event(p) for _, p in sorted(self._positions.items())]
        events.extend(
            order_updated(self.user_id, order, "reconciled", moment)
            for order in self._orders.values()
        )
        self._last_account = None
        events.extend(self._account_events())
        return events

    def take_doubt(self) -> str | None:
        """Why the ledger may disagree with the broker since the last snapshot (then forgotten),
        or None: the caller reconciles against REST when there is one."""
        doubt, self._doubt = self._doubt, None
        return doubt

    # Write side

    def apply_update(self, update: TradeUpdate) -> list[BusEvent]:
        """A trade_updates message: ``order:updated``; a fill also ``trade:executed`` and, unless
        a snapshot already holds it, the position and account it moves."""
        moment = update.timestamp or self._clock()
        events: list[BusEvent] = []
        # An update older than what we know would move the UI backwards: no order:updated.
        if self._merge_order(update.order):
            events.append(order_updated(self.user_id, update.order, update.event, moment))
        if update.is_fill:
            events.extend(self._apply_fill(update, moment))
        return events

    def apply_price(self, symbol: str, price: Decimal) -> list[BusEvent]:
        """A market-data tick; events are ``quiet`` (their log lines are DEBUG)."""
        position = self._positions.get(symbol)
        if position is None or position.current_price == price:
            return []
        position.current_price = price
        return [self._position_event(position, quiet=True), *self._account_events(quiet=True)]

    def apply_snapshot(
        self,
        account: AccountState | None,
        positions: Iterable[PositionState],
        orders: Iterable[OrderState],
        keep: Iterable[str] = (),
    ) -> list[BusEvent]:
        """REST truth replaces what we hold; only the differences become events. The symbols in
        ``keep`` (their REST rows were unreadable) and, with no ``account``, cash stay as held."""
        events: list[BusEvent] = []
        seen: set[str] = set(keep)
        for row in positions:
            if row.qty == 0:
                continue
            seen.add(row.symbol)
            old = self._positions.get(row.symbol)
            price = row.current_price or (old.current_price if old else None)
            new = Position(row.symbol, row.qty, row.avg_entry_price, price)
            if old is None or old.as_tuple() != new.as_tuple():
                self._positions[row.symbol] = new
                events.append(self._position_event(new))
        for symbol in [s for s in self._positions if s not in seen]:
            del self._positions[symbol]
            events.append(self._closed_event(symbol))
        for order in orders:
            before = self._orders.get(order.id)
            fills = self._fills.setdefault(order.id, _OrderFills())
            fills.covered = max(fills.covered, order.filled_qty)
            fills.seen = max(fills.seen, order.filled_qty)
            changed = before is None or (before.status, before.filled_qty) != (
                order.status,
                order.filled_qty,
            )
            if self._merge_order(order) and changed:
                events.append(order_updated(self.user_id, order, "reconciled", self._clock()))
        if account is not None:
            self._cash = account.cash
            self._buying_power_offset = account.buying_power - account.cash
            self._has_account = True
        self._position_at.clear()  # fills from here on are newer than this truth
        self._doubt = None
        events.extend(self._account_events())
        return events

    # Internals

    def _merge_order(self, order: OrderState) -> bool:
        """Keep ``order`` unless it is older than ours (less filled, or live after terminal)."""
        known = self._orders.get(order.id)
        if known is not None and (
            order.filled_qty < known.filled_qty or (known.terminal and not order.terminal)
        ):
            return False
        self._orders[order.id] = order
        self._orders.move_to_end(order.id)
        self._evict_orders()
        return True

    def _evict_orders(self) -> None:
        terminal = [oid for oid, o in self._orders.items() if o.terminal]
        for oid in terminal[: max(0, len(terminal) - RECENT_TERMINAL_ORDERS)]:
            del self._orders[oid]
            self._fills.pop(oid, None)

    def _apply_fill(self, update: TradeUpdate, moment: datetime) -> list[BusEvent]:
        order = update.order
        fills = self._fills.setdefault(order.id, _OrderFills())
        fill = signed_fill(update, fills.seen)
        if fill is None:
            return []
        signed_qty, price = fill
        symbol, broker_qty, at = order.symbol, update.position_qty, update.timestamp
        position = self._positions.get(symbol)
        held = position.qty if position is not None else Decimal(0)
        key = update.execution_id or f"cumulative:{order.filled_qty}"
        if key in fills.executions or order.filled_qty <= fills.covered:
            return [self._trade_event(update, signed_qty, price, held, moment)]  # counted already
        newest = self._position_at.get(symbol)
        fills.executions.add(key)
        fills.seen = max(fills.seen, order.filled_qty)
        if broker_qty is not None and at is not None:
            self._position_at[symbol] = at if newest is None else max(at, newest)
        if newest is None and broker_qty is not None and held == broker_qty:
            # The first fill since a snapshot, and the position has it: the snapshot read it.
            self._doubt = f"{symbol}: position already at {broker_qty} before a fill"
            return [self._trade_event(update, signed_qty, price, held, moment)]
        self._cash -= signed_qty * price
        if broker_qty is not None and at is not None and newest is not None and at < newest:
            # A newer position_qty already counts this execution; only its cash was missing.
            self._doubt = f"{symbol}: a fill arrived after a newer one"
            trade_event = self._trade_event(update, signed_qty, price, held, moment)
            return [trade_event, *self._account_events()]
        position = trade(position, symbol, signed_qty, price, broker_qty)
        if broker_qty is not None and broker_qty != held + signed_qty:
            self._doubt = f"{symbol}: position_qty {broker_qty}, expected {held + signed_qty}"
        after = position.qty if position is not None else Decimal(0)
        events = [self._trade_event(update, signed_qty, price, after, moment)]
        if position is None:
            self._positions.pop(symbol, None)
            events.append(self._closed_event(symbol))
        else:
            self._positions[symbol] = position
            events.append(self._position_event(position))
        events.extend(self._account_events())
        return events

    def _trade_event(
        self,
        update: TradeUpdate,
        signed_qty: Decimal,
        price: Decimal,
        held: Decimal,
        moment: datetime,
    ) -> BusEvent:
        after = update.position_qty if update.position_qty is not None else held
        return trade_executed(self.user_id, update, abs(signed_qty), price, after, moment)

    def _position_event(self, position: Position, quiet: bool = False) -> BusEvent:
        return position_updated(self.user_id, position, self._clock(), quiet)

    def _closed_event(self, symbol: str) -> BusEvent:
        return position_closed(self.user_id, symbol, self._clock())

    def _account_events(self, quiet: bool = False) -> list[BusEvent]:
        if not self._has_account:
            return []  # no cash figure yet: an equity of Σ market value would be wrong
        figures = (money(self.equity), money(self._cash), money(self.buying_power))
        if figures == self._last_account:
            return []
        self._last_account = figures
        return [account_updated(self.user_id, figures, self._clock(), quiet)]
