"""The client side of Alpaca's ``trade_updates`` websocket protocol (research §1.2).

The server says nothing until the client authenticates; the client sends alpaca-py 0.44.0's
frame ``{"action": "authenticate", "data": {"key_id", "secret_key"}}`` (the shape both Alpaca and
the embedded broker accept), then ``listen`` for ``trade_updates``, and expects the
``listening`` ack. Server frames are JSON in TEXT (live) or BINARY (paper) frames; anything that
is not a JSON object (such as a one-byte ``b"\x01"`` heartbeat) is skipped.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr

from alpaca_bridge.wire_parser import decode_frame

# RFC 6455's "abnormal closure": never sent on the wire; aiohttp reports it when the broker's
# connection ended without a close frame.
ABNORMAL_CLOSURE = int(aiohttp.WSCloseCode.ABNORMAL_CLOSURE)

LISTEN_FRAME = '{"action": "listen", "data": {"streams": ["trade_updates"]}}'


class AuthenticationFailed(Exception):
    """The broker answered ``unauthorized``: the credentials are wrong or revoked."""


class SessionEnded(Exception):
    """The connection ended or misbehaved; the message is the reason logged."""


def auth_frame(key_id: SecretStr, secret_key: SecretStr) -> str:
    credentials = {"key_id": key_id.get_secret_value(), "secret_key": secret_key.get_secret_value()}
    return orjson.dumps({"action": "authenticate", "data": credentials}).decode()


async def authenticate_and_listen(
    ws: aiohttp.ClientWebSocketResponse,
    key_id: SecretStr,
    secret_key: SecretStr,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """Authenticate and listen within ``timeout_s`` (else TimeoutError); returns any
    trade_updates frames that raced ahead of the ack. Raises AuthenticationFailed."""
    early: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s):
        await ws.send_str(auth_frame(key_id, secret_key))
        reply = await _next_control(ws, "authorization", early)
        if reply.get("status") != "authorized":
            raise AuthenticationFailed(str(reply.get("message") or reply.get("status")))
        await ws.send_str(LISTEN_FRAME)
        ack = await _next_control(ws, "listening", early)
    if "trade_updates" not in (ack.get("streams") or []):
        raise SessionEnded(f"listen not acknowledged for trade_updates: {ack}")
    return early


async def _next_control(
    ws: aiohttp.ClientWebSocketResponse, stream: str, early: list[dict[str, Any]]
) -> dict[str, Any]:
    while True:
        for item in await receive_objects(ws):
            raw = item.get("data")
            data: dict[str, Any] = raw if isinstance(raw, dict) else {}
            if item.get("stream") == "authorization" and data.get("status") != "authorized":
                raise AuthenticationFailed(str(data.get("message") or data.get("status")))
            if item.get("stream") == stream:
                return data
            if item.get("stream") == "trade_updates":
                early.append(item)


async def receive_objects(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """The JSON objects of the next data frame ([] for a non-JSON one); SessionEnded when the
    connection closes or fails, with the reason."""
    message = await ws.receive()
    if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        return decode_frame(message.data)
    if message.type is aiohttp.WSMsgType.ERROR:
        raise SessionEnded(f"connection error: {ws.exception() or message.data}")
    code = ws.close_code if ws.close_code is not None else message.data
    closing = message.type is aiohttp.WSMsgType.CLOSE and message.extra
    detail = f" {message.extra}" if closing else ""
    if code in (None, ABNORMAL_CLOSURE):
        raise SessionEnded("connection lost")
    raise SessionEnded(f"closed by server (code {code}){detail}")
