"""Fault injection and observation of the simulated broker, for tests and demos: its
websockets, REST faults, timed orders, and the truth (positions, fills, stream connections) a
test checks a node against. The HTTP control API (control_api.py) serves the same methods.

Mixed into :class:`~alpaca_bridge.simulator.broker.SimulatedBroker`. The ``wait_*`` methods
block until a condition holds and have no timeout of their own: wrap them in
``asyncio.timeout``/``asyncio.wait_for``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import orjson

from alpaca_bridge.simulator.data_ws import MarketDataHub
from alpaca_bridge.simulator.demo import DemoTrader
from alpaca_bridge.simulator.desk import OrderDesk
from alpaca_bridge.simulator.faults import RestFault, RestFaults, Rewrite
from alpaca_bridge.simulator.ledger import SimAccount
from alpaca_bridge.simulator.market import MarketEngine
from alpaca_bridge.simulator.trading_ws import AuthBehaviour, Reorder, TradingStreamHub
from alpaca_bridge.simulator.wire import Json, fill_json, position_json


class StreamControls:
    """Ways to misbehave like Alpaca does, and to see who is connected and what was filled."""

    _accounts: dict[str, SimAccount]
    _market: MarketEngine
    _trading: TradingStreamHub
    _data: MarketDataHub
    _desk: OrderDesk
    _demo: DemoTrader
    _faults: RestFaults

    # ---- the truth a test compares against ---------------------------------------------------

    @property
    def accounts(self) -> list[SimAccount]:
        return list(self._accounts.values())

    def positions(self, api_key: str) -> list[Json]:
        book = self._desk.book(api_key)
        return [
            position_json(h, listing, self._market.price(s), book.qty_available(s))
            for s, h in sorted(book.holdings.items())
            if (listing := self._market.listing(s)) is not None
        ]

    def fills(self, api_key: str) -> list[Json]:
        """Every execution (fill or partial fill) of the account, oldest first."""
        return [fill_json(e) for e in self._desk.book(api_key).executions]

    # ---- timed orders ------------------------------------------------------------------------

    def start_order_flow(self, interval_s: float, api_keys: Sequence[str] | None = None) -> None:
        """Place a random market order on each of ``api_keys`` (None: every account) every
        ``interval_s``, replacing the random orders' rate and accounts until changed again;
        each order fills a moment later, so fills keep flowing."""
        unknown = [key for key in api_keys or () if key not in self._accounts]
        if unknown:
            raise KeyError(f"unknown accounts: {', '.join(unknown)}")
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._demo.configure(interval_s, api_keys)

    def stop_order_flow(self) -> None:
        """No more timed orders (orders already placed still fill)."""
        self._demo.configure(0)

    def order_flow(self) -> Json:
        """The timed orders' state: ``interval_s`` (0: none), ``accounts`` (None: all)."""
        accounts = self._demo.accounts
        return {
            "interval_s": self._demo.interval_s,
            "accounts": None if accounts is None else sorted(accounts),
            "paused": self._demo.paused,
        }

    # ---- faults --------------------------------------------------------------------------------

    def drop_trading_streams(
        self,
        api_key: str | None = None,
        how: str = "abort",
        code: int = 1000,
        hold_s: float = 0.0,
    ) -> int:
        """Cut trade_updates connections (all keys when None); returns how many were cut.

        ``how``: ``abort`` (TCP reset, no close frame) or ``close`` (a close frame with
        ``code``, e.g. 1000, 1001 or 1011; ``how="1011"`` is shorthand). ``hold_s`` refuses
        the key's reconnects for that long, as Alpaca's reaping of half-dead connections does:
        a reconnect that names its key in the handshake headers gets HTTP 429, one that
        authenticates in-band a 1008 close.
        """
        return self._trading.drop(api_key, how, code, hold_s)

    def refuse_trading_streams(self, api_key: str, seconds: float) -> None:
        """Refuse the key's trade_updates connections for ``seconds`` (0 lifts it)."""
        self._trading.refuse(api_key, seconds)

    def trading_refused_for(self, api_key: str) -> float:
        return self._trading.refused_for(api_key)

    def set_auth_behaviour(self, api_key: str, behaviour: AuthBehaviour) -> None:
        """How both websockets answer this key's auth: ``ok``, ``reject`` or ``silent``."""
        if behaviour not in ("ok", "reject", "silent"):
            raise ValueError(f"unknown auth behaviour: {behaviour!r}")
        self._trading.behaviour[api_key] = behaviour

    def set_trading_frame_type(self, frame_type: Literal["binary", "text"]) -> None:
        """BINARY frames like paper (the default) or TEXT frames like live."""
        self._trading.set_frame_type(frame_type)

    def set_single_connection(self, enabled: bool) -> None:
        """Whether a second concurrent connection per key is refused (Alpaca: yes)."""
        self._trading.single_connection = self._data.single_connection = enabled

    def stream_settings(self) -> Json:
        return {
            "trading_single_connection": self._trading.single_connection,
            "data_single_connection": self._data.single_connection,
            "data_dead_slot_hold_s": self._data.dead_slot_hold_s,
        }

    def set_trading_single_connection(self, enabled: bool) -> None:
        """Whether a second concurrent trade_updates connection per key is refused at auth
        (Alpaca documents no limit there; off, two consumers of one account can overlap)."""
        self._trading.single_connection = enabled

    def set_data_single_connection(self, enabled: bool) -> None:
        """Whether a second concurrent data connection per key gets error 406 (Alpaca: yes)."""
        self._data.single_connection = enabled

    def set_data_dead_slot_hold(self, seconds: float) -> None:
        """How long a data connection that ended without a close handshake keeps its key's
        slot taken (Alpaca: about 90 s); 0, the default, frees it at once."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._data.dead_slot_hold_s = seconds

    def hold_data_slot(self, api_key: str, seconds: float) -> None:
        """Keep the key's data slot taken for ``seconds`` from now (0 frees it)."""
        self._data.hold(api_key, seconds)

    def data_slot_held_for(self, api_key: str) -> float:
        return self._data.held_for(api_key)

    def drop_data_streams(
        self, api_key: str | None = None, how: str = "abort", code: int = 1000
    ) -> int:
        """Cut data connections (all keys when None): ``abort`` holds the slot as a dead
        connection does, ``close`` sends ``code``; returns how many were cut."""
        return self._data.drop(api_key, how, code)

    def data_connections(self, api_key: str) -> int:
        """Open data connections authenticated as this key."""
        return len(self._data.connections(api_key))

    def send_trading_frame(self, api_key: str, frame: bytes | str | Json) -> None:
        """Send any frame to the key's listening connections (an unknown event, junk, ...)."""
        self._trading.send_raw(
            api_key, frame if isinstance(frame, (bytes, str)) else orjson.dumps(frame).decode()
        )

    def send_trading_heartbeat(self, api_key: str) -> None:
        """The 1-byte ``b"\\x01"`` binary heartbeat older Alpaca servers sent."""
        self._trading.send_raw(api_key, b"\x01")

    def resend_last_fill(self, api_key: str) -> Json | None:
        """Deliver the account's latest fill event again, unchanged (a duplicate execution)."""
        return self._desk.resend_last_fill(api_key)

    def withhold_trade_updates(self, api_key: str) -> None:
        """Keep the key's trade updates back (REST already shows them) until released."""
        self._trading.withhold(api_key)

    def release_trade_updates(self, api_key: str, reorder: Reorder | None = None) -> list[Json]:
        """Deliver the withheld updates, in ``reorder``'s order if given (e.g. newest first,
        or with repeats); returns what was delivered."""
        return self._trading.release(api_key, reorder)

    def fail_rest(
        self,
        status: int = 500,
        *,
        api_key: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer matching REST requests (``path`` is a prefix) with ``status`` and an
        Alpaca-shaped error body, until ``clear_rest_faults``."""
        self._faults.add(RestFault("fail", api_key, method, path, status=status))

    def hang_rest(
        self, *, api_key: str | None = None, method: str | None = None, path: str | None = None
    ) -> None:
        """Hold matching REST requests unanswered until ``clear_rest_faults`` (then serve them)."""
        self._faults.add(RestFault("hang", api_key, method, path))

    def rewrite_rest(
        self, rewrite: Rewrite, *, api_key: str | None = None, path: str | None = None
    ) -> None:
        """Pass the JSON of matching GET answers through ``rewrite`` (to serve poison records)."""
        self._faults.add(RestFault("rewrite", api_key, "GET", path, rewrite=rewrite))

    def add_rest_fault(self, fault: RestFault) -> None:
        self._faults.add(fault)

    def clear_rest_faults(self) -> None:
        """Drop every REST fault; requests held by ``hang_rest`` are then served."""
        self._faults.clear()

    def rest_faults(self) -> Json:
        """The active REST fault rules and how many requests are being held right now."""
        return {
            "faults": [rule.to_json() for rule in self._faults.rules],
            "hanging": self._faults.hanging,
        }

    async def wait_rest_hanging(self, count: int = 1) -> None:
        """Return once at least ``count`` REST requests are being held by ``hang_rest``."""
        await self._faults.watch.wait_until(lambda: self._faults.hanging >= count)

    def set_clock_offset(self, seconds: float) -> None:
        """Run the broker's order clock this far from real time (negative: behind), e.g. to
        have an order submitted "two minutes ago"; 0 puts it back."""
        offset_ns = round(seconds * 1_000_000_000)
        self._desk.clock_ns = lambda: time.time_ns() + offset_ns

    def stream_history(self, stream: Literal["trading", "data"], api_key: str) -> list[Json]:
        """Every connection of the stream authenticated as this key, oldest first."""
        log = self._trading.log if stream == "trading" else self._data.log
        return [record.to_json() for record in log.records(api_key)]

    def stream_overlap(self, stream: Literal["trading", "data"], api_key: str) -> Json:
        """The longest stretch (``max_s``) with two or more connections of the stream
        authenticated as this key at once, how many such stretches (``count``) and the most
        at once (``max_concurrent``)."""
        log = self._trading.log if stream == "trading" else self._data.log
        return log.overlap(api_key).to_json()

    def clear_stream_history(self) -> None:
        """Forget ended connections of both streams (open ones stay recorded)."""
        self._trading.log.clear()
        self._data.log.clear()

    def trading_connections(self, api_key: str) -> int:
        """Open trade_updates connections authorized as this key."""
        return len(self._trading.connections(api_key))

    async def wait_trading_listener(self, api_key: str) -> None:
        """Return once a connection for the key is authorized and listening to trade_updates."""
        await self._trading.watch.wait_until(lambda: self._trading.listening(api_key))

    async def wait_trading_disconnected(self, api_key: str) -> None:
        """Return once no trade_updates connection is authorized as this key."""
        await self._trading.watch.wait_until(lambda: not self._trading.connections(api_key))

    async def wait_data_subscription(self, symbol: str, subscribed: bool = True) -> None:
        """Return once some data connection is (or, with False, none is) subscribed to trades."""
        await self._data.watch.wait_until(
            lambda: self._data.subscribed(symbol.upper()) == subscribed
        )

    async def wait_trade_updates(
        self, api_key: str, count: int, event: str | None = None
    ) -> list[Json]:
        """Return the account's trade updates once ``count`` (of ``event``, if given) exist."""

        def matching() -> list[Json]:
            return [
                u
                for u in self._desk.history(api_key)
                if event is None or u["data"]["event"] == event
            ]

        await self._desk.watch.wait_until(lambda: len(matching()) >= count)
        return matching()
