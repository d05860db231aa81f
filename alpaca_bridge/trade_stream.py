"""One account's ``trade_updates`` websocket, spoken directly on aiohttp's client.

alpaca-py's ``TradingStream`` owns its loop, waits for the auth reply forever, retries bad
credentials forever in silence and parses money as floats (research §2, §3), so this consumer
speaks the same protocol itself (research §7, option B) as a task in the app's loop:

- authenticate with alpaca-py's frame shape and a timeout; ``unauthorized`` is fatal: one ERROR
  line, state ``unauthorized``, and the task ends (the keys come from configuration, so retrying
  them cannot succeed until an operator fixes it and restarts);
- ``listen`` and check the ``listening`` ack, then ``on_connected(gap_started_at)`` (the REST
  reconciliation; ``gap_started_at`` is when the previous session ended, None at first);
- accept TEXT and BINARY frames (paper sends JSON in binary frames), ignore non-JSON ones;
- drop duplicate updates (bounded memory), hand the rest to ``on_update`` synchronously;
- reconnect with capped exponential backoff and full jitter, reset after a healthy session.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import aiohttp
from pydantic import SecretStr

from alpaca_bridge.dedup import RecentKeys
from alpaca_bridge.stream_protocol import (
    AuthenticationFailed,
    SessionEnded,
    authenticate_and_listen,
    receive_objects,
)
from alpaca_bridge.wire_parser import MalformedUpdate, TradeUpdate, parse_trade_update
from app.backoff import Backoff
from config.logging import get_logger

log = get_logger()


class StreamState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    UNAUTHORIZED = "unauthorized"
    STOPPED = "stopped"


class TradeUpdatesStream:
    """The trade_updates consumer of one account; ``start`` it, ``await stop()`` it."""

    def __init__(
        self,
        *,
        account: str,
        url: str,
        key_id: SecretStr,
        secret_key: SecretStr,
        session: aiohttp.ClientSession,
        auth_timeout_s: float,
        backoff: Backoff,
        on_update: Callable[[TradeUpdate], None],
        on_connected: Callable[[float | None], None],
        on_state: Callable[[StreamState], None] | None = None,
        heartbeat_s: float = 20.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.account = account
        self._url = url
        self._key_id = key_id
        self._secret_key = secret_key
        self._session = session
        self._auth_timeout_s = auth_timeout_s
        self._backoff = backoff
        self._on_update = on_update
        self._on_connected = on_connected
        self._on_state = on_state
        self._gap_started_at: float | None = None
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self._dedup = RecentKeys()
        self._task: asyncio.Task[None] | None = None
        self._received_in_session = 0
        self._state = StreamState.CONNECTING
        self.reconnects = 0
        self.last_event_at: float | None = None
        self.duplicates = 0

    @property
    def state(self) -> StreamState:
        return self._state

    def _set_state(self, state: StreamState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_state is not None:
                self._on_state(state)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"alpaca-trade-updates:{self.account}"
        )

    async def wait_closed(self) -> None:
        """Return when the consumer has ended for good (stopped, or unauthorized)."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def stop(self) -> None:
        """Cancel and close; the socket close waits at most a quarter second for the server."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._state is not StreamState.UNAUTHORIZED:
            self._set_state(StreamState.STOPPED)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                reason = await self._connect_once()
            except AuthenticationFailed as exc:
                self._set_state(StreamState.UNAUTHORIZED)
                log.error(
                    "[AlpacaStream] Authentication failed",
                    account=self.account,
                    reason=str(exc) or "unauthorized",
                    _url=self._url,
                )
                return
            except Exception as exc:
                # The task's boundary: whatever went wrong, log it and reconnect, never die.
                log.exception("[AlpacaStream] Trade stream session failed", account=self.account)
                reason = f"{type(exc).__name__}: {exc}"
            healthy = self._received_in_session > 0 or (
                loop.time() - started >= self._backoff.max_s
            )
            if healthy:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            self.reconnects += 1
            self._set_state(StreamState.RECONNECTING)
            log.info(
                f"[AlpacaStream] Reconnecting in {round(delay * 1000)}ms",
                account=self.account,
                attempt=self._backoff.attempt,
                _reason=reason,
            )
            await asyncio.sleep(delay)

    async def _connect_once(self) -> str:
        """One connection from handshake to close; returns why it ended."""
        self._received_in_session = 0
        try:
            # The session's own timeout is generous; a handshake gets the auth timeout.
            async with asyncio.timeout(self._auth_timeout_s):
                ws = await self._session.ws_connect(
                    self._url,
                    heartbeat=self._heartbeat_s,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=0.25),
                )
        except TimeoutError:
            return self._attempt_failed(f"no handshake response within {self._auth_timeout_s}s")
        except aiohttp.WSServerHandshakeError as exc:
            return self._attempt_failed(f"handshake rejected with HTTP {exc.status}")
        except (aiohttp.ClientError, OSError) as exc:
            return self._attempt_failed(f"{type(exc).__name__}: {exc}".rstrip(": "))
        async with ws:
            try:
                early = await authenticate_and_listen(
                    ws, self._key_id, self._secret_key, self._auth_timeout_s
                )
            except TimeoutError:
                log.warning(
                    "[AlpacaStream] Authentication timed out",
                    account=self.account,
                    timeoutS=self._auth_timeout_s,
                )
                return f"no authorization reply within {self._auth_timeout_s}s"
            except SessionEnded as exc:
                return self._attempt_failed(str(exc))
            return await self._listen(ws, early)

    def _attempt_failed(self, reason: str) -> str:
        log.warning("[AlpacaStream] Connection attempt failed", account=self.account, reason=reason)
        return reason

    async def _listen(
        self, ws: aiohttp.ClientWebSocketResponse, early: list[dict[str, Any]]
    ) -> str:
        """A connected session: reconcile, then consume until the connection ends."""
        self._set_state(StreamState.CONNECTED)
        log.info(
            "[AlpacaStream] Connected to trade_updates stream", account=self.account, _url=self._url
        )
        gap_started_at, self._gap_started_at = self._gap_started_at, None
        self._on_connected(gap_started_at)
        for item in early:
            self._dispatch(item)
        reason = await self._consume(ws)
        self._gap_started_at = self._clock()
        log.info(
            "[AlpacaStream] Disconnected from trade_updates stream",
            account=self.account,
            reason=reason,
        )
        return reason

    async def _consume(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        while True:
            try:
                items = await receive_objects(ws)
            except SessionEnded as exc:
                return str(exc)
            for item in items:
                self._dispatch(item)

    def _dispatch(self, item: dict[str, Any]) -> None:
        stream = item.get("stream")
        if stream == "authorization":
            data = item.get("data") or {}
            if isinstance(data, dict) and data.get("status") == "unauthorized":
                raise AuthenticationFailed(str(data.get("message") or "unauthorized"))
        if stream != "trade_updates":
            return
        try:
            update = parse_trade_update(item.get("data"))
        except MalformedUpdate as exc:
            log.warning(
                "[AlpacaStream] Ignored malformed trade update",
                account=self.account,
                error=str(exc),
            )
            return
        self.last_event_at = self._clock()
        self._received_in_session += 1
        if not self._dedup.add(update.dedup_key):
            self.duplicates += 1
            log.debug(
                "[AlpacaStream] Ignored duplicate trade update",
                account=self.account,
                orderId=update.order.id,
                executionId=update.execution_id,
            )
            return
        try:
            self._on_update(update)
        except Exception:
            # One update the portfolio cannot take must not end the account's stream.
            log.exception(
                "[AlpacaStream] Failed to apply trade update",
                account=self.account,
                orderId=update.order.id,
                tradeEvent=update.event,
            )
