"""Runbook-format logs (SPEC §7): every line the runbook shows or greps for, word for word, the
runbook's own grep pipelines run literally, JSON lines, LOG_FILE and its rotation."""

from __future__ import annotations

import io
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import structlog

from app.keys import STORE_KEY, STREAM_KEY
from config.logging import TeeLogger, configure_logging
from tests.app.support import (
    Client,
    Session,
    account,
    closed,
    connect,
    order,
    position,
    receive,
    session_for,
    subscribe,
    trade,
    until,
)
from tests.conftest import ClientFactory, make_settings, publish

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"

# The runbook's lines, as regular expressions over the message (after "<ts> <LEVEL> ").
RUNBOOK_LINES = {
    "startup": r"\[STARTUP\] Portfolio stream initialized on /ws/portfolio",
    # The runbook's three types first, in its order; this service listens to two more.
    "listeners": r"\[STARTUP\] Event bus listeners registered: "
    r"\[trade:executed, position:updated, position:closed(, [a-z]+:[a-z]+)*\]",
    "connected": r"\[PortfolioStream\] Client connected: userId=user-1, "
    r"connectionId=conn_\d{13}_[A-Za-z0-9]+, totalUserConnections=1",
    "subscribed": r'\[PortfolioStream\] Client subscribed to channels: \["positions", "orders"\]',
    "processed": r"\[PortfolioStream\] Processed trade:executed event: userId=user-1, "
    r"symbol=AAPL",
    "broadcast": r"\[PortfolioStream\] Broadcast position update: userId=user-1, symbol=AAPL, "
    r"unrealizedPnl=550\.00",
    "flushed": r"\[PortfolioStream\] Batch flushed: userId=user-1, positionUpdates=2, "
    r"orderUpdates=1, totalEvents=5",
    "emit": r'\[EventBus\] eventBus\.emit\("trade:executed"\): userId=user-1, symbol=AAPL',
    "disconnected": r"\[PortfolioStream\] Client disconnected: userId=user-1, code=1000, "
    r"reason=Client disconnect, duration=\d+s",
}


@pytest.fixture
def configure(tmp_path: Path) -> Iterator[Callable[..., TeeLogger]]:
    """Configure logging for one test; afterwards close its files and restore the default."""
    sinks: list[TeeLogger] = []

    def apply(*extra_streams: IO[str], **overrides: Any) -> TeeLogger:
        sink = configure_logging(make_settings(tmp_path, **overrides), extra_streams)
        sinks.append(sink)
        return sink

    yield apply
    configure_logging(make_settings(tmp_path))
    for sink in sinks:
        sink.close()


async def scenario(app_client: ClientFactory) -> tuple[Client, Session]:
    """A trader's session: connect, subscribe, one event of every type, a batch, disconnect."""
    client = await app_client(batch_window_ms=50)
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions", "orders"])
    publish(client, "trade:executed", trade(alice.user_id, "trade-789", "AAPL"))
    publish(client, "position:updated", position(alice.user_id, "AAPL", pnl="550.00"))
    publish(client, "order:updated", order(alice.user_id, "order-1", status="filled"))
    publish(client, "account:updated", account(alice.user_id))
    publish(client, "position:closed", closed(alice.user_id, "MSFT"))
    batch = await receive(ws)
    assert batch["type"] == "batch"
    await ws.close()
    manager = client.app[STREAM_KEY]
    await until(lambda: manager.active_connections == 0)
    return client, alice


def grep(text: str, tmp_path: Path, pipeline: str) -> str:
    """Run one of the runbook's shell pipelines over ``text`` saved as server.log."""
    (tmp_path / "server.log").write_text(text)
    result = subprocess.run(
        ["bash", "-c", pipeline],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return result.stdout


async def test_every_runbook_line_appears_word_for_word(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    await scenario(app_client)
    lines = log_lines.getvalue().splitlines()
    for name, pattern in RUNBOOK_LINES.items():
        matching = [line for line in lines if re.fullmatch(rf"{TS} INFO {pattern}", line)]
        assert matching, f"no {name} line matching {pattern!r} in:\n" + "\n".join(lines)


async def test_lines_are_timestamped_in_utc_milliseconds_with_a_level(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    await scenario(app_client)
    for line in log_lines.getvalue().splitlines():
        assert re.match(rf"{TS} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S", line), line


async def test_grep_eventbus_emit_cut_yields_the_event_types(
    app_client: ClientFactory, log_lines: io.StringIO, tmp_path: Path
) -> None:
    await scenario(app_client)
    output = grep(
        log_lines.getvalue(),
        tmp_path,
        """grep "eventBus.emit" server.log | cut -d'"' -f2 | sort | uniq -c""",
    )
    counts = {kind: int(count) for count, kind in (line.split() for line in output.splitlines())}
    assert counts == {
        "account:updated": 1,
        "order:updated": 1,
        "position:closed": 1,
        "position:updated": 1,
        "trade:executed": 1,
    }


async def test_the_runbooks_other_greps_find_their_lines(
    app_client: ClientFactory, log_lines: io.StringIO, tmp_path: Path
) -> None:
    await scenario(app_client)
    text = log_lines.getvalue()
    assert "positionUpdates=2" in grep(text, tmp_path, 'grep "Batch flushed" server.log | tail -20')
    listeners = grep(text, tmp_path, 'grep "Event bus listeners registered" server.log')
    assert "[trade:executed, position:updated, position:closed" in listeners
    assert "/ws/portfolio" in grep(text, tmp_path, 'grep "Portfolio stream" server.log')
    assert grep(text, tmp_path, 'grep -E "eventBus.emit|Broadcast" server.log').count("\n") == 6
    connected = grep(text, tmp_path, 'grep "Client connected" server.log | wc -l')
    disconnected = grep(text, tmp_path, 'grep "Client disconnected" server.log | wc -l')
    assert connected.strip() == disconnected.strip() == "1"


async def test_grep_error_portfoliostream_finds_errors_and_only_errors(
    app_client: ClientFactory, log_lines: io.StringIO, tmp_path: Path
) -> None:
    client, alice = await scenario(app_client)
    pipeline = 'grep "ERROR.*PortfolioStream" server.log | wc -l'
    assert grep(log_lines.getvalue(), tmp_path, pipeline).strip() == "0"
    await client.app[STORE_KEY].close()  # the database goes away under a request
    response = await client.get("/api/portfolio", headers=alice.headers)
    assert response.status == 500
    assert (await response.json())["error"] == "internal_error"
    assert grep(log_lines.getvalue(), tmp_path, pipeline).strip() == "1"
    error_line = grep(log_lines.getvalue(), tmp_path, 'grep "ERROR.*PortfolioStream" server.log')
    assert re.match(rf"{TS} ERROR \[PortfolioStream\] ", error_line)
    assert "Traceback" in log_lines.getvalue()  # the traceback follows the line


async def test_price_tick_lines_are_debug(
    app_client: ClientFactory, log_lines: io.StringIO, tmp_path: Path
) -> None:
    client = await app_client(batch_window_ms=0)
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    await subscribe(ws, ["positions"])
    before = len(log_lines.getvalue())
    publish(client, "position:updated", position(alice.user_id, "AAPL", pnl="1.00"), quiet=True)
    assert (await receive(ws))["type"] == "batch"
    assert log_lines.getvalue()[before:] == ""  # nothing at INFO for a price tick
    configure_logging(make_settings(tmp_path, log_level="DEBUG"), extra_streams=[log_lines])
    try:
        publish(client, "position:updated", position(alice.user_id, "AAPL", pnl="2.00"), quiet=True)
        assert (await receive(ws))["type"] == "batch"
    finally:
        configure_logging(make_settings(tmp_path), extra_streams=[log_lines])
    ticks = log_lines.getvalue()[before:].splitlines()
    assert any(
        re.fullmatch(rf'{TS} DEBUG \[EventBus\] eventBus\.emit\("position:updated"\).*', line)
        for line in ticks
    ), ticks
    assert any(" DEBUG [PortfolioStream] Broadcast position update" in line for line in ticks)
    assert all(" DEBUG " in line for line in ticks), ticks
    await ws.close()


async def test_json_lines_parse_and_carry_the_same_fields(
    app_client: ClientFactory, configure: Callable[..., TeeLogger]
) -> None:
    stream = io.StringIO()
    configure(stream, log_format="json")
    await scenario(app_client)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert records
    for record in records:
        assert re.fullmatch(TS, record["timestamp"]) and record["level"] in ("INFO", "DEBUG")
    by_name = {}
    for name, pattern in RUNBOOK_LINES.items():
        found = [r for r in records if re.fullmatch(pattern, r["message"])]
        assert found, f"no JSON record for {name}"
        by_name[name] = found[0]
    connected = by_name["connected"]
    assert connected["userId"] == "user-1" and connected["totalUserConnections"] == 1
    assert connected["connectionId"] in connected["message"]
    assert by_name["subscribed"]["userId"] == "user-1"  # context kept out of the text line
    assert by_name["subscribed"]["connectionId"].startswith("conn_")
    assert by_name["broadcast"]["unrealizedPnl"] == "550.00"
    assert by_name["flushed"]["totalEvents"] == 5
    assert by_name["emit"]["symbol"] == "AAPL"
    assert by_name["disconnected"]["code"] == 1000


async def test_log_file_gets_exactly_the_stdout_lines(
    app_client: ClientFactory, tmp_path: Path, configure: Callable[..., TeeLogger]
) -> None:
    stream = io.StringIO()
    log_file = tmp_path / "logs" / "portfolio-stream.log"
    sink = configure(stream, log_file=log_file)
    await scenario(app_client)
    assert sink.flush()  # LOG_FILE is written by a thread of its own
    assert stream.getvalue()
    assert log_file.read_text() == stream.getvalue()


def test_a_rotated_log_file_is_reopened(
    tmp_path: Path, configure: Callable[..., TeeLogger]
) -> None:
    log_file = tmp_path / "portfolio-stream.log"
    sink = configure(log_file=log_file)
    log = structlog.get_logger()
    log.info("[PortfolioStream] before rotation")
    assert sink.flush()
    log_file.rename(tmp_path / "portfolio-stream.log.1")  # what logrotate does
    log.info("[PortfolioStream] after rotation")
    assert sink.flush()
    assert "after rotation" in log_file.read_text()
    rotated = (tmp_path / "portfolio-stream.log.1").read_text()
    assert "before rotation" in rotated and "after rotation" not in rotated


async def test_secrets_never_reach_the_logs(
    app_client: ClientFactory, log_lines: io.StringIO
) -> None:
    client = await app_client(
        alpaca_api_key="PK-LOGGED-KEY",
        alpaca_secret_key="LOGGED-SECRET",
        metrics_token="LOGGED-TOKEN",
    )
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    await ws.close()
    await client.get("/metrics")
    output = log_lines.getvalue()
    for secret in ("PK-LOGGED-KEY", "LOGGED-SECRET", "LOGGED-TOKEN", alice.token):
        assert secret not in output
