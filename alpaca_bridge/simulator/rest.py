"""The Trading API's REST surface under ``/v2``, as alpaca-py's ``TradingClient`` calls it.

Requests carry ``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY``; errors are Alpaca's JSON
``{"code", "message"}`` bodies. Every view is computed from the same books the stream events
come from, so REST and stream always agree.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from alpaca_bridge.simulator.desk import OrderDesk
from alpaca_bridge.simulator.ledger import AccountBook
from alpaca_bridge.simulator.orders import SimApiError, SimOrder, invalid, parse_order_request
from alpaca_bridge.simulator.wire import (
    Json,
    account_json,
    activity_id,
    clock_json,
    fill_activity_json,
    order_json,
    position_json,
)

Authenticate = Callable[[str, str], bool]
Handler = Callable[[web.Request, AccountBook], Awaitable[web.StreamResponse]]
_INSTANT = re.compile(
    r"^(\d{4}-\d\d-\d\d)(?:[T ](\d\d:\d\d(?::\d\d)?)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?)?$"
)
UNAUTHORIZED = {"code": 40110000, "message": "request is not authorized"}
BAD_BODY = {"code": 40010000, "message": "request body format is invalid"}


def place_order(desk: OrderDesk, api_key: str, body: Mapping[str, Any]) -> Json:
    """``POST /v2/orders`` minus HTTP: validate, accept, return the order; raises SimApiError."""
    return order_json(desk.submit(api_key, parse_order_request(body)))


def parse_instant(text: str, name: str) -> int:
    """Epoch ns from RFC 3339 or a plain date (UTC when no offset), as Alpaca's filters take."""
    match = _INSTANT.match(text.strip())
    if match is None:
        raise invalid(f"{name} is invalid")
    day, clock, fraction, offset = match.groups()
    stamp = f"{day}T{clock or '00:00:00'}" + (f".{fraction[:6]}" if fraction else "")
    moment = datetime.fromisoformat(stamp + ("+00:00" if offset in (None, "Z") else offset))
    extra_ns = int(fraction[6:9].ljust(3, "0")) if fraction and len(fraction) > 6 else 0
    return (
        int(moment.astimezone(UTC).timestamp()) * 1_000_000_000
        + moment.microsecond * 1000
        + extra_ns
    )


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    value = query.get(name, allowed[0])
    if value not in allowed:
        raise invalid(f"{name} must be one of {', '.join(allowed)}")
    return value


def _count(query: Mapping[str, str], name: str, default: int, most: int) -> int:
    try:
        value = int(query.get(name, default))
    except ValueError:
        raise invalid(f"{name} must be an integer") from None
    if not 1 <= value <= most:
        raise invalid(f"{name} must be between 1 and {most}")
    return value


def _window(query: Mapping[str, str]) -> tuple[int, int]:
    after = parse_instant(query["after"], "after") if "after" in query else -1
    until = parse_instant(query["until"], "until") if "until" in query else 2**63
    return after, until


@web.middleware
async def json_errors(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Alpaca answers every failure with a JSON ``{"code", "message"}`` body."""
    try:
        return await handler(request)
    except SimApiError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return web.json_response(
            {"code": exc.status * 100_000, "message": exc.reason.lower()}, status=exc.status
        )


class TradingRest:
    """Route handlers bound to one order desk."""

    def __init__(self, desk: OrderDesk, authenticate: Authenticate) -> None:
        self._desk = desk
        self._authenticate = authenticate

    def add_routes(self, router: web.UrlDispatcher) -> None:
        a = self._authed
        router.add_get("/v2/account", a(self.account))
        router.add_get("/v2/account/activities", a(self.activities))
        router.add_get("/v2/account/activities/{activity_type}", a(self.activities))
        router.add_get("/v2/positions", a(self.positions))
        router.add_get("/v2/positions/{symbol}", a(self.position))
        router.add_delete("/v2/positions/{symbol}", a(self.close_position))
        router.add_get("/v2/orders", a(self.orders))
        router.add_post("/v2/orders", a(self.submit))
        router.add_get("/v2/orders:by_client_order_id", a(self.order_by_client_id))
        router.add_get("/v2/orders/{order_id}", a(self.order))
        router.add_delete("/v2/orders/{order_id}", a(self.cancel))
        router.add_get("/v2/clock", a(self.clock))

    def _authed(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def checked(request: web.Request) -> web.StreamResponse:
            key = request.headers.get("APCA-API-KEY-ID", "")
            secret = request.headers.get("APCA-API-SECRET-KEY", "")
            if not self._authenticate(key, secret):
                return web.json_response(UNAUTHORIZED, status=401)
            return await handler(request, self._desk.book(key))

        return checked

    def _price(self, symbol: str) -> Decimal:
        return self._desk.market.price(symbol)

    def _position(self, book: AccountBook, symbol: str) -> Json | None:
        holding = book.holdings.get(symbol)
        listing = self._desk.market.listing(symbol)
        if holding is None or listing is None:
            return None
        return position_json(holding, listing, self._price(symbol), book.qty_available(symbol))

    async def account(self, request: web.Request, book: AccountBook) -> web.StreamResponse:
        return web.json_response(account_json(book, self._price))

    async def positions(self, request: web.Request, book: AccountBook) -> web.StreamResponse:
        return web.json_response([self._position(book, s) for s in sorted(book.holdings)])

    async def position(self, request: web.Request, book: AccountBook) -> web.StreamResponse:
        found = self._position(book, request.match_info["symbol"].upper())
        if found is None:
            return web.json_response(
                {"code": 40410000, "message": "position does not exist"}, status=404
            )
        return web.json_response(found)

    async def close_position(self, request: web.Request, book: AccountBook) -> web.StreamResponse:
        holding = book.holdings.get(request.match_info["symbol"].upper())
        if holding is None:
            return web.json_response(
                {"code": 40410000, "message": "position does not exist"}, status=404
            )
        body = {
            "symbol": holding.symbol,
            "qty": str(abs(holding.qty)),
            "type": "market",
            "side": "sell" if holding.qty > 0 else "buy",
            "time_in_force": "day",
        }
        return web.json_response(place_order(self._desk, book.account.api_key, body))

    async def orders(self, request: web.Request, book: AccountBook) -> web.StreamResponse:
        query = request.query
        status = _choice(query, "status", ("open", "closed", "all"))
        limit = _count(query, "limit", 50, 500)
        direction = _choice(query, "direction", ("desc", "asc"))
        after, until = _window(query)
        symbols = {s.strip().upper() for s in query.get("symbols", "").split(",") if s.strip()}
        side = query.get("side")

        def selected(order: SimOrder) -> bool:
            return (
                (status == "all" or order.is_open == (status == "open"))
                and after < order.submitted_ns < until
                and (not symbols or order.symbol in symbols)
                and (side is None or order.side == side)
            )

        chosen = sorted(
            (o for o in book.orders.values() if selected(o)),
            key=lambda o: o.submitted_ns,
            reverse=direction == "desc",
        )
        return web.json_response([order_json(o) for o in chosen[:limit]])

    async def submit(self, request: web.Request, book: AccountBook) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response(BAD_BODY, status=400)
        return web.json_response(place_order(self._desk, book.account.api_key, body))

    async def order(self, request: web.Request, book: AccountBook) -> web.StreamResponse:
        order = book.orders.get(request.match_info["order_id"])
        if order is None:
            raise SimApiError(404, 40410000, "order not found")
        return web.json_response(order_json(order))

    async def order_by_client_id(
        self, request: web.Request, book: AccountBook
    ) -> web.StreamResponse:
        order = book.find_client_order(request.query.get("client_order_id", ""))
        if order is None:
            raise SimApiError(404, 40410000, "order not found")
        return web.json_response(order_json(order))

    async def cancel(self, request: web.Request, book: AccountBook) -> web.StreamResponse:
        self._desk.cancel(book.account.api_key, request.match_info["order_id"])
        return web.Response(status=204)

    async def clock(self, request: web.Request, book: AccountBook) -> web.StreamResponse:
        return web.json_response(clock_json(datetime.now(UTC)))

    async def activities(self, request: web.Request, book: AccountBook) -> web.StreamResponse:
        query = request.query
        kinds = request.match_info.get("activity_type") or query.get("activity_types", "FILL")
        if "FILL" not in {k.strip().upper() for k in kinds.split(",")}:
            return web.json_response([])  # the simulator has no dividends, transfers, fees...
        direction = _choice(query, "direction", ("desc", "asc"))
        page_size = _count(query, "page_size", 100, 100)
        after, until = _window(query)
        if "date" in query:
            day = parse_instant(query["date"], "date")
            after, until = day - 1, day + 86_400 * 1_000_000_000
        rows = sorted(
            (e for e in book.executions if after < e.at_ns < until),
            key=lambda e: (e.at_ns, e.id),
            reverse=direction == "desc",
        )
        token = query.get("page_token")
        if token:
            ids = [activity_id(e.at_ns, e.id) for e in rows]
            rows = rows[ids.index(token) + 1 :] if token in ids else []
        return web.json_response([fill_activity_json(e) for e in rows[:page_size]])
