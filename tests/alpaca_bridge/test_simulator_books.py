"""The simulated broker's pure parts: market walk, order validation, account books, wire shapes."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from alpaca_bridge.simulator import SimAccount, SimApiError
from alpaca_bridge.simulator.demo import random_order
from alpaca_bridge.simulator.ledger import AccountBook, Holding
from alpaca_bridge.simulator.market import MarketEngine
from alpaca_bridge.simulator.orders import SimOrder, parse_order_request
from alpaca_bridge.simulator.rest import parse_instant
from alpaca_bridge.simulator.wire import activity_id, number, position_json, rfc3339

D = Decimal


def order_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "symbol": "AAPL",
        "side": "buy",
        "qty": "10",
        "type": "market",
        "time_in_force": "day",
    }
    body.update(overrides)
    return body


def new_book(cash: str = "10000", *, shorting: bool = False) -> AccountBook:
    return AccountBook(SimAccount("K", "S", "alice"), D(cash), opened_ns=1, shorting=shorting)


def fill(book: AccountBook, side: str, qty: str, price: str, symbol: str = "AAPL") -> SimOrder:
    request = parse_order_request(order_body(symbol=symbol, side=side, qty=qty))
    order = SimOrder(request, "asset", submitted_ns=10, position_intent=f"{side}_to_open")
    book.place(order)
    book.execute(order, request.qty, D(price), at_ns=20)
    return order


def test_market_walk_is_deterministic_for_a_seed_and_stays_in_cents() -> None:
    first, second = MarketEngine(seed=42), MarketEngine(seed=42)
    for _ in range(500):
        assert first.step() == second.step()
    for symbol in first.symbols:
        price = first.price(symbol)
        assert price > 0 and price == price.quantize(D("0.01"))
        start = first.listing(symbol).start_price  # type: ignore[union-attr]
        assert start / 2 < price < start * 2, "the walk drifted implausibly far"


def test_set_price_lists_unknown_symbols_and_returns_a_print() -> None:
    market = MarketEngine(["AAPL"], seed=1)
    tick = market.set_price("ZZZZ", D("12.345"))
    assert (tick.symbol, tick.price) == ("ZZZZ", D("12.34"))
    assert market.symbols == ["AAPL", "ZZZZ"] and market.price("ZZZZ") == D("12.34")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"qty": "0"}, "qty must be > 0"),
        ({"qty": -1}, "qty must be > 0"),
        ({"qty": None}, "qty is required"),
        ({"qty": "ten"}, "qty is invalid"),
        ({"side": "short"}, "invalid side"),
        ({"type": "stop"}, "invalid order type"),
        ({"time_in_force": None}, "invalid time_in_force"),
        ({"type": "limit"}, "limit_price must be > 0"),
        ({"symbol": ""}, "symbol is required"),
    ],
)
def test_invalid_order_requests_are_422(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SimApiError) as caught:
        parse_order_request(order_body(**overrides))
    assert caught.value.status == 422 and caught.value.code == 40010001
    assert message in caught.value.message


def test_order_request_keeps_exact_decimals_from_json_numbers() -> None:
    request = parse_order_request(order_body(qty=1.1, type="limit", limit_price=100.1))
    assert request.qty == D("1.1") and request.limit_price == D("100.1")
    assert parse_order_request(order_body(qty="10.0")).qty.as_tuple().exponent == 0


def test_fills_average_in_reduce_at_cost_and_flip() -> None:
    holding = Holding("AAPL", "asset", D(0), D(0))
    holding.apply(D(10), D(100))
    holding.apply(D(5), D(106))
    assert (holding.qty, holding.avg_entry_price) == (D(15), D(102))
    holding.apply(D(-5), D(120))
    assert (holding.qty, holding.avg_entry_price) == (D(10), D(102)), "selling keeps the basis"
    holding.apply(D(-14), D(90))
    assert (holding.qty, holding.avg_entry_price) == (D(-4), D(90)), "the flip opens at the fill"


def test_execution_moves_cash_position_and_order_together() -> None:
    book = new_book()
    order = fill(book, "buy", "10", "150.25")
    assert book.cash == D("8497.50")
    assert book.holdings["AAPL"].qty == D(10)
    assert (order.status, order.filled_qty, order.filled_avg_price) == (
        "filled",
        D(10),
        D("150.25"),
    )
    execution = book.executions[-1]
    assert (execution.event, execution.position_qty, execution.leaves_qty) == ("fill", D(10), 0)
    fill(book, "sell", "10", "160")
    assert "AAPL" not in book.holdings and book.cash == D("10097.50")


def test_buying_power_and_held_shares_limit_new_orders() -> None:
    book = new_book("1000")
    with pytest.raises(SimApiError, match="insufficient buying power") as caught:
        book.check(parse_order_request(order_body(qty="10")), lambda _: D(150))
    assert (caught.value.status, caught.value.code) == (403, 40310000)
    with pytest.raises(SimApiError, match=r"requested: 1, available: 0"):
        book.check(parse_order_request(order_body(side="sell", qty="1")), lambda _: D(150))
    fill(book, "buy", "5", "100")
    book.check(parse_order_request(order_body(side="sell", qty="5")), lambda _: D(150))


def test_open_buy_orders_reserve_buying_power() -> None:
    book = new_book("1000")
    request = parse_order_request(order_body(type="limit", limit_price="90", qty="10"))
    book.place(SimOrder(request, "asset", submitted_ns=1, position_intent="buy_to_open"))
    assert book.valuation(lambda _: D(95)).buying_power == D(100)


def test_short_positions_value_negative_when_shorting_is_enabled() -> None:
    book = new_book("10000", shorting=True)
    book.check(parse_order_request(order_body(side="sell", qty="10")), lambda _: D(100))
    fill(book, "sell", "10", "100")
    values = book.valuation(lambda _: D(90))
    assert (values.cash, values.short_market_value, values.equity) == (D(11000), D(-900), D(10100))
    market = MarketEngine(["AAPL"])
    row = position_json(
        book.holdings["AAPL"],
        market.listing("AAPL"),
        D(90),  # type: ignore[arg-type]
        book.qty_available("AAPL"),
    )
    assert (row["side"], row["qty"], row["market_value"], row["unrealized_pl"]) == (
        "short",
        "-10",
        "-900.00",
        "100.00",
    )


def test_random_demo_orders_never_oversell_or_overspend() -> None:
    rng, market, book = random.Random(3), MarketEngine(seed=3), new_book("20000")
    for _ in range(400):
        body = random_order(book, market, rng)
        if body is None:
            continue
        request = parse_order_request(body)
        book.check(request, market.price)  # raises if the demo asked for something impossible
        order = SimOrder(request, "asset", submitted_ns=1, position_intent="")
        book.place(order)
        book.execute(order, request.qty, market.price(request.symbol), at_ns=2)
        market.step()
        assert book.cash >= 0 and all(h.qty > 0 for h in book.holdings.values())
    assert {e.side for e in book.executions} == {"buy", "sell"}


def test_wire_numbers_and_times_look_like_alpacas() -> None:
    assert rfc3339(1_767_711_600_123_456_789) == "2026-01-06T15:00:00.123456789Z"
    assert activity_id(1_767_711_600_123_456_789, "e") == "20260106150000123::e"
    assert number(D("150.3333333333"), 7) == "150.3333333"
    assert number(D("150.10"), 7) == "150.1" and number(D("1E+1")) == "10"
    assert parse_instant("2026-01-06T15:00:00.123456789Z", "after") == 1_767_711_600_123_456_789
    assert parse_instant("2026-01-06", "date") == 1_767_657_600 * 10**9
    assert parse_instant("2026-01-06T10:00:00-05:00", "after") == 1_767_711_600 * 10**9
