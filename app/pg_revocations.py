"""Session revocations made on other nodes, heard over PostgreSQL LISTEN/NOTIFY.

A logout or a user removal on any node (or by ``portfolio-stream users remove``) sends a
notice on ``CHANNEL`` in the transaction that deletes the rows, so it is delivered exactly
when the change is visible. Each node listens on a connection of its own and publishes every
notice from elsewhere on its store's ``revocations``: its sockets using that session close at
once, not at the next periodic re-check.

Notices sent while a node is not listening (the connection lost, the server restarting) are
not queued for it, so after every reconnection the node re-checks all the sessions it
watches; the periodic re-check (SESSION_CHECK_INTERVAL_S) stays as the backstop, and the
listening connection is pinged at that interval so a silently dead one is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import psycopg

from app.pg_connect import one_line
from app.sessions import Revocations, RevokedBecause, SessionRevoked
from app.store_health import StoreUnavailable
from config.logging import get_logger

log = get_logger()

CHANNEL = "portfolio_stream_revocations"
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0

Connect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]


def notice(origin: str, event: SessionRevoked) -> str:
    """The NOTIFY payload (well under PostgreSQL's 8000-byte limit)."""
    body = {"origin": origin, "user": event.user_id, "session": event.token_hash}
    return orjson.dumps({**body, "reason": event.reason.value}).decode()


def parse(payload: str) -> tuple[str, SessionRevoked] | None:
    """(origin, revocation), or None for a payload this release does not understand."""
    try:
        body = orjson.loads(payload)
        event = SessionRevoked(
            str(body["user"]),
            None if body["session"] is None else str(body["session"]),
            RevokedBecause(body["reason"]),
        )
        return str(body["origin"]), event
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class RevocationFeed:
    """Listens for other nodes' revocations and republishes them here."""

    def __init__(
        self,
        connect: Connect,
        origin: str,
        revocations: Revocations,
        recheck: Callable[[], Awaitable[None]],
        *,
        ping_interval_s: float,
        timeout_s: float,
    ) -> None:
        self._connect = connect
        self._origin = origin
        self._revocations = revocations
        self._recheck = recheck
        self._ping_interval = ping_interval_s
        self._timeout = timeout_s
        self.listening = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff and jitter."""
        delay = RETRY_FIRST_S
        lost = False
        while True:
            try:
                async with await self._connect() as conn:
                    await asyncio.wait_for(conn.execute(f"LISTEN {CHANNEL}"), self._timeout)
                    self.listening.set()
                    delay = RETRY_FIRST_S
                    if lost:
                        lost = False
                        log.info("[Store] Listening again for session revocations from other nodes")
                        await self._recheck_quietly()  # what was missed meanwhile
                    await self._listen(conn)
            except (psycopg.Error, OSError, TimeoutError, StoreUnavailable) as error:
                self.listening.clear()
                if not lost:
                    lost = True
                    log.error(
                        "[Store] Not listening for session revocations from other nodes",
                        error=one_line(error)[:200],
                        retry="periodic session re-check until it is back",
                    )
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, RETRY_MAX_S)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            async for notify in conn.notifies(timeout=self._ping_interval):
                self._deliver(notify.payload)
            # Quiet for a whole interval: make sure the connection is still there.
            await asyncio.wait_for(conn.execute("SELECT 1"), self._timeout)

    def _deliver(self, payload: str) -> None:
        parsed = parse(payload)
        if parsed is None:
            log.warning("[Store] Unreadable revocation notice ignored", payload=payload[:200])
            return
        origin, event = parsed
        if origin != self._origin:  # this node published its own already
            self._revocations.publish(event)

    async def _recheck_quietly(self) -> None:
        with contextlib.suppress(StoreUnavailable):  # the periodic re-check tries again
            await self._recheck()
