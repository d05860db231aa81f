"""A strict stand-in for Alpaca's ``/stream`` endpoint on port 0, for what a real broker won't do
on demand: never answer an auth frame, or push hand-made frames (duplicates, ``b"\\x01"``).

It speaks the protocol as research §6.1 describes it: no welcome frame, both auth shapes, the
``listening`` ack, server frames as BINARY by default, and an abrupt drop on request.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import orjson
from aiohttp import WSMsgType, web

Behaviour = Literal["ok", "reject", "silent"]


class FakeTradingStream:
    def __init__(self, keys: dict[str, Behaviour]) -> None:
        self.keys = keys
        self.auth_attempts: dict[str, int] = {}
        self.auths: asyncio.Queue[str] = asyncio.Queue()  # the key of every auth frame, in order
        self.listening: asyncio.Queue[web.WebSocketResponse] = asyncio.Queue()
        self._sockets: dict[web.WebSocketResponse, web.Request] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/stream", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"ws://127.0.0.1:{port}/stream"
        return self.url

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def push(self, message: dict[str, Any] | bytes | str, *, binary: bool = True) -> None:
        """Send to every listening client: a dict as JSON (binary frame unless told), or raw."""
        for ws in list(self._sockets):
            if isinstance(message, dict):
                data = orjson.dumps(message)
                await (ws.send_bytes(data) if binary else ws.send_str(data.decode()))
            elif isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)

    def drop(self) -> None:
        """Abort every listening client's TCP connection (no close frame)."""
        for request in self._sockets.values():
            if request.transport is not None:
                request.transport.abort()
        self._sockets.clear()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive()
        if first.type is not WSMsgType.TEXT:
            await ws.close()
            return ws
        frame = orjson.loads(first.data)
        key = (frame.get("data") or {}).get("key_id") or frame.get("key") or ""
        self.auth_attempts[key] = self.auth_attempts.get(key, 0) + 1
        self.auths.put_nowait(key)
        behaviour = self.keys.get(key, "reject")
        if behaviour == "silent":
            async for _ in ws:
                pass
            return ws
        if behaviour == "reject":
            await ws.send_bytes(
                orjson.dumps(
                    {
                        "stream": "authorization",
                        "data": {
                            "action": "authenticate",
                            "message": "access key verification failed",
                            "status": "unauthorized",
                        },
                    }
                )
            )
            await ws.close()
            return ws
        await ws.send_bytes(
            orjson.dumps(
                {
                    "stream": "authorization",
                    "data": {"status": "authorized", "action": "authenticate"},
                }
            )
        )
        async for message in ws:
            body = orjson.loads(message.data)
            if body.get("action") == "listen":
                streams = [s for s in body["data"]["streams"] if s == "trade_updates"]
                await ws.send_bytes(
                    orjson.dumps({"stream": "listening", "data": {"streams": streams}})
                )
                self._sockets[ws] = request
                self.listening.put_nowait(ws)
        self._sockets.pop(ws, None)
        return ws
