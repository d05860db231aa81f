"""The live endpoint under generated input (SPEC §4, bad input): one real connection is sent
messages whose ``type`` is any JSON value but a message name; each is answered
``unknown_type``, the connection stays, and nothing is logged as an error."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings

from tests.app.support import Client, connect, receive, session_for
from tests.app.test_protocol_properties import not_a_message_type
from tests.conftest import ClientFactory

# Reproducible and short: every example is a round trip on the same connection.
LIVE = settings(
    derandomize=True,
    database=None,
    max_examples=60,
    deadline=None,
    # The connection is the fixture's on purpose: one socket takes every example.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@dataclass
class Live:
    client: Client
    ws: aiohttp.ClientWebSocketResponse


@pytest.fixture
async def live(app_client: ClientFactory) -> AsyncIterator[Live]:
    client = await app_client(ws_rate_limit_messages=10_000)
    alice = await session_for(client, "alice")
    ws, _ = await connect(client, alice)
    yield Live(client, ws)
    await ws.close()


@LIVE
@given(not_a_message_type)
@example({})
@example([])
@example([{"type": "ping"}])
async def test_every_non_message_type_is_answered_unknown_type_on_a_live_socket(
    live: Live, kind: Any
) -> None:
    await live.ws.send_str(orjson.dumps({"type": kind}).decode())
    answer = await receive(live.ws)
    assert answer == {**answer, "type": "error", "code": "unknown_type"}, (kind, answer)


async def test_a_live_socket_survives_every_non_string_type_and_logs_no_error(
    live: Live, log_lines: io.StringIO
) -> None:
    for kind in ({}, [], [1, [2]], {"a": {}}, 1.5, None, True):
        await live.ws.send_str(orjson.dumps({"type": kind}).decode())
        answer = await receive(live.ws)
        assert answer == {**answer, "type": "error", "code": "unknown_type"}, (kind, answer)
    await live.ws.send_json({"type": "ping"})
    assert (await receive(live.ws))["type"] == "pong"
    assert " ERROR " not in log_lines.getvalue()
