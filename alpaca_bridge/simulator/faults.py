"""REST faults of the simulated broker: errors, hangs and poisoned payloads, on request.

Each rule matches requests by key (``APCA-API-KEY-ID``), method and path prefix; the first
matching rule decides. ``fail`` answers with an Alpaca-shaped error body, ``hang`` holds the
request until the faults are cleared (then serves it, as a broker that recovers from a stall
does: an order held that way is placed late), and ``rewrite`` passes the decoded JSON of the
real answer through a function, to serve records the broker should never send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiohttp import web

from alpaca_bridge.simulator.sockets import StateWatch

# The simulator's own control API (control_api.py) is never subject to these faults.
CONTROL_PREFIX = "/_sim"

Rewrite = Callable[[Any], Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class RestFault:
    kind: Literal["fail", "hang", "rewrite"]
    api_key: str | None = None
    method: str | None = None
    path: str | None = None  # a prefix of the request path, e.g. "/v2/orders"
    status: int = 500
    rewrite: Rewrite | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "api_key": self.api_key,
            "method": self.method,
            "path": self.path,
            "status": self.status,
        }

    def matches(self, request: web.Request) -> bool:
        return (
            request.headers.get("Upgrade", "").lower() != "websocket"  # REST only
            and not request.path.startswith(CONTROL_PREFIX + "/")
            and (self.api_key is None or request.headers.get("APCA-API-KEY-ID") == self.api_key)
            and (self.method is None or request.method == self.method.upper())
            and (self.path is None or request.path.startswith(self.path))
        )


class RestFaults:
    """The active rules, and an aiohttp middleware that applies them."""

    def __init__(self) -> None:
        self._rules: list[RestFault] = []
        self._released = asyncio.Event()
        self.hanging = 0  # requests being held right now
        self.watch = StateWatch()  # notified when a request starts or stops hanging

    def add(self, fault: RestFault) -> None:
        if fault.kind == "hang" and self._released.is_set():
            self._released = asyncio.Event()
        self._rules.append(fault)

    @property
    def rules(self) -> list[RestFault]:
        return list(self._rules)

    def clear(self) -> None:
        """Drop every rule and let every held request carry on."""
        self._rules.clear()
        self._released.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = next((rule for rule in self._rules if rule.matches(request)), None)
        if fault is None:
            return await handler(request)
        if fault.kind == "fail":
            body = {"code": fault.status * 100_000, "message": "internal server error"}
            return web.json_response(body, status=fault.status)
        if fault.kind == "hang":
            await self._hang()
            return await handler(request)
        response = await handler(request)
        raw = response.body if isinstance(response, web.Response) else None
        if not isinstance(raw, bytes) or response.content_type != "application/json":
            return response
        assert fault.rewrite is not None
        body = fault.rewrite(orjson.loads(raw or b"null"))
        return web.json_response(body, status=response.status)

    async def _hang(self) -> None:
        released = self._released
        self.hanging += 1
        self.watch.notify()
        try:
            await released.wait()
        finally:
            self.hanging -= 1
            self.watch.notify()
