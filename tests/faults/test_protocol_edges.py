"""Edges of the protocol and of sessions, tried on a real server with a raw client.

RFC 6455 framing (unmasked client frames close 1002; the documented 64 KiB frame is accepted and
one byte more closes 1009, logged as 1009), sockets whose session ends (logout, expiry) closed
with a reason the client understands, and state-changing requests refused cross-origin.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.clients import OP_TEXT, Closed, RawWebSocket
from tests.faults.harness import PASSWORD, Live, live_service

pytestmark = pytest.mark.slow

MAX_FRAME = 64 * 1024
SESSION_TTL_S = 4.0
HEARTBEAT_INTERVAL_MS = 1000
# The session's end is noticed within a heartbeat sweep or two, then the close handshake.
SESSION_END_BOUND_S = 2 * HEARTBEAT_INTERVAL_MS / 1000 + 2


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp_path: Path = tmp_path_factory.mktemp("edges")
    with live_service(
        tmp_path,
        ["nina"],
        others=["desk"],
        admin=["desk"],
        HEARTBEAT_INTERVAL_MS=HEARTBEAT_INTERVAL_MS,
        HEARTBEAT_TIMEOUT_MS=3 * HEARTBEAT_INTERVAL_MS,
        SESSION_TTL_HOURS=SESSION_TTL_S / 3600,
    ) as running:
        yield running


def connect(live: Live, headers: dict[str, str] | None = None) -> RawWebSocket:
    server = live.server
    ws = RawWebSocket(server.host, server.port, headers or live.sessions["nina"].headers)
    assert ws.status == 101, ws.head
    assert ws.message()["type"] == "connected"
    return ws


def close_code(ws: RawWebSocket, within: float = 5) -> int | None:
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            ws.message(timeout=max(deadline - time.monotonic(), 0.01))
    except Closed as closed:
        return closed.code
    except TimeoutError:
        return -1  # still open
    return -1


def test_an_unmasked_client_frame_closes_1002(live: Live) -> None:
    ws = connect(live)
    try:
        ws.send(OP_TEXT, b'{"type":"ping"}', masked=False)
        assert close_code(ws) == 1002
    finally:
        ws.close()


def test_a_frame_of_exactly_64_kib_is_accepted(live: Live) -> None:
    ws = connect(live)
    try:
        frame = b'{"type":"ping","pad":"' + b"x" * (MAX_FRAME - 24) + b'"}'
        assert len(frame) == MAX_FRAME
        ws.send(OP_TEXT, frame)
        assert ws.message()["type"] == "pong"
    finally:
        ws.close()


def test_a_frame_one_byte_over_64_kib_closes_1009(live: Live) -> None:
    ws = connect(live)
    try:
        ws.send(OP_TEXT, b'{"type":"ping","pad":"' + b"x" * (MAX_FRAME - 23) + b'"}')
        assert close_code(ws) == 1009
    finally:
        ws.close()


def test_a_1009_close_is_logged_as_1009(live: Live) -> None:
    mark = live.server.log_mark()
    ws = connect(live)
    try:
        ws.send(OP_TEXT, b"x" * (MAX_FRAME + 1))
        assert close_code(ws) == 1009
    finally:
        ws.close()
    live.server.wait_log("Client disconnected", since=mark)
    assert "code=1009" in live.server.log_since(mark)


def login_cookie(live: Live) -> dict[str, str]:
    base = live.server.base_url
    request = urllib.request.Request(  # noqa: S310 - loopback http
        f"{base}/api/auth/login",
        data=b'{"username": "nina", "password": "' + PASSWORD.encode() + b'"}',
        headers={"Content-Type": "application/json", "Origin": base},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    return {"Cookie": cookie}


def post(live: Live, path: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(  # noqa: S310 - loopback http
        f"{live.server.base_url}{path}", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return error.code


def test_logging_out_closes_the_sessions_open_socket(live: Live) -> None:
    cookie = login_cookie(live)
    ws = connect(live, cookie)
    try:
        origin = {"Origin": live.server.base_url, "Content-Type": "application/json"}
        assert post(live, "/api/auth/logout", b"{}", {**cookie, **origin}) == 200
        assert close_code(ws, within=SESSION_END_BOUND_S) in (4001, 1008)
    finally:
        ws.close()


def test_an_expired_session_closes_its_open_socket(live: Live) -> None:
    ws = connect(live, login_cookie(live))
    try:
        assert close_code(ws, within=SESSION_TTL_S + SESSION_END_BOUND_S) in (4001, 1008)
    finally:
        ws.close()


def test_a_cross_origin_form_post_cannot_place_a_test_trade(live: Live) -> None:
    before = len(live.broker.orders("nina"))
    status = post(
        live,
        "/api/admin/test-trade",
        b'{"username": "nina", "symbol": "AAPL", "side": "buy", "qty": "1"}',
        {
            **live.sessions["desk"].headers,
            "Content-Type": "text/plain",
            "Origin": "https://evil.example",
            "Sec-Fetch-Site": "cross-site",
        },
    )
    assert status in (400, 403, 415), status
    assert len(live.broker.orders("nina")) == before
