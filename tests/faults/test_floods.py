"""Floods against a real server: messages, protocol pings, login guesses, malformed HTTP.

Each flood must be refused by the limit that documents it (1008 after 50 messages in 10 s,
429 after the login failures allowed), cost nobody else their service (a neighbour's batch gap,
another user's API latency), and leave the log bounded and free of tracebacks.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from tests.faults.clients import Closed, RawWebSocket, Watcher
from tests.faults.floods import MALFORMED, login_burst, ping_flood, send_malformed
from tests.faults.harness import PASSWORD, Live, live_service

pytestmark = pytest.mark.slow

WINDOW_MS = 400
RATE_LIMIT = 50
LOGIN_MAX_FAILURES = 5
ADDRESS_MAX_FAILURES = 10


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp_path: Path = tmp_path_factory.mktemp("floods")
    users = ["flood", "locked", "guessed", "bystander"]
    with live_service(
        tmp_path,
        ["nina"],
        others=users,
        BATCH_WINDOW_MS=WINDOW_MS,
        LOGIN_MAX_FAILURES=LOGIN_MAX_FAILURES,
        LOGIN_MAX_FAILURES_PER_ADDRESS=ADDRESS_MAX_FAILURES,
        LOGIN_LOCKOUT_S=300,
    ) as running:
        for symbol, qty in (("AAPL", 10), ("MSFT", 5)):
            running.broker.submit("nina", symbol, "buy", qty)
        yield running


def flood_messages(live: Live, count: int) -> tuple[int, int | None, str]:
    """Send ``count`` pings as fast as possible; returns (pongs answered, close code, reason)."""
    ws = RawWebSocket(live.server.host, live.server.port, live.sessions["flood"].headers)
    try:
        assert ws.message()["type"] == "connected"
        for _ in range(count):
            ws.send_text('{"type":"ping"}')
        pongs = 0
        while True:
            try:
                message = ws.message(timeout=5)
            except Closed as closed:
                return pongs, closed.code, closed.reason
            pongs += message["type"] == "pong"
    finally:
        ws.close()


def test_a_message_flood_closes_every_flooder_1008_and_spares_the_neighbour(live: Live) -> None:
    mark = live.server.log_mark()
    with Watcher(live.server.base_url, live.sessions["nina"].cookie) as neighbour:
        neighbour.wait(lambda seen: len(seen.batches) >= 2, 10, "the neighbour's batches")
        with ThreadPoolExecutor(max_workers=8) as pool:
            outcomes = list(pool.map(lambda _: flood_messages(live, 400), range(24)))
        neighbour.wait(lambda seen: len(seen.batches) >= 6, 10, "batches after the flood")
        seen = neighbour.stop()
    assert outcomes == [(RATE_LIMIT, 1008, "Rate limit exceeded")] * len(outcomes)
    assert seen.close_code is None and seen.seq_contiguous()
    assert seen.largest_gap_s() <= 2 * WINDOW_MS / 1000, seen.largest_gap_s()
    live.server.assert_no_traceback(mark)


def test_a_ping_frame_flood_is_limited_like_messages(live: Live) -> None:
    mark = live.server.log_mark()
    with ThreadPoolExecutor(max_workers=2) as pool:
        flooder = (live.server.host, live.server.port, live.sessions["flood"].headers)
        results = list(pool.map(lambda _: ping_flood(*flooder, 1.5), range(2)))
    for sent, code in results:
        assert code == 1008, f"{sent} pings in 1.5 s, closed with {code}"
    live.server.assert_no_traceback(mark)


def test_repeated_failed_logins_lock_the_user_out_with_429(live: Live) -> None:
    wrong = [("locked", f"wrong-{i}") for i in range(LOGIN_MAX_FAILURES)]
    failures = Counter[int]()
    for attempt in wrong:  # one after another: the limit as documented
        failures += login_burst(live, [attempt], source="127.0.0.5")
    assert failures == Counter({401: LOGIN_MAX_FAILURES})
    assert login_burst(live, [("locked", PASSWORD)], source="127.0.0.5") == Counter({429: 1})


def test_concurrent_guesses_for_one_user_verify_no_more_than_the_limit(live: Live) -> None:
    attempts = [("guessed", f"guess-{i}") for i in range(14)] + [("guessed", PASSWORD)]
    statuses = login_burst(live, attempts, source="127.0.0.6")
    verified = statuses[401] + statuses[200]
    assert verified <= LOGIN_MAX_FAILURES, statuses
    assert statuses[429] + statuses[503] >= len(attempts) - LOGIN_MAX_FAILURES, statuses


def test_concurrent_guesses_from_one_address_are_throttled(live: Live) -> None:
    attempts = [(f"nobody-{i}", "guess") for i in range(2 * ADDRESS_MAX_FAILURES)]
    statuses = login_burst(live, attempts, source="127.0.0.7")
    assert statuses[401] <= ADDRESS_MAX_FAILURES, statuses


def test_a_login_burst_does_not_stall_another_users_requests(live: Live) -> None:
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        async def run() -> None:
            async with aiohttp.ClientSession() as http:
                while not stop.is_set():
                    started = time.monotonic()
                    async with http.get(
                        f"{live.server.base_url}/api/auth/me",
                        headers=live.sessions["bystander"].headers,
                    ) as response:
                        assert response.status == 200
                    latencies.append(time.monotonic() - started)
                    await asyncio.sleep(0.05)

        asyncio.run(run())

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        # Unknown users from many addresses: no throttle applies, every guess is hashed.
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(
                pool.map(
                    lambda n: login_burst(
                        live, [(f"ghost-{n}-{i}", "x") for i in range(6)], f"127.0.1.{n + 1}"
                    ),
                    range(3),
                )
            )
    finally:
        stop.set()
        prober.join()
    assert latencies and max(latencies) <= 1.0, (
        f"/api/auth/me max {max(latencies):.2f}s, median {statistics.median(latencies):.3f}s"
    )


def test_malformed_http_requests_leave_the_log_bounded(live: Live) -> None:
    server = live.server
    mark = server.log_mark()
    requests = [MALFORMED[i % len(MALFORMED)] for i in range(300)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda r: send_malformed(server.host, server.port, r), requests))
    assert all(a.split(b" ", 2)[1:2] == [b"400"] for a in answers), set(answers)
    grown = server.log_since(mark)
    assert len(grown.splitlines()) <= 30, f"{len(grown.splitlines())} lines logged"
    server.assert_no_traceback(mark)
