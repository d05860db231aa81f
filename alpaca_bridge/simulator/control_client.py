"""A small blocking client of the simulated broker's HTTP control API (control_api.py).

For tests that run ``portfolio-stream simulate`` as a process of their own. Only the standard
library, so it works from any test (in an async test, call it through ``asyncio.to_thread``)::

    sim = SimControl("http://127.0.0.1:5100", token)
    sim.start_order_flow(0.2, ["PKALICE0001"])
    sim.drop_trading("PKALICE0001", how="abort", refuse_s=5)
    assert sim.trading_streams("PKALICE0001").overlap.max_s < 1.0
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote

from alpaca_bridge.simulator.faults import CONTROL_PREFIX


class SimControlError(Exception):
    """The control API answered with an error status (or not at all)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution of the broker: the truth every fill count is checked against."""

    execution_id: str
    order_id: str
    event: str  # "fill" or "partial_fill"
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    position_qty: Decimal
    timestamp: str

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Fill:
        return cls(
            raw["execution_id"],
            raw["order_id"],
            raw["event"],
            raw["symbol"],
            raw["side"],
            Decimal(raw["qty"]),
            Decimal(raw["price"]),
            Decimal(raw["position_qty"]),
            raw["timestamp"],
        )


@dataclass(frozen=True, slots=True)
class StreamConnection:
    """One websocket connection as the broker saw it; times are Unix seconds."""

    id: int
    stream: str
    peer: str
    api_key: str | None
    connected_at: float
    authenticated_at: float | None
    listening_at: float | None
    closed_at: float | None
    ended: str | None  # "client_close", "server_close" or "unclean"; None while open
    close_code: int | None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> StreamConnection:
        return cls(
            raw["id"],
            raw["stream"],
            raw["peer"],
            raw["api_key"],
            raw["connected_at"],
            raw["authenticated_at"],
            raw["listening_at"],
            raw["closed_at"],
            raw["ended"],
            raw["close_code"],
        )


@dataclass(frozen=True, slots=True)
class Overlap:
    """The longest stretch with two or more authenticated connections of one key at once
    (``max_s``, 0 when never), how many stretches, and the most connections at once."""

    max_s: float
    count: int
    max_concurrent: int


@dataclass(frozen=True, slots=True)
class StreamState:
    """One account's connections to one stream."""

    open: int  # authenticated connections open now
    blocked_for_s: float  # trading: reconnects refused for; data: slot held for
    overlap: Overlap
    connections: list[StreamConnection]


class SimControl:
    """The endpoints under ``/_sim/`` of the broker at ``base_url``, with its bearer token."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
            self.base_url + CONTROL_PREFIX + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = str(json.loads(raw).get("error") or json.loads(raw).get("message"))
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace")
            raise SimControlError(exc.code, message) from None
        except OSError as exc:
            raise SimControlError(0, f"no answer: {exc}") from exc

    @staticmethod
    def _account(api_key: str) -> str:
        return "/accounts/" + quote(api_key, safe="")

    # ---- observation -----------------------------------------------------------------------

    def accounts(self) -> list[str]:
        """The API keys of every account the broker holds."""
        return [a["api_key"] for a in self._call("GET", "/accounts")]

    def positions(self, api_key: str) -> list[dict[str, Any]]:
        """The account's positions exactly as ``GET /v2/positions`` returns them."""
        result: list[dict[str, Any]] = self._call("GET", self._account(api_key) + "/positions")
        return result

    def position_qty(self, api_key: str) -> dict[str, Decimal]:
        """Symbol -> quantity held (signed), for comparing with what a browser shows."""
        return {p["symbol"]: Decimal(p["qty"]) for p in self.positions(api_key)}

    def fills(self, api_key: str) -> list[Fill]:
        """Every execution of the account, oldest first."""
        return [Fill.from_json(f) for f in self._call("GET", self._account(api_key) + "/fills")]

    def trading_streams(self, api_key: str) -> StreamState:
        return self._streams(api_key, "trading")

    def data_streams(self, api_key: str) -> StreamState:
        return self._streams(api_key, "data")

    def _streams(self, api_key: str, stream: Literal["trading", "data"]) -> StreamState:
        raw = self._call("GET", f"{self._account(api_key)}/streams/{stream}")
        overlap = raw["overlap"]
        return StreamState(
            raw["open"],
            raw["refused_for_s"] if stream == "trading" else raw["slot_held_for_s"],
            Overlap(overlap["max_s"], overlap["count"], overlap["max_concurrent"]),
            [StreamConnection.from_json(c) for c in raw["connections"]],
        )

    def clear_stream_history(self) -> None:
        """Forget ended connections of both streams (open ones stay recorded)."""
        self._call("DELETE", "/streams/history")

    # ---- stream faults ---------------------------------------------------------------------

    def drop_trading(
        self,
        api_key: str,
        *,
        how: Literal["abort", "close"] = "abort",
        code: int = 1000,
        refuse_s: float = 0.0,
    ) -> int:
        """Cut the account's trade_updates connections (``abort``: no close frame; ``close``:
        a close frame with ``code``) and refuse its reconnects for ``refuse_s``; returns how
        many connections were cut."""
        body = {"how": how, "code": code, "refuse_s": refuse_s}
        dropped: int = self._call("POST", self._account(api_key) + "/streams/trading/drop", body)[
            "dropped"
        ]
        return dropped

    def refuse_trading(self, api_key: str, seconds: float) -> None:
        """Refuse the account's trade_updates connections for ``seconds`` (0 lifts it)."""
        self._call("POST", self._account(api_key) + "/streams/trading/refuse", {"seconds": seconds})

    def drop_data(
        self, api_key: str, *, how: Literal["abort", "close"] = "abort", code: int = 1000
    ) -> int:
        """Cut the key's market-data connections; ``abort`` then holds the slot as a dead
        connection does (see ``set_stream_settings(data_dead_slot_hold_s=...)``)."""
        body = {"how": how, "code": code}
        dropped: int = self._call("POST", self._account(api_key) + "/streams/data/drop", body)[
            "dropped"
        ]
        return dropped

    def hold_data_slot(self, api_key: str, seconds: float) -> None:
        """Keep the key's market-data slot taken for ``seconds`` (error 406 meanwhile)."""
        self._call("POST", self._account(api_key) + "/streams/data/hold", {"seconds": seconds})

    def stream_settings(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/settings")
        return result

    def set_stream_settings(
        self,
        *,
        trading_single_connection: bool | None = None,
        data_single_connection: bool | None = None,
        data_dead_slot_hold_s: float | None = None,
    ) -> dict[str, Any]:
        """Change the given settings; returns all of them."""
        body = {
            name: value
            for name, value in (
                ("trading_single_connection", trading_single_connection),
                ("data_single_connection", data_single_connection),
                ("data_dead_slot_hold_s", data_dead_slot_hold_s),
            )
            if value is not None
        }
        result: dict[str, Any] = self._call("PUT", "/settings", body)
        return result

    # ---- REST faults -----------------------------------------------------------------------

    def fail_rest(
        self,
        status: int = 500,
        *,
        api_key: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer matching Trading REST requests (``path`` is a prefix, e.g. ``/v2/orders``)
        with ``status`` and an Alpaca-shaped error body, until ``clear_rest_faults``."""
        self._rest_fault("fail", status, api_key, method, path)

    def hang_rest(
        self, *, api_key: str | None = None, method: str | None = None, path: str | None = None
    ) -> None:
        """Hold matching REST requests unanswered until ``clear_rest_faults`` serves them."""
        self._rest_fault("hang", 500, api_key, method, path)

    def _rest_fault(
        self, kind: str, status: int, api_key: str | None, method: str | None, path: str | None
    ) -> None:
        body = {"kind": kind, "status": status, "api_key": api_key, "method": method, "path": path}
        self._call("POST", "/rest-faults", body)

    def rest_faults(self) -> dict[str, Any]:
        """``{"faults": [...], "hanging": <requests held now>}``."""
        result: dict[str, Any] = self._call("GET", "/rest-faults")
        return result

    def clear_rest_faults(self) -> None:
        self._call("DELETE", "/rest-faults")

    # ---- timed orders ----------------------------------------------------------------------

    def start_order_flow(self, interval_s: float, api_keys: Sequence[str] | None = None) -> None:
        """A random market order on each account (None: all) every ``interval_s``."""
        body: dict[str, Any] = {"interval_s": interval_s}
        if api_keys is not None:
            body["accounts"] = list(api_keys)
        self._call("PUT", "/order-flow", body)

    def stop_order_flow(self) -> None:
        self._call("DELETE", "/order-flow")

    def order_flow(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/order-flow")
        return result
