"""Broker faults against a real server: the stream cut mid-fill, frames duplicated or
reordered, REST failing, hanging or carrying a poison record, bad credentials, many accounts.

The measure is a browser-like client's view: every fill placed at the broker shows up in it,
none counts twice (positions equal the broker's exactly), and it converges without a reconnect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.faults.broker import FaultyBroker
from tests.faults.clients import Seen, Watcher
from tests.faults.harness import Live, http_status, live_service, wait_until

pytestmark = pytest.mark.slow

CONVERGE_S = 15.0
REST_TIMEOUT_S = 2
# A test trade waits at most one REST timeout for the order, and may queue behind another call.
HUNG_ORDER_ANSWER_S = 2 * REST_TIMEOUT_S + 1


def shown_matches_broker(seen: Seen, live: Live, username: str) -> bool:
    """The watcher shows exactly the broker's positions and every filled order as filled."""
    broker = live.broker
    positions = {s: Decimal(q) for s, q in broker.positions(username).items()}
    shown = {s: Decimal(p["qty"]) for s, p in seen.positions.items()}
    if shown != positions:
        return False
    filled = {o["id"]: o for o in broker.orders(username) if o["status"] == "filled"}
    return all(
        (order := seen.orders.get(order_id)) is not None
        and order["status"] == "filled"
        and Decimal(order["filledQty"]) == Decimal(row["filled_qty"])
        for order_id, row in filled.items()
    )


def converge(watcher: Watcher, live: Live, username: str, within: float = CONVERGE_S) -> Seen:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        seen = watcher.snapshot()
        if shown_matches_broker(seen, live, username):
            return seen
        time.sleep(0.1)
    seen = watcher.snapshot()
    raise AssertionError(
        f"not converged in {within}s: shown {_qty(seen)} vs broker "
        f"{live.broker.positions(username)}"
    )


def _qty(seen: Seen) -> dict[str, str]:
    return {s: p["qty"] for s, p in seen.positions.items()}


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with live_service(
        tmp_path,
        ["nina"],
        others=["desk"],
        admin=["desk"],
        broker_options={"partial_fills": True},
        BATCH_WINDOW_MS=100,
        BROKER_REST_TIMEOUT_S=REST_TIMEOUT_S,
    ) as running:
        yield running


def test_fills_survive_stream_drops_mid_fill_and_duplicates_none_lost_none_twice(
    live: Live,
) -> None:
    orders = 30
    mark = live.server.log_mark()
    with Watcher(live.server.base_url, live.sessions["nina"].cookie) as watcher:
        for number in range(orders):
            live.broker.wait_listening("nina")
            live.broker.submit("nina", ("AAPL", "MSFT")[number % 2], "buy", 2 + number % 3)
            if number % 3 == 0:
                live.broker.drop_streams()  # mid-fill: a partial went out, the rest did not
            elif number % 3 == 1:
                wait_until(lambda n=number: len(live.broker.fills("nina")) >= n, 5, "a fill")
                live.broker.resend_last_fill("nina")  # the same execution, delivered twice
        live.broker.wait_listening("nina")
        seen = converge(watcher, live, "nina")
    executions = live.broker.fills("nina")
    assert len({e["order"]["id"] for e in executions}) == orders
    assert len([o for o in seen.orders.values() if o["status"] == "filled"]) == orders
    assert seen.seq_contiguous()
    live.server.assert_no_traceback(mark)


def test_fills_lost_in_a_gap_are_recovered_by_reconciliation(live: Live) -> None:
    with Watcher(live.server.base_url, live.sessions["nina"].cookie) as watcher:
        live.broker.hold("nina")
        live.broker.submit("nina", "AAPL", "buy", 4)
        wait_until(lambda: live.broker.held("nina") >= 3, 5, "the fills to be held")
        assert live.broker.lose_held_and_drop("nina") >= 3
        converge(watcher, live, "nina")


def test_fills_delivered_out_of_order_converge_to_the_brokers_position(live: Live) -> None:
    with Watcher(live.server.base_url, live.sessions["nina"].cookie) as watcher:
        live.broker.wait_listening("nina")
        live.broker.hold("nina")
        live.broker.submit("nina", "AAPL", "buy", 10)
        wait_until(lambda: len(live.broker.fills("nina")) >= 2, 5, "the first order's fills")
        live.broker.submit("nina", "AAPL", "buy", 5)
        wait_until(lambda: len(live.broker.fills("nina")) >= 4, 5, "the second order's fills")
        assert live.broker.release("nina", "reversed") >= 6
        converge(watcher, live, "nina", within=5)


POISON = {
    "id": "not-a-uuid",
    "client_order_id": "poison",
    "symbol": "AAPL",
    "side": "buy",
    "type": "market",
    "qty": "1",
    "filled_qty": "0",
    "status": "new",
    "updated_at": "2026-01-04T10:30:00Z",
    "submitted_at": "2026-01-04T10:30:00Z",
}


def test_a_poison_rest_record_is_skipped_and_later_gaps_still_reconcile(live: Live) -> None:
    mark = live.server.log_mark()
    with Watcher(live.server.base_url, live.sessions["nina"].cookie) as watcher:
        poison = live.broker.poison_rest("/v2/orders", POISON, times=2)
        live.broker.drop_streams()  # the reconciliation after it reads the poison record
        wait_until(lambda: poison.hits >= 2, 10, "the poisoned reads")
        live.broker.wait_listening("nina")
        live.broker.hold("nina")
        live.broker.submit("nina", "MSFT", "buy", 3)
        wait_until(lambda: live.broker.held("nina") >= 2, 5, "the fills to be held")
        live.broker.lose_held_and_drop("nina")
        converge(watcher, live, "nina", within=8)
    logged = live.server.log_since(mark)
    assert logged.count(" ERROR ") == 0, logged
    live.server.assert_no_traceback(mark)


def place_test_trade(
    live: Live, qty: str = "1", timeout: float = 30
) -> tuple[int, dict[str, Any], float]:
    """POST an admin test trade for nina; (status, body, seconds it took); status 0 when no
    answer came within ``timeout``."""

    async def post() -> tuple[int, dict[str, Any], float]:
        base = live.server.base_url
        started = time.monotonic()
        try:
            return await answer(base, started)
        except TimeoutError:
            return 0, {}, time.monotonic() - started

    async def answer(base: str, started: float) -> tuple[int, dict[str, Any], float]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{base}/api/admin/test-trade",
                json={"username": "nina", "symbol": "AAPL", "side": "buy", "qty": qty},
                headers={**live.sessions["desk"].headers, "Origin": base},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response,
        ):
            body: dict[str, Any] = await response.json(content_type=None)
            return response.status, body, time.monotonic() - started

    return asyncio.run(post())


def test_a_test_trade_reaches_the_browser(live: Live) -> None:
    with Watcher(live.server.base_url, live.sessions["nina"].cookie) as watcher:
        status, body, _ = place_test_trade(live, "3")
        assert status == 201, body
        converge(watcher, live, "nina")


def test_a_broker_500_on_an_order_is_503_broker_unavailable(live: Live) -> None:
    live.broker.fail_rest(500, method="POST", path="/v2/orders")
    status, body, _ = place_test_trade(live)
    assert (status, body.get("error")) == (503, "broker_unavailable"), body


def test_a_hung_order_call_is_answered_503_or_504_within_its_timeout(live: Live) -> None:
    live.broker.hang_rest(method="POST", path="/v2/orders")
    status, body, took = place_test_trade(live, timeout=HUNG_ORDER_ANSWER_S + 5)
    assert status in (503, 504) and took <= HUNG_ORDER_ANSWER_S, (status, body, took)
    assert body["error"] == "broker_unavailable", body


def test_live_fills_keep_flowing_while_reconciliation_hangs(live: Live) -> None:
    with Watcher(live.server.base_url, live.sessions["nina"].cookie) as watcher:
        live.broker.hang_rest(path="/v2/account")
        live.broker.drop_streams()  # the reconnect's reconciliation hangs on the account
        live.broker.wait_listening("nina")
        order = live.broker.submit("nina", "MSFT", "buy", 2)
        watcher.wait(
            lambda seen: seen.orders.get(order["id"], {}).get("status") == "filled",
            5,
            "the streamed fill",
        )


def test_slow_broker_rest_still_converges(live: Live) -> None:
    with Watcher(live.server.base_url, live.sessions["nina"].cookie) as watcher:
        live.broker.slow_rest(0.5)
        live.broker.hold("nina")
        live.broker.submit("nina", "AAPL", "buy", 2)
        wait_until(lambda: live.broker.held("nina") >= 2, 5, "the fills to be held")
        live.broker.lose_held_and_drop("nina")
        converge(watcher, live, "nina", within=20)


def _reject(broker: FaultyBroker) -> None:
    broker.reject_credentials("mallory")


def test_bad_credentials_are_reported_at_once_and_other_accounts_stream(
    tmp_path: Path,
) -> None:
    with live_service(tmp_path, ["nina", "mallory"], prepare=_reject, ready=False) as live:
        live.server.wait_log("ERROR [AlpacaStream]", timeout=10)
        assert "mallory" in live.server.log()
        with Watcher(live.server.base_url, live.sessions["nina"].cookie) as watcher:
            live.broker.wait_listening("nina")
            live.broker.submit("nina", "AAPL", "buy", 1)
            converge(watcher, live, "nina")
        live.server.assert_no_traceback()


def test_readyz_reports_an_unauthorized_account_without_leaving_rotation(
    tmp_path: Path,
) -> None:
    with live_service(tmp_path, ["nina", "mallory"], prepare=_reject, ready=False) as live:
        live.server.wait_log("ERROR [AlpacaStream]", timeout=10)
        base = live.server.base_url
        wait_until(lambda: http_status(f"{base}/readyz") == 200, 20, "ready for browsers")
        body = _get_json(f"{base}/readyz")
        broker = body["broker"]
        assert broker["ready"] is False, body
        assert broker["accounts"] == {"nina": "ok", "mallory": "unauthorized"}, body


def _get_json(url: str) -> dict[str, Any]:
    async def get() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            body: dict[str, Any] = await response.json(content_type=None)
            return body

    return asyncio.run(get())


MANY = 102


def test_more_than_a_hundred_accounts_all_stream(tmp_path: Path) -> None:
    traders = [f"acct{i:03d}" for i in range(MANY)]
    with live_service(
        tmp_path, traders, ready=False, broker_options={"tick_interval_s": 1}
    ) as live:

        def listening() -> int:
            return sum(live.broker.listening(name) for name in traders)

        wait_until(lambda: listening() == MANY, 20, f"{MANY} listening streams")
        wait_until(lambda: http_status(f"{live.server.base_url}/readyz") == 200, 30, "ready")
