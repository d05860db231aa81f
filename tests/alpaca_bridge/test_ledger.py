"""Position, cash and P&L arithmetic of the account ledger (pure, no sockets)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from itertools import count
from typing import Any

import pytest

from alpaca_bridge.ledger import AccountLedger
from alpaca_bridge.payloads import BusEvent
from alpaca_bridge.wire_parser import AccountState, OrderState, PositionState, parse_trade_update
from app.events import validate_payload

NOW = datetime(2026, 1, 4, 10, 30, tzinfo=UTC)
_ids = count(1)


def fill(
    symbol: str,
    side: str,
    qty: str,
    price: str,
    *,
    position_qty: str | None = None,
    order_id: str | None = None,
    filled_qty: str | None = None,
    event: str = "fill",
    at: str = "10:30:00.5",
) -> dict[str, Any]:
    n = next(_ids)
    data: dict[str, Any] = {
        "event": event,
        "execution_id": f"exec-{n}",
        "timestamp": f"2026-01-04T{at}Z",
        "price": price,
        "qty": qty,
        "order": {
            "id": order_id or f"order-{n}",
            "client_order_id": f"cid-{n}",
            "symbol": symbol,
            "side": side,
            "type": "market",
            "qty": qty,
            "filled_qty": filled_qty or qty,
            "filled_avg_price": price,
            "status": "filled" if event == "fill" else "partially_filled",
            "updated_at": f"2026-01-04T10:30:00.{n:06d}Z",
        },
    }
    if position_qty is not None:
        data["position_qty"] = position_qty
    return data


def ledger_with_cash(cash: str = "100000") -> AccountLedger:
    ledger = AccountLedger("user-1", clock=lambda: NOW)
    ledger.apply_snapshot(AccountState(Decimal(cash), Decimal(cash), None), [], [])
    return ledger


def apply(ledger: AccountLedger, data: dict[str, Any]) -> list[BusEvent]:
    events = ledger.apply_update(parse_trade_update(data))
    for event in events:
        validate_payload(event.type, event.payload)
    return events


def of_type(events: list[BusEvent], kind: str) -> list[dict[str, Any]]:
    return [e.payload for e in events if e.type == kind]


def test_a_fill_emits_order_trade_position_and_account_in_that_order() -> None:
    ledger = ledger_with_cash()
    events = apply(ledger, fill("AAPL", "buy", "10", "150.25", position_qty="10"))
    assert [e.type for e in events] == [
        "order:updated",
        "trade:executed",
        "position:updated",
        "account:updated",
    ]
    trade = of_type(events, "trade:executed")[0]
    assert trade["qty"] == "10"
    assert trade["price"] == "150.25"
    assert trade["positionQty"] == "10"
    assert trade["timestamp"] == "2026-01-04T10:30:00.500Z"
    position = of_type(events, "position:updated")[0]
    assert position["avgEntryPrice"] == "150.25"
    assert position["costBasis"] == "1502.50"
    account = of_type(events, "account:updated")[0]
    assert account["cash"] == "98497.50"
    assert account["equity"] == "100000.00"


def test_adding_moves_the_average_to_the_weighted_mean() -> None:
    ledger = ledger_with_cash()
    apply(ledger, fill("AAPL", "buy", "10", "150"))
    events = apply(ledger, fill("AAPL", "buy", "5", "151"))
    position = of_type(events, "position:updated")[0]
    assert position["qty"] == "15"
    assert position["avgEntryPrice"] == "150.3333333"
    assert ledger.positions["AAPL"].cost_basis == Decimal("2255")


def test_a_partial_close_keeps_the_average_and_realises_cash() -> None:
    ledger = ledger_with_cash("1000")
    apply(ledger, fill("MSFT", "buy", "4", "100"))
    events = apply(ledger, fill("MSFT", "sell", "1", "110"))
    position = of_type(events, "position:updated")[0]
    assert (position["qty"], position["avgEntryPrice"], position["costBasis"]) == (
        "3",
        "100",
        "300.00",
    )
    assert position["unrealizedPnl"] == "30.00"
    assert position["unrealizedPnlPercent"] == "10.00"
    assert ledger.cash == Decimal("710")
    assert of_type(events, "account:updated")[0]["equity"] == "1040.00"


def test_closing_to_zero_emits_position_closed() -> None:
    ledger = ledger_with_cash()
    apply(ledger, fill("TSLA", "buy", "2", "200"))
    events = apply(ledger, fill("TSLA", "sell", "2", "210", position_qty="0"))
    assert of_type(events, "position:closed") == [
        {"userId": "user-1", "symbol": "TSLA", "closedAt": "2026-01-04T10:30:00.000Z"}
    ]
    assert not of_type(events, "position:updated")
    assert "TSLA" not in ledger.positions
    assert ledger.cash == Decimal("100020")


def test_selling_through_zero_flips_to_a_short_at_the_fill_price() -> None:
    ledger = ledger_with_cash()
    apply(ledger, fill("NVDA", "buy", "10", "100"))
    events = apply(ledger, fill("NVDA", "sell", "15", "120", position_qty="-5"))
    position = of_type(events, "position:updated")[0]
    assert (position["qty"], position["side"], position["avgEntryPrice"]) == ("-5", "short", "120")
    assert position["marketValue"] == "-600.00"
    assert position["costBasis"] == "-600.00"
    # Short P&L: the price falling is a gain.
    tick = ledger.apply_price("NVDA", Decimal("110"))
    assert tick[0].quiet
    assert tick[0].payload["unrealizedPnl"] == "50.00"
    assert tick[0].payload["unrealizedPnlPercent"] == "8.33"


def test_covering_a_short_and_going_long_again() -> None:
    ledger = ledger_with_cash()
    apply(ledger, fill("AMD", "sell", "3", "50", position_qty="-3"))
    events = apply(ledger, fill("AMD", "buy", "5", "40", position_qty="2"))
    position = of_type(events, "position:updated")[0]
    assert (position["qty"], position["side"], position["avgEntryPrice"]) == ("2", "long", "40")
    assert ledger.cash == Decimal("100000") + 150 - 200


def test_price_ticks_move_unrealized_pnl_and_equity_quietly() -> None:
    ledger = ledger_with_cash("10000")
    apply(ledger, fill("AAPL", "buy", "10", "100"))
    events = ledger.apply_price("AAPL", Decimal("105.5"))
    assert all(e.quiet for e in events)
    position, account = events[0].payload, events[1].payload
    assert position["currentPrice"] == "105.5"
    assert position["unrealizedPnl"] == "55.00"
    assert position["unrealizedPnlPercent"] == "5.50"
    assert account["equity"] == "10055.00"
    assert ledger.apply_price("AAPL", Decimal("105.5")) == []
    assert ledger.apply_price("ZZZ", Decimal("1")) == []


def test_decimal_arithmetic_is_exact() -> None:
    ledger = ledger_with_cash("0.3")
    for _ in range(3):
        apply(ledger, fill("F", "buy", "0.1", "1"))
    assert ledger.positions["F"].qty == Decimal("0.3")
    assert ledger.cash == Decimal("0")


def test_broker_position_qty_wins_over_our_own_sum() -> None:
    ledger = ledger_with_cash()
    apply(ledger, fill("AAPL", "buy", "10", "100"))
    events = apply(ledger, fill("AAPL", "buy", "5", "100", position_qty="20"))
    assert of_type(events, "position:updated")[0]["qty"] == "20"


def test_a_replayed_fill_is_counted_once() -> None:
    ledger = ledger_with_cash()
    data = fill("AAPL", "buy", "10", "100", position_qty="10")
    apply(ledger, data)
    replay = apply(ledger, data)
    assert [e.type for e in replay] == ["order:updated", "trade:executed"]
    assert ledger.positions["AAPL"].qty == 10
    assert ledger.cash == Decimal("99000")


def test_partial_fills_accumulate_and_a_stale_partial_does_not_regress_the_order() -> None:
    ledger = ledger_with_cash()
    first = fill("AAPL", "buy", "4", "100", order_id="o-1", filled_qty="4", event="partial_fill")
    second = fill("AAPL", "buy", "6", "101", order_id="o-1", filled_qty="10")
    apply(ledger, first)
    apply(ledger, second)
    late = apply(ledger, first)
    assert of_type(late, "order:updated") == []
    assert ledger.orders["o-1"].status == "filled"
    assert ledger.positions["AAPL"].qty == 10
    assert ledger.cash == Decimal("100000") - 400 - 606


def _order(order_id: str, status: str, filled: str) -> OrderState:
    return OrderState(
        order_id,
        "cid",
        "AAPL",
        "buy",
        "market",
        Decimal(10),
        Decimal(filled),
        Decimal(100),
        status,
        "t",
        None,
    )


def test_snapshot_emits_only_differences() -> None:
    ledger = ledger_with_cash("1000")
    apply(ledger, fill("AAPL", "buy", "1", "100"))
    apply(ledger, fill("MSFT", "buy", "1", "100"))
    ledger.apply_snapshot(
        AccountState(Decimal(800), Decimal(800), None),
        [
            PositionState("AAPL", Decimal(1), Decimal(100), Decimal(100)),
            PositionState("MSFT", Decimal(1), Decimal(100), Decimal(100)),
        ],
        [],
    )
    events = ledger.apply_snapshot(
        AccountState(Decimal(900), Decimal(1800), None),
        [
            PositionState("AAPL", Decimal(1), Decimal(100), Decimal(100)),
            PositionState("GOOG", Decimal("-2"), Decimal(50), None),
        ],
        [_order("o-9", "filled", "10")],
    )
    kinds = [(e.type, e.payload.get("symbol")) for e in events]
    assert kinds == [
        ("position:updated", "GOOG"),
        ("position:closed", "MSFT"),
        ("order:updated", "AAPL"),
        ("account:updated", None),
    ]
    assert events[2].payload["event"] == "reconciled"
    assert events[3].payload["buyingPower"] == "1800.00"
    for event in events:
        validate_payload(event.type, event.payload)


def test_a_fill_already_in_the_snapshot_is_not_applied_again() -> None:
    ledger = AccountLedger("user-1", clock=lambda: NOW)
    ledger.apply_snapshot(
        AccountState(Decimal(0), Decimal(0), None),
        [PositionState("AAPL", Decimal(10), Decimal(100), Decimal(100))],
        [_order("o-1", "filled", "10")],
    )
    events = apply(ledger, fill("AAPL", "buy", "10", "100", order_id="o-1", position_qty="10"))
    assert [e.type for e in events] == ["order:updated", "trade:executed"]
    assert ledger.positions["AAPL"].qty == 10
    assert ledger.cash == 0


def test_no_account_event_before_the_first_snapshot() -> None:
    ledger = AccountLedger("user-1", clock=lambda: NOW)
    events = apply(ledger, fill("AAPL", "buy", "1", "100"))
    assert "account:updated" not in [e.type for e in events]


@pytest.mark.parametrize("missing", ["qty", "price"])
def test_a_fill_without_qty_or_price_falls_back_to_the_order_totals(missing: str) -> None:
    ledger = ledger_with_cash()
    data = fill("AAPL", "buy", "3", "100")
    del data[missing]
    apply(ledger, data)
    assert ledger.positions["AAPL"].qty == 3
    assert ledger.cash == Decimal("99700")


def test_each_execution_moves_cash_at_its_own_price_not_the_orders_average() -> None:
    ledger = ledger_with_cash("10000")
    first = fill("AAPL", "buy", "4", "100", order_id="o-avg", filled_qty="4", event="partial_fill")
    second = fill("AAPL", "buy", "6", "110", order_id="o-avg", filled_qty="10", position_qty="10")
    second["order"]["filled_avg_price"] = "106"  # the order's running average, not this fill's
    apply(ledger, first)
    events = apply(ledger, second)
    trade = of_type(events, "trade:executed")[0]
    assert (trade["qty"], trade["price"]) == ("6", "110")
    assert ledger.cash == Decimal("10000") - 400 - 660
    assert of_type(events, "position:updated")[0]["avgEntryPrice"] == "106"
    assert of_type(events, "order:updated")[0]["filledAvgPrice"] == "106"


def test_in_order_fills_leave_no_doubt() -> None:
    ledger = ledger_with_cash()
    apply(ledger, fill("AAPL", "buy", "10", "100", position_qty="10", at="10:30:01"))
    apply(ledger, fill("AAPL", "sell", "4", "101", position_qty="6", at="10:30:02"))
    assert ledger.positions["AAPL"].qty == 6
    assert ledger.take_doubt() is None


def test_two_fills_delivered_newest_first_converge_on_the_broker_position() -> None:
    ledger = ledger_with_cash()
    older = fill("AAPL", "buy", "10", "100", position_qty="10", at="10:30:01")
    newer = fill("AAPL", "buy", "5", "110", position_qty="15", at="10:30:02")
    apply(ledger, newer)
    late = apply(ledger, older)
    assert ledger.positions["AAPL"].qty == 15
    assert ledger.cash == Decimal("100000") - 1000 - 550
    assert of_type(late, "trade:executed")[0]["positionQty"] == "10"
    assert of_type(late, "account:updated")[0]["cash"] == "98450.00"
    # The average cannot be known from the stream alone: the ledger asks for REST.
    assert ledger.take_doubt() is not None
    assert ledger.take_doubt() is None


def test_three_fills_in_a_scrambled_order_end_at_the_newest_broker_figure() -> None:
    ledger = ledger_with_cash()
    a = fill("AAPL", "buy", "10", "100", position_qty="10", at="10:30:01")
    b = fill("AAPL", "buy", "5", "100", position_qty="15", at="10:30:02")
    c = fill("AAPL", "sell", "5", "100", position_qty="10", at="10:30:03")
    for data in (a, c, b):
        apply(ledger, data)
    assert ledger.positions["AAPL"].qty == 10
    assert ledger.cash == Decimal("100000") - 1000


def test_an_order_whose_fill_overtakes_its_partial_fill_counts_both() -> None:
    ledger = ledger_with_cash()
    partial = fill(
        "AAPL",
        "buy",
        "4",
        "100",
        order_id="o-2",
        filled_qty="4",
        position_qty="4",
        event="partial_fill",
        at="10:30:01",
    )
    final = fill(
        "AAPL",
        "buy",
        "6",
        "110",
        order_id="o-2",
        filled_qty="10",
        position_qty="10",
        at="10:30:02",
    )
    apply(ledger, final)
    apply(ledger, partial)
    assert ledger.positions["AAPL"].qty == 10
    assert ledger.cash == Decimal("100000") - 400 - 660
    assert ledger.orders["o-2"].status == "filled"


def broker_fills() -> list[dict[str, Any]]:
    """Executions as a broker reports them, in the order they happened: three orders on one
    symbol, two of them filled in parts, every position_qty the running total."""
    plan = [("o-a", "buy", ["3", "2"]), ("o-b", "sell", ["4"]), ("o-c", "buy", ["1", "6", "2"])]
    fills, position, second = [], Decimal(0), 0
    for order_id, side, parts in plan:
        filled = Decimal(0)
        for n, part in enumerate(parts):
            second += 1
            filled += Decimal(part)
            position += Decimal(part) if side == "buy" else -Decimal(part)
            last = n == len(parts) - 1
            fills.append(
                fill(
                    "AAPL",
                    side,
                    part,
                    str(100 + second),
                    position_qty=str(position),
                    order_id=order_id,
                    filled_qty=str(filled),
                    event="fill" if last else "partial_fill",
                    at=f"10:30:{second:02d}",
                )
            )
    return fills


@pytest.mark.parametrize("seed", range(12))
def test_any_delivery_order_with_repeats_ends_at_the_broker_quantity_and_cash(seed: int) -> None:
    fills = broker_fills()
    rng = random.Random(seed)
    delivered = fills + rng.sample(fills, 3)  # some delivered twice
    rng.shuffle(delivered)
    ledger = ledger_with_cash()
    for data in delivered:
        apply(ledger, data)
    assert ledger.positions["AAPL"].qty == Decimal(fills[-1]["position_qty"])
    spent = sum(
        Decimal(f["qty"]) * Decimal(f["price"]) * (1 if f["order"]["side"] == "buy" else -1)
        for f in fills
    )
    assert ledger.cash == Decimal("100000") - spent
    assert {o.status for o in ledger.orders.values()} == {"filled"}
