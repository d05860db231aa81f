"""Connection bookkeeping: the sliding-window rate limit and what an idle connection keeps."""

from __future__ import annotations

from app.connection import Connection, new_connection_id
from app.writer import ConnectionWriter
from tests.app.fake_socket import FakeSocket, writer_context


def connection() -> Connection:
    socket = FakeSocket()
    writer = ConnectionWriter(socket, writer_context(), "conn_1_abc", "user-1")
    return Connection("conn_1_abc", "user-1", socket, writer, started_at=0.0)


async def test_the_51st_message_within_ten_seconds_exceeds_the_limit() -> None:
    conn = connection()
    assert not any(conn.rate_exceeded(i * 0.1, 50, 10.0) for i in range(50))
    assert conn.rate_exceeded(5.0, 50, 10.0)


async def test_the_window_slides_so_a_steady_client_is_never_limited() -> None:
    conn = connection()
    # One message every 0.25 s is 40 per 10 s: under the limit forever.
    assert not any(conn.rate_exceeded(i * 0.25, 50, 10.0) for i in range(400))


async def test_an_idle_connection_drops_its_rate_history() -> None:
    conn = connection()
    conn.rate_exceeded(1.0, 50, 10.0)
    conn.forget_old_messages(5.0, 10.0)
    assert conn.remembered_messages() == 1  # still inside the window
    conn.forget_old_messages(11.0, 10.0)
    assert conn.remembered_messages() == 0


def test_connection_ids_follow_the_runbook_shape() -> None:
    conn_id = new_connection_id(now_ms=1735986600000)
    prefix, stamp, suffix = conn_id.split("_")
    assert (prefix, stamp) == ("conn", "1735986600000")
    assert len(suffix) == 8
