"""Coalescing into per-user batches (pure): latest value per key, channel filtering, merging."""

from __future__ import annotations

from typing import Any

from app.batching import Batch, channel_set
from app.events import Event
from app.protocol import CHANNELS, public_payload
from tests.app.support import account, closed, order, position, trade

ALL = frozenset(CHANNELS)


def event(kind: str, payload: dict[str, Any], at: float = 1000.0) -> Event:
    return Event(kind, payload, at)


def test_one_entry_per_symbol_and_order_newest_wins() -> None:
    batch = Batch()
    for pnl in ("1.00", "2.00", "3.00"):
        batch.add(event("position:updated", position("u", "AAPL", pnl=pnl)))
    batch.add(event("position:updated", position("u", "MSFT", pnl="9.00")))
    for status in ("new", "partially_filled", "filled"):
        batch.add(event("order:updated", order("u", "o-1", status=status)))
    batch.add(event("account:updated", account("u", equity="1")))
    batch.add(event("account:updated", account("u", equity="2")))
    body = batch.body(ALL, "ts")
    assert body is not None
    assert {p["symbol"]: p["unrealizedPnl"] for p in body["positions"]} == {
        "AAPL": "3.00",
        "MSFT": "9.00",
    }
    assert [o["status"] for o in body["orders"]] == ["filled"]
    assert body["account"]["equity"] == "2"
    assert body["eventCount"] == 9 and body["ts"] == "ts"
    assert batch.summary() == (2, 1, 9)


def test_sent_payloads_do_not_carry_the_user_id() -> None:
    batch = Batch()
    batch.add(event("position:updated", position("user-9", "AAPL")))
    body = batch.body(ALL, "ts")
    assert body is not None and "userId" not in body["positions"][0]
    assert public_payload({"userId": "u", "a": 1}) == {"a": 1}


def test_a_close_replaces_an_update_and_a_reopen_clears_the_close() -> None:
    batch = Batch()
    batch.add(event("position:updated", position("u", "AAPL")))
    batch.add(event("position:closed", closed("u", "AAPL")))
    body = batch.body(ALL, "ts")
    assert body is not None and body["positions"] == [] and body["closedPositions"] == ["AAPL"]
    batch.add(event("position:updated", position("u", "AAPL", pnl="7.00")))
    body = batch.body(ALL, "ts")
    assert body is not None and body["closedPositions"] == []
    assert [p["unrealizedPnl"] for p in body["positions"]] == ["7.00"]


def test_body_is_filtered_by_channel_and_counts_only_its_events() -> None:
    batch = Batch()
    batch.add(event("position:updated", position("u", "AAPL")))
    batch.add(event("trade:executed", trade("u")))
    batch.add(event("order:updated", order("u", "o-1")))
    batch.add(event("account:updated", account("u")))
    positions_only = batch.body(frozenset({"positions"}), "ts")
    assert positions_only is not None
    assert set(positions_only) == {"positions", "closedPositions", "eventCount", "ts"}
    assert positions_only["eventCount"] == 2  # the position update and the trade
    orders_only = batch.body(frozenset({"orders"}), "ts")
    assert orders_only is not None and set(orders_only) == {"orders", "eventCount", "ts"}
    assert orders_only["eventCount"] == 1
    account_only = batch.body(frozenset({"account"}), "ts")
    assert account_only is not None and account_only["eventCount"] == 1


def test_nothing_for_a_connection_whose_channels_saw_no_event() -> None:
    batch = Batch()
    batch.add(event("order:updated", order("u", "o-1")))
    assert batch.body(frozenset({"positions", "account"}), "ts") is None
    assert batch.body(frozenset(), "ts") is None
    assert Batch().is_empty() and not batch.is_empty()


def test_merging_keeps_the_latest_state_and_stays_bounded() -> None:
    """A stalled connection's pending state: however many batches, one entry per key."""
    pending = Batch()
    for round_ in range(500):
        batch = Batch()
        for i in range(10):
            batch.add(
                event(
                    "position:updated",
                    position("u", f"S{i}", pnl=f"{round_}.00"),
                    at=1000.0 + round_,
                )
            )
        batch.add(event("order:updated", order("u", f"o-{round_ % 3}", status=str(round_))))
        batch.add(event("account:updated", account("u", equity=str(round_))))
        pending.merge(batch, ALL)
    assert len(pending.positions) == 10 and len(pending.orders) == 3
    assert {p["unrealizedPnl"] for p in pending.positions.values()} == {"499.00"}
    assert pending.account is not None and pending.account["equity"] == "499"
    assert pending.event_count(ALL) == 500 * 12
    assert pending.oldest_emit == 1000.0


def test_merge_only_takes_the_connections_channels() -> None:
    batch = Batch()
    batch.add(event("position:updated", position("u", "AAPL")))
    batch.add(event("order:updated", order("u", "o-1")))
    batch.add(event("account:updated", account("u")))
    pending = Batch()
    pending.merge(batch, frozenset({"orders"}))
    assert pending.positions == {} and pending.account is None
    assert list(pending.orders) == ["o-1"]
    assert pending.event_count(ALL) == 1


def test_merge_applies_closes_over_earlier_updates() -> None:
    pending = Batch()
    first = Batch()
    first.add(event("position:updated", position("u", "AAPL")))
    pending.merge(first, ALL)
    second = Batch()
    second.add(event("position:closed", closed("u", "AAPL")))
    pending.merge(second, ALL)
    assert pending.positions == {} and pending.closed == {"AAPL"}


def test_a_batch_of_price_ticks_only_is_quiet() -> None:
    batch = Batch()
    batch.add(Event("position:updated", position("u", "AAPL"), 1.0, quiet=True))
    assert batch.loud is False
    batch.add(event("order:updated", order("u", "o-1")))
    assert batch.loud is True


def test_channel_sets_are_shared_instances() -> None:
    first = channel_set(frozenset({"positions", "orders"}))
    second = channel_set(frozenset(["orders", "positions"]))
    assert first is second
    assert channel_set(frozenset()) == frozenset()
