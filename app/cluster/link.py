"""One pub/sub connection to Redis, replaced whenever it fails.

Each connection: connect (bounded), let the owner reset what it believes Redis holds, subscribe
the greeting channel, then run a reader and a writer until either fails or the owner asks for
a replacement; then back off (full jitter) and start again. The reader hands every frame to
the owner and survives anything one frame can do; the writer sends the owner's queued
SUBSCRIBE/UNSUBSCRIBE commands each time it is woken, in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from app.backoff import Backoff
from app.cluster.client import bounded
from config.logging import get_logger

log = get_logger()

# Channels per SUBSCRIBE/UNSUBSCRIBE command: a resubscribe after a reconnect goes out in
# commands of this size rather than one huge one (centrifuge's redisSubscribeBatchLimit).
COMMAND_BATCH = 512

Commands = tuple[list[str], list[str]]  # (channels to subscribe, channels to unsubscribe)


class PubSubLink:
    def __init__(
        self,
        pool: ConnectionPool,
        *,
        greeting: str,
        on_connect: Callable[[], None],
        on_frame: Callable[[list[Any]], None],
        take_commands: Callable[[], Commands],
        timeout_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
    ) -> None:
        self._pool = pool
        self._greeting = greeting
        self._greeting_frame = [b"subscribe", greeting.encode()]
        self._on_connect = on_connect
        self._on_frame = on_frame
        self._take_commands = take_commands
        self._timeout = timeout_s
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._wake = asyncio.Event()
        self._broken: asyncio.Future[str] | None = None
        # True from the greeting's confirmation (Redis reads and answers) to the session's end.
        self.connected = False
        self.losses = 0

    def wake(self) -> None:
        """Send whatever commands are queued now."""
        self._wake.set()

    def replace(self, reason: str) -> None:
        """Drop the current connection (e.g. it stopped delivering) and make a new one."""
        if self._broken is not None and not self._broken.done():
            self._broken.set_result(reason)

    async def run(self) -> None:
        while True:
            reason = await self._session()
            if self.connected:
                self._backoff.reset()
                self.losses += 1
                log.warning("[Cluster] Redis pub/sub connection lost; reconnecting", reason=reason)
            elif self._backoff.attempt == 0:
                log.warning("[Cluster] Redis pub/sub unavailable; retrying", reason=reason)
            self.connected = False
            await asyncio.sleep(self._backoff.next_delay())

    async def _session(self) -> str:
        """Run one connection until it fails; returns why it ended."""
        # redis-py leaves these two untyped.
        connection: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        broken: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._broken = broken
        tasks: list[asyncio.Task[None]] = []
        try:
            async with bounded(self._timeout):
                await connection.connect()  # type: ignore[no-untyped-call]
            self._on_connect()
            self._wake.set()
            tasks = [
                asyncio.create_task(self._read(connection), name="redis-pubsub-read"),
                asyncio.create_task(self._write(connection), name="redis-pubsub-write"),
            ]
            watched: list[asyncio.Future[Any]] = [*tasks, broken]
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if broken.done():
                return broken.result()
            ended = next(task for task in tasks if task.done())
            return repr(ended.exception())
        except (RedisError, OSError) as error:
            return repr(error)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                # wait(), not awaiting each: suppressing their CancelledError could swallow ours.
                await asyncio.wait(tasks)
            self._broken = None
            with contextlib.suppress(RedisError, OSError):
                await connection.disconnect(nowait=True)

    async def _read(self, connection: AbstractConnection) -> None:
        while True:
            # No read timeout: a quiet channel is normal, and a silent dead one is the probe's
            # to find. (A timeout here would also cut replies in half.)
            frame = await connection.read_response(timeout=math.inf)
            if not isinstance(frame, list) or len(frame) < 3:
                continue
            if (
                not self.connected
                and frame[0] == b"subscribe"
                and frame[1] == self._greeting.encode()
            ):
                self.connected = True
                log.info("[Cluster] Redis pub/sub connected", channel=self._greeting)
            try:
                self._on_frame(frame)
            except Exception:
                log.exception("[Cluster] Redis pub/sub message failed", frame=repr(frame)[:200])

    async def _write(self, connection: AbstractConnection) -> None:
        await connection.send_command("SUBSCRIBE", self._greeting)
        while True:
            await self._wake.wait()
            self._wake.clear()
            subscribe, unsubscribe = self._take_commands()
            for batch in _batches(unsubscribe):
                await connection.send_command("UNSUBSCRIBE", *batch)
            for batch in _batches(subscribe):
                await connection.send_command("SUBSCRIBE", *batch)


def _batches(channels: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(channels), COMMAND_BATCH):
        yield channels[start : start + COMMAND_BATCH]
