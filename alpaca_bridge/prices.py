"""Live prices for the held symbols: one alpaca-py ``StockDataStream`` for all accounts.

The SDK is used inside the app's loop with care (research §4.3):

- it is started only once a symbol is wanted, with its handler registered first, because
  ``_run_forever`` busy-waits with ``sleep(0)`` while it has no handler (alpaca-py PR #769);
- while it runs, ``subscribe_trades``/``unsubscribe_trades`` block on a future that only the
  loop can complete, so they are called through ``asyncio.to_thread`` (a direct call deadlocks);
- ``stop()`` would block the loop for 5 s, so it is ``stop_ws()``, a short wait, then cancel and
  ``close()``; ``close_timeout`` is set so a closing handshake cannot hold shutdown either.

Ticks are coalesced per symbol: the latest price of each symbol is handed on at most once per
``coalesce_s`` (100 ms by default), so a hot symbol cannot flood the bus.

The feed's plan caps the symbols one connection may follow (30 on the free IEX feed, research
§5; more gets error 405 and keeps the old set): past ``symbol_limit`` the symbols held by the
most accounts are followed, ties by name, and the rest are left out, with one WARNING each time
the number left out changes and the count in ``status()``.

Alpaca allows one market-data connection per key, and a connection that died without a close
keeps the slot for about 90 s: meanwhile every connect is refused with error 406 ("connection
limit exceeded"). The SDK retries any failure with its backoff; here a 406 is made a websocket
error so it retries with our backoff (the SDK logs one line per attempt, not a traceback), we
log one WARNING per episode, and ``status()`` says ``slot_held`` until a connect gets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from alpaca.data.enums import DataFeed
from alpaca.data.live.stock import StockDataStream
from alpaca.data.models import Trade
from pydantic import SecretStr
from websockets.exceptions import WebSocketException

from alpaca_bridge.wire_parser import MalformedUpdate, iso_from_epoch, parse_decimal
from config.logging import get_logger

log = get_logger()

COALESCE_S = 0.1
_STOP_GRACE_S = 0.3
# alpaca-py's own defaults (passing any dict replaces them all), plus a bounded close.
_WEBSOCKET_PARAMS = {
    "ping_interval": 10,
    "ping_timeout": 180,
    "max_queue": 1024,
    "close_timeout": 0.25,
}


# Alpaca's error text for a second connection on one key (code 406).
CONNECTION_LIMIT_TEXT = "connection limit exceeded"


def choose_symbols(holders: Mapping[str, int], limit: int) -> tuple[list[str], list[str]]:
    """The symbols to follow within ``limit`` (0: no limit) and those left out: most held
    first, then by name, so every node and every run picks the same ones."""
    ranked = sorted(holders, key=lambda symbol: (-holders[symbol], symbol))
    if limit <= 0 or len(ranked) <= limit:
        return ranked, []
    return ranked[:limit], ranked[limit:]


class SlotHeld(WebSocketException):
    """Error 406 at auth: another connection (or a dead one not yet reaped) holds the slot."""


class _DataStream(StockDataStream):
    """The SDK's stream, telling the feed how each authentication went."""

    def __init__(self, *args: Any, on_auth: Callable[[bool], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_auth = on_auth

    async def _auth(self) -> None:
        try:
            await super()._auth()
        except ValueError as error:
            if CONNECTION_LIMIT_TEXT not in str(error):
                raise
            self._on_auth(False)
            # A websocket error takes the SDK's quiet path: close, back off, reconnect.
            raise SlotHeld(f"{CONNECTION_LIMIT_TEXT} (406)") from error
        self._on_auth(True)


class PriceFeed:
    """Keeps one market-data subscription equal to ``want(symbols)`` (within
    ``symbol_limit``); calls ``on_prices``."""

    def __init__(
        self,
        *,
        url: str,
        feed: str,
        key_id: SecretStr,
        secret_key: SecretStr,
        on_prices: Callable[[dict[str, Decimal]], None],
        coalesce_s: float = COALESCE_S,
        symbol_limit: int = 0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self._feed = feed
        self._key_id = key_id
        self._secret_key = secret_key
        self._on_prices = on_prices
        self._coalesce_s = coalesce_s
        self._clock = clock
        self._symbol_limit = symbol_limit
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._wanted: frozenset[str] = frozenset()
        self._wanted_count = 0
        self._dropped: list[str] = []
        self._slot_held_since: float | None = None
        self.slot_refusals = 0
        self._subscribed: set[str] = set()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._stream: StockDataStream | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._pending: dict[str, Decimal] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._stopped = False
        self.ticks = 0
        self.last_tick_at: float | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(
            self._keep_subscribed(), name="alpaca-prices"
        )

    def want(self, symbols: Mapping[str, int] | Iterable[str]) -> None:
        """The symbols to follow from now on (the union of every account's positions), with
        how many accounts hold each when given a mapping (which ones the limit keeps)."""
        holders = dict(symbols) if isinstance(symbols, Mapping) else dict.fromkeys(symbols, 1)
        chosen, dropped = choose_symbols(holders, self._symbol_limit)
        if len(dropped) != len(self._dropped) and dropped:
            log.warning(
                "[AlpacaStream] Price symbols over the feed's limit: some get no prices",
                feed=self._feed,
                symbolLimit=self._symbol_limit,
                symbolsWanted=len(holders),
                symbolsDropped=len(dropped),
                _dropped=dropped,
            )
        elif self._dropped and not dropped:
            log.info(
                "[AlpacaStream] Price symbols within the feed's limit again",
                symbolLimit=self._symbol_limit,
                symbolsWanted=len(holders),
            )
        self._dropped = dropped
        self._wanted_count = len(holders)
        self._wanted = frozenset(chosen)
        self._wake.set()

    def _on_auth(self, accepted: bool) -> None:
        now = self._clock()
        if not accepted:
            self.slot_refusals += 1
            if self._slot_held_since is None:
                self._slot_held_since = now
                log.warning(
                    "[AlpacaStream] Market-data connection refused: the key's one slot is "
                    "still held (406); retrying with backoff",
                    url=self._url,
                    feed=self._feed,
                )
            return
        if self._slot_held_since is not None:
            log.info(
                "[AlpacaStream] Market-data slot free again: connected",
                url=self._url,
                waitedS=round(now - self._slot_held_since, 3),
                refusals=self.slot_refusals,
            )
            self._slot_held_since = None

    def status(self) -> dict[str, Any]:
        if self._stopped:
            state = "stopped"
        elif self._stream_task is None:
            state = "idle"
        elif self._stream_task.done():
            state = "failed"
        elif self._slot_held_since is not None:
            state = "slot_held"
        else:
            state = "running"
        held = self._slot_held_since
        return {
            "status": state,
            "url": self._url,
            "feed": self._feed,
            "symbols": sorted(self._subscribed),
            "ticks": self.ticks,
            "lastTickAt": None if self.last_tick_at is None else iso_from_epoch(self.last_tick_at),
            "symbolLimit": self._symbol_limit or None,
            "symbolsWanted": self._wanted_count,
            "symbolsDropped": len(self._dropped),
            "droppedSymbols": list(self._dropped),
            "slotRefusals": self.slot_refusals,
            "slotHeldSince": None if held is None else iso_from_epoch(held),
        }

    async def stop(self) -> None:
        self._stopped = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        await _cancel(self._worker)
        stream, task = self._stream, self._stream_task
        if stream is None or task is None:
            return
        await stream.stop_ws()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            # The SDK notices a stop between receives, at most 5 s apart: don't wait for it.
            await asyncio.wait_for(asyncio.shield(task), _STOP_GRACE_S)
        await _cancel(task)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stream.close(), _STOP_GRACE_S)

    async def _keep_subscribed(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._sync()
            except Exception as exc:
                # Typically the socket closed mid-send; the SDK resubscribes on reconnect.
                log.warning("[AlpacaStream] Price subscription change failed", error=str(exc))
                asyncio.get_running_loop().call_later(1.0, self._wake.set)

    async def _sync(self) -> None:
        add = sorted(self._wanted - self._subscribed)
        remove = sorted(self._subscribed - self._wanted)
        if add and self._stream is None:
            self._stream = _DataStream(
                self._key_id.get_secret_value(),
                self._secret_key.get_secret_value(),
                raw_data=True,
                feed=DataFeed.SIP if self._feed == "sip" else DataFeed.IEX,
                websocket_params=dict(_WEBSOCKET_PARAMS),
                url_override=self._url,
                on_auth=self._on_auth,
            )
            # The SDK's reconnect backoff (exponential, equal jitter) with our bounds.
            self._stream._reconnect_min_backoff, self._stream._reconnect_max_backoff = self._backoff
            self._stream.subscribe_trades(self._on_trade, *add)
            self._subscribed.update(add)
            self._stream_task = asyncio.get_running_loop().create_task(
                self._stream._run_forever(), name="alpaca-data-stream"
            )
        elif add and self._stream is not None:
            # The SDK records the handler before sending, so even a failed send counts.
            self._subscribed.update(add)
            await asyncio.to_thread(self._stream.subscribe_trades, self._on_trade, *add)
        if remove and self._stream is not None:
            await asyncio.to_thread(self._stream.unsubscribe_trades, *remove)
            self._subscribed.difference_update(remove)
        if add or remove:
            log.info(
                "[AlpacaStream] Price subscriptions updated",
                symbols=len(self._subscribed),
                _added=add,
                _removed=remove,
            )

    async def _on_trade(self, message: Trade | dict[Any, Any]) -> None:
        if not isinstance(message, dict):
            return  # raw_data=True: the SDK hands over the decoded msgpack map
        symbol = message.get("S")
        try:
            price = parse_decimal(message.get("p"))
        except MalformedUpdate:
            return
        if not isinstance(symbol, str) or price is None or symbol not in self._wanted:
            return
        self.ticks += 1
        self.last_tick_at = self._clock()
        self._pending[symbol] = price
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                self._coalesce_s, self._flush
            )

    def _flush(self) -> None:
        self._flush_handle = None
        prices, self._pending = self._pending, {}
        if prices:
            self._on_prices(prices)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
