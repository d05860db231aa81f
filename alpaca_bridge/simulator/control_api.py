"""The simulated broker's HTTP control API, for tests that run it as a process of their own.

Served under ``/_sim/`` on the broker's own port, and only when a control token is configured
(SIM_CONTROL_TOKEN for ``portfolio-stream simulate``): otherwise those paths are plain 404s.
Every request needs ``Authorization: Bearer <token>``. Bodies and answers are JSON; errors are
``{"error": "..."}`` with 400 (bad body), 401 (token) or 404 (unknown account). The REST faults
it installs never apply to these paths. docs/configuration.md lists the endpoints;
``alpaca_bridge.simulator.control_client`` wraps them.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Literal, cast

from aiohttp import web

from alpaca_bridge.simulator.controls import StreamControls
from alpaca_bridge.simulator.faults import CONTROL_PREFIX, RestFault

__all__ = ["CONTROL_PREFIX", "ControlApi"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STREAMS = ("trading", "data")


class BadRequest(Exception):
    """A body or parameter the control API cannot act on (answered 400)."""


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _number(body: dict[str, Any], name: str, default: float | None = None) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BadRequest(f"{name} must be a number >= 0")
    return float(value)


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def _flag(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false")
    return value


def _drop_kind(body: dict[str, Any]) -> tuple[str, int]:
    how = body.get("how", "abort")
    if how not in ("abort", "close"):
        raise BadRequest("how must be abort or close")
    code = body.get("code", 1000)
    if isinstance(code, bool) or not isinstance(code, int) or not 1000 <= code <= 4999:
        raise BadRequest("code must be a websocket close code (1000-4999)")
    return how, code


class ControlApi:
    """Route handlers bound to one broker, guarded by one bearer token."""

    def __init__(self, broker: StreamControls, token: str) -> None:
        if not token:
            raise ValueError("the control API needs a non-empty token")
        self._broker = broker
        self._expected = f"Bearer {token}".encode()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        g, p = self._guarded, CONTROL_PREFIX
        account = p + "/accounts/{api_key}"
        router.add_get(p + "/accounts", g(self.accounts))
        router.add_get(account + "/positions", g(self.positions))
        router.add_get(account + "/fills", g(self.fills))
        router.add_get(account + "/streams/{stream:trading|data}", g(self.stream))
        router.add_post(account + "/streams/trading/drop", g(self.drop_trading))
        router.add_post(account + "/streams/trading/refuse", g(self.refuse_trading))
        router.add_post(account + "/streams/data/drop", g(self.drop_data))
        router.add_post(account + "/streams/data/hold", g(self.hold_data))
        router.add_delete(p + "/streams/history", g(self.clear_history))
        router.add_get(p + "/settings", g(self.settings))
        router.add_put(p + "/settings", g(self.change_settings))
        router.add_get(p + "/rest-faults", g(self.rest_faults))
        router.add_post(p + "/rest-faults", g(self.add_rest_fault))
        router.add_delete(p + "/rest-faults", g(self.clear_rest_faults))
        router.add_get(p + "/order-flow", g(self.order_flow))
        router.add_put(p + "/order-flow", g(self.start_order_flow))
        router.add_delete(p + "/order-flow", g(self.stop_order_flow))

    def _guarded(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                return _error(401, "a valid Authorization: Bearer token is required")
            try:
                return await handler(request)
            except BadRequest as exc:
                return _error(400, str(exc))

        return checked

    def _account(self, request: web.Request) -> str | None:
        api_key = request.match_info["api_key"]
        return api_key if any(a.api_key == api_key for a in self._broker.accounts) else None

    # ---- observation -----------------------------------------------------------------------

    async def accounts(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(
            [{"api_key": a.api_key, "label": a.label} for a in self._broker.accounts]
        )

    async def positions(self, request: web.Request) -> web.StreamResponse:
        if (key := self._account(request)) is None:
            return _error(404, "unknown account")
        return web.json_response(self._broker.positions(key))

    async def fills(self, request: web.Request) -> web.StreamResponse:
        if (key := self._account(request)) is None:
            return _error(404, "unknown account")
        return web.json_response(self._broker.fills(key))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if (key := self._account(request)) is None:
            return _error(404, "unknown account")
        stream = cast(Literal["trading", "data"], request.match_info["stream"])
        broker = self._broker
        if stream == "trading":
            state = {
                "open": broker.trading_connections(key),
                "refused_for_s": broker.trading_refused_for(key),
            }
        else:
            state = {
                "open": broker.data_connections(key),
                "slot_held_for_s": broker.data_slot_held_for(key),
            }
        return web.json_response(
            {
                **state,
                "overlap": broker.stream_overlap(stream, key),
                "connections": broker.stream_history(stream, key),
            }
        )

    async def clear_history(self, _: web.Request) -> web.StreamResponse:
        self._broker.clear_stream_history()
        return web.json_response({})

    # ---- stream faults ---------------------------------------------------------------------

    async def drop_trading(self, request: web.Request) -> web.StreamResponse:
        if (key := self._account(request)) is None:
            return _error(404, "unknown account")
        body = await _body(request)
        how, code = _drop_kind(body)
        refuse_s = _number(body, "refuse_s", 0.0)
        dropped = self._broker.drop_trading_streams(key, how, code, refuse_s)
        return web.json_response({"dropped": dropped})

    async def refuse_trading(self, request: web.Request) -> web.StreamResponse:
        if (key := self._account(request)) is None:
            return _error(404, "unknown account")
        self._broker.refuse_trading_streams(key, _number(await _body(request), "seconds"))
        return web.json_response({"refused_for_s": self._broker.trading_refused_for(key)})

    async def drop_data(self, request: web.Request) -> web.StreamResponse:
        if (key := self._account(request)) is None:
            return _error(404, "unknown account")
        how, code = _drop_kind(await _body(request))
        return web.json_response({"dropped": self._broker.drop_data_streams(key, how, code)})

    async def hold_data(self, request: web.Request) -> web.StreamResponse:
        if (key := self._account(request)) is None:
            return _error(404, "unknown account")
        self._broker.hold_data_slot(key, _number(await _body(request), "seconds"))
        return web.json_response({"slot_held_for_s": self._broker.data_slot_held_for(key)})

    async def settings(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self._broker.stream_settings())

    async def change_settings(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        unknown = set(body) - set(self._broker.stream_settings())
        if unknown:
            raise BadRequest(f"unknown settings: {', '.join(sorted(unknown))}")
        trading, data = (
            _flag(body, "trading_single_connection"),
            _flag(body, "data_single_connection"),
        )
        hold = _number(body, "data_dead_slot_hold_s") if "data_dead_slot_hold_s" in body else None
        if trading is not None:
            self._broker.set_trading_single_connection(trading)
        if data is not None:
            self._broker.set_data_single_connection(data)
        if hold is not None:
            self._broker.set_data_dead_slot_hold(hold)
        return web.json_response(self._broker.stream_settings())

    # ---- REST faults -----------------------------------------------------------------------

    async def rest_faults(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self._broker.rest_faults())

    async def add_rest_fault(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        kind = body.get("kind")
        status = body.get("status", 500)
        if kind not in ("fail", "hang"):
            raise BadRequest("kind must be fail or hang")
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise BadRequest("status must be an HTTP error status (400-599)")
        fault = RestFault(
            kind, _text(body, "api_key"), _text(body, "method"), _text(body, "path"), status
        )
        self._broker.add_rest_fault(fault)
        return web.json_response(fault.to_json(), status=201)

    async def clear_rest_faults(self, _: web.Request) -> web.StreamResponse:
        self._broker.clear_rest_faults()
        return web.json_response(self._broker.rest_faults())

    # ---- timed orders ----------------------------------------------------------------------

    async def order_flow(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self._broker.order_flow())

    async def start_order_flow(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        interval_s = _number(body, "interval_s")
        accounts = body.get("accounts")
        if accounts is not None and (
            not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts)
        ):
            raise BadRequest("accounts must be a list of API keys")
        known = {a.api_key for a in self._broker.accounts}
        if unknown := [a for a in accounts or () if a not in known]:
            return _error(404, f"unknown accounts: {', '.join(unknown)}")
        if interval_s <= 0:
            raise BadRequest("interval_s must be > 0")
        self._broker.start_order_flow(interval_s, accounts)
        return web.json_response(self._broker.order_flow())

    async def stop_order_flow(self, _: web.Request) -> web.StreamResponse:
        self._broker.stop_order_flow()
        return web.json_response(self._broker.order_flow())
