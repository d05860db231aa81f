"""Who connected to the simulated broker's websockets, when, and for how long.

Each hub keeps one :class:`StreamRecord` per accepted connection: its peer, when it connected,
authenticated, started listening and ended, and how it ended. From those, the longest stretch
during which two or more connections were authenticated as the same key at once is what a
failover test bounds: Alpaca must never see two consumers of one account for longer than the
takeover handshake.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from alpaca_bridge.simulator.wire import Json

Ending = Literal["client_close", "server_close", "unclean"]
HISTORY = 10_000  # records kept per hub, oldest dropped first
_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class StreamRecord:
    """One websocket connection; times are Unix seconds (``time.time()``)."""

    id: int
    stream: str  # "trading" or "data"
    peer: str
    connected_at: float
    api_key: str | None = None  # set once authenticated
    authenticated_at: float | None = None
    listening_at: float | None = None
    closed_at: float | None = None
    ended: Ending | None = None
    close_code: int | None = None

    def authenticated_span(self, now: float) -> tuple[float, float] | None:
        if self.authenticated_at is None:
            return None
        return self.authenticated_at, self.closed_at if self.closed_at is not None else now

    def to_json(self) -> Json:
        return {
            "id": self.id,
            "stream": self.stream,
            "peer": self.peer,
            "api_key": self.api_key,
            "connected_at": self.connected_at,
            "authenticated_at": self.authenticated_at,
            "listening_at": self.listening_at,
            "closed_at": self.closed_at,
            "ended": self.ended,
            "close_code": self.close_code,
        }


def _peer(request: web.Request) -> str:
    transport = request.transport
    address = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(request.remote or "")


@dataclass(frozen=True, slots=True)
class Overlap:
    """The longest stretch with two or more authenticated connections of one key at once."""

    max_s: float
    count: int  # how many such stretches there were
    max_concurrent: int

    def to_json(self) -> Json:
        return {"max_s": self.max_s, "count": self.count, "max_concurrent": self.max_concurrent}


def overlap(records: Iterable[StreamRecord], now: float) -> Overlap:
    """Sweep the authenticated spans: stretches where two or more were open together."""
    events: list[tuple[float, int]] = []
    for record in records:
        span = record.authenticated_span(now)
        if span is not None:
            # Ends sort before starts at the same instant: touching spans do not overlap.
            events += [(span[0], 1), (span[1], -1)]
    events.sort()
    open_now = most = count = 0
    longest = 0.0
    started: float | None = None
    for at, step in events:
        open_now += step
        most = max(most, open_now)
        if open_now >= 2 and started is None:
            started, count = at, count + 1
        elif open_now < 2 and started is not None:
            longest, started = max(longest, at - started), None
    if started is not None:
        longest = max(longest, now - started)
    return Overlap(longest, count, most)


class StreamLog:
    """The connection records of one hub, newest last."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self._records: deque[StreamRecord] = deque(maxlen=HISTORY)

    def opened(self, request: web.Request) -> StreamRecord:
        record = StreamRecord(next(_ids), self.stream, _peer(request), time.time())
        self._records.append(record)
        return record

    @staticmethod
    def authenticated(record: StreamRecord, api_key: str) -> None:
        record.api_key, record.authenticated_at = api_key, time.time()

    @staticmethod
    def listening(record: StreamRecord) -> None:
        if record.listening_at is None:
            record.listening_at = time.time()

    @staticmethod
    def closed(record: StreamRecord, ended: Ending, code: int | None) -> None:
        if record.closed_at is None:
            record.closed_at, record.ended, record.close_code = time.time(), ended, code

    def records(self, api_key: str | None = None) -> list[StreamRecord]:
        """Connections authenticated as ``api_key`` (every connection when None)."""
        return [r for r in self._records if api_key is None or r.api_key == api_key]

    def overlap(self, api_key: str) -> Overlap:
        return overlap(self.records(api_key), time.time())

    def clear(self) -> None:
        """Forget ended connections (open ones stay, so an overlap in progress still counts)."""
        kept = [r for r in self._records if r.closed_at is None]
        self._records.clear()
        self._records.extend(kept)
