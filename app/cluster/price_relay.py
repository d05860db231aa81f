"""The cluster's prices: every node's held symbols in Redis, and one feed's ticks for all.

Alpaca allows one market-data connection per key, so one node (the ``prices`` lease's holder)
runs it for the cluster, on the union of the symbols every node's accounts hold:

- Each node writes its set (symbol -> how many of its accounts hold it) into
  ``pf:{prices}:want`` under its id, counted live until ``entry_ttl_s`` after its last write;
  it writes again every ``refresh_s`` and at once when the set changed, then publishes its id
  on ``pf.prices.want`` so the holder reads the union without waiting for its next round. A
  node that dies without stopping has its symbols lapse with the TTL; a graceful stop removes
  them at once.
- Every node reads the union every ``refresh_s`` (and on each hint) and calls ``on_wanted``
  when it changed: the holder's feed follows it.
- The holder hands each coalesced tick batch to ``publish``: its own accounts get it at once,
  and it goes out as one message on ``pf.prices`` for the others. One channel rather than one
  per symbol: a batch holds at most the feed's symbol limit (30 on IEX) and comes at most once
  per coalescing interval, so one publish per batch is far cheaper than one per symbol, and no
  node has to follow per-symbol subscriptions as its positions change; a node simply ignores
  symbols it does not hold.

A batch is ``{"n": <node id>, "e": <prices lease epoch>, "p": {"AAPL": "187.42", ...}}`` with
exact decimal strings. A receiver drops a batch from an older epoch than the newest it has seen,
unless that newest one fell silent for ``entry_ttl_s`` (so a Redis that lost the lease history
and started the epochs over does not silence the new holder forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError

from app.backoff import Backoff
from app.broker import PriceSink
from app.cluster.client import bounded, pubsub_pool
from app.cluster.keys import PRICE_NODES, PRICE_WANTS, PRICE_WANTS_CHANNEL, PRICES_CHANNEL
from app.cluster.link import Commands, PubSubLink
from app.cluster.scripts import script
from config.logging import get_logger
from config.settings import Settings

log = get_logger()

_KEYS = [PRICE_NODES, PRICE_WANTS]


class BadBatch(ValueError):
    """A message on the prices channel that is not a tick batch."""


def encode_batch(node_id: str, epoch: int, prices: Mapping[str, Decimal]) -> bytes:
    # str() of a Decimal reads back as the same Decimal, digits and exponent alike.
    return orjson.dumps({"n": node_id, "e": epoch, "p": {s: str(p) for s, p in prices.items()}})


def decode_batch(data: bytes) -> tuple[str, int, dict[str, Decimal]]:
    """(node id, epoch, prices) of a batch; raises :class:`BadBatch`."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise BadBatch(f"not JSON: {error}") from error
    if not isinstance(body, dict):
        raise BadBatch("not an object")
    node, epoch, raw = body.get("n"), body.get("e"), body.get("p")
    if not isinstance(node, str) or type(epoch) is not int or not isinstance(raw, dict):
        raise BadBatch("missing n, e or p")
    prices: dict[str, Decimal] = {}
    for symbol, text in raw.items():
        if not isinstance(text, str):
            raise BadBatch(f"price of {symbol} is not a string")
        try:
            price = Decimal(text)
        except InvalidOperation as error:
            raise BadBatch(f"price of {symbol} is not a number") from error
        if not price.is_finite():
            raise BadBatch(f"price of {symbol} is not finite")
        prices[symbol] = price
    return node, epoch, prices


def union(sets: list[bytes | None]) -> dict[str, int]:
    """Every node's set added up: symbol -> accounts holding it across the cluster."""
    total: dict[str, int] = {}
    for raw in sets:
        if raw is None:
            continue
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError):
            body = orjson.loads(raw)
            if isinstance(body, dict):
                for symbol, count in body.items():
                    if isinstance(symbol, str) and type(count) is int and count > 0:
                        total[symbol] = total.get(symbol, 0) + count
    return total


class RedisPriceRelay:
    """The ``PriceRelay`` (``app/broker.py``) of a cluster node; see the module docstring."""

    def __init__(
        self,
        redis: Redis,
        pool: ConnectionPool,
        *,
        node_id: str,
        entry_ttl_s: float,
        refresh_s: float,
        timeout_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._node_id = node_id
        self._ttl_ms = max(1, round(entry_ttl_s * 1000))
        self._stale_s = entry_ttl_s
        self._refresh_s = refresh_s
        self._timeout = timeout_s
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._clock = clock
        self._held: dict[str, int] = {}
        self._wanted: dict[str, int] = {}
        self._nodes = 0
        self._on_prices: PriceSink | None = None
        self._on_wanted: Callable[[], None] | None = None
        self._write_now = asyncio.Event()
        self._read_now = asyncio.Event()
        self._send_now = asyncio.Event()
        self._outbox: dict[str, Decimal] = {}
        self._outbox_epoch = 0
        self._newest_epoch: int | None = None
        self._newest_at = 0.0
        self._subscribe_hints = True
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self.batches_received = 0
        self.stale_batches = 0
        self.bad_batches = 0
        self.publish_failures = 0
        self.last_batch_at: float | None = None
        self._link = PubSubLink(
            pool,
            greeting=PRICES_CHANNEL,
            on_connect=self._connection_reset,
            on_frame=self._handle,
            take_commands=self._take_commands,
            timeout_s=timeout_s,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
        )

    # -- the PriceRelay seam -----------------------------------------------------------------

    def want(self, holders: Mapping[str, int]) -> None:
        held = {symbol: count for symbol, count in holders.items() if count > 0}
        if held != self._held:
            self._held = held
            self._write_now.set()

    def wanted(self) -> dict[str, int]:
        return dict(self._wanted)

    def subscribe(self, on_prices: PriceSink, on_wanted: Callable[[], None]) -> None:
        self._on_prices, self._on_wanted = on_prices, on_wanted

    def publish(self, prices: Mapping[str, Decimal], epoch: int) -> None:
        # The holder's own epoch counts as seen: a stale holder's batches are dropped here too.
        if self._newest_epoch is None or epoch >= self._newest_epoch:
            self._newest_epoch, self._newest_at = epoch, self._clock()
        self._deliver(prices)
        if epoch != self._outbox_epoch:
            self._outbox = {}
        self._outbox.update(prices)
        self._outbox_epoch = epoch
        self._send_now.set()

    async def start(self) -> None:
        self._write_now.set()
        self._tasks = [
            asyncio.create_task(self._link.run(), name="price-relay-pubsub"),
            asyncio.create_task(self._write_loop(), name="price-relay-write"),
            asyncio.create_task(self._read_loop(), name="price-relay-read"),
            asyncio.create_task(self._send_loop(), name="price-relay-send"),
        ]

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []
        try:
            async with bounded(self._timeout), self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(PRICE_NODES, self._node_id)
                pipe.hdel(PRICE_WANTS, self._node_id)
                await pipe.execute()
        except (RedisError, OSError) as error:
            log.warning(
                "[Cluster] Could not withdraw this node's price symbols; they lapse on their own",
                error=repr(error),
            )

    def status(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "connected": self._link.connected,
            "nodes": self._nodes,
            "heldHere": len(self._held),
            "clusterSymbols": len(self._wanted),
            "batchesReceived": self.batches_received,
            "lastBatchAgeS": (
                None if self.last_batch_at is None else round(self._clock() - self.last_batch_at, 3)
            ),
            "staleBatches": self.stale_batches,
            "badBatches": self.bad_batches,
            "publishFailures": self.publish_failures,
        }

    # -- this node's set and the union -------------------------------------------------------

    async def _write_loop(self) -> None:
        failing = False
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the task's
            # cancellation when the event is set in the same instant (CPython gh-86296), and
            # ``stop`` then waits for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._refresh_s):
                    await self._write_now.wait()
            self._write_now.clear()
            try:
                async with bounded(self._timeout):
                    changed = await script("price_want_write").run(
                        self._redis, _KEYS, [self._node_id, orjson.dumps(self._held), self._ttl_ms]
                    )
                    if changed:
                        await self._redis.publish(PRICE_WANTS_CHANNEL, self._node_id)
                failing = False
                if changed:
                    self._read_now.set()
            except (RedisError, OSError) as error:
                if not failing:
                    log.warning(
                        "[Cluster] Could not write this node's price symbols; retrying",
                        error=repr(error),
                    )
                failing = True
                self._write_now.set()
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._backoff.reset()

    async def _read_loop(self) -> None:
        failing = False
        while True:
            try:
                async with bounded(self._timeout):
                    ids, sets = await script("price_want_read").run(self._redis, _KEYS, [])
                failing = False
            except (RedisError, OSError) as error:
                if not failing:
                    log.warning(
                        "[Cluster] Could not read the cluster's price symbols; retrying",
                        error=repr(error),
                    )
                failing = True
            else:
                self._nodes = len(ids)
                wanted = union(list(sets))
                if wanted != self._wanted:
                    self._wanted = wanted
                    if self._on_wanted is not None:
                        try:
                            self._on_wanted()
                        except Exception:
                            log.exception("[Cluster] Price symbols handler failed")
            with contextlib.suppress(TimeoutError):  # not wait_for: see _write_loop
                async with asyncio.timeout(self._refresh_s):
                    await self._read_now.wait()
            self._read_now.clear()

    # -- ticks -------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            await self._send_now.wait()
            self._send_now.clear()
            batch, self._outbox = self._outbox, {}
            if not batch:
                continue
            try:
                async with bounded(self._timeout):
                    await self._redis.publish(
                        PRICES_CHANNEL, encode_batch(self._node_id, self._outbox_epoch, batch)
                    )
            except (RedisError, OSError) as error:
                # Prices are the latest value only: the next batch replaces this one.
                self.publish_failures += 1
                if self.publish_failures == 1:
                    log.warning("[Cluster] Could not relay a price batch", error=repr(error))

    def _connection_reset(self) -> None:
        self._subscribe_hints = True
        # Hints sent while the connection was down are gone: read the union again.
        self._read_now.set()

    def _take_commands(self) -> Commands:
        if self._subscribe_hints:
            self._subscribe_hints = False
            return [PRICE_WANTS_CHANNEL], []
        return [], []

    def _handle(self, frame: list[Any]) -> None:
        if bytes(frame[0]) != b"message":
            return
        channel = bytes(frame[1]).decode()
        if channel == PRICE_WANTS_CHANNEL:
            self._read_now.set()
        elif channel == PRICES_CHANNEL:
            self._on_batch(bytes(frame[2]))

    def _on_batch(self, data: bytes) -> None:
        try:
            node, epoch, prices = decode_batch(data)
        except BadBatch as error:
            self.bad_batches += 1
            if self.bad_batches == 1:
                log.warning("[Cluster] Ignored a malformed price batch", error=str(error))
            return
        if node == self._node_id:
            return  # delivered here when published
        now = self._clock()
        newest = self._newest_epoch
        if newest is not None and epoch < newest and now - self._newest_at < self._stale_s:
            self.stale_batches += 1
            return
        self._newest_epoch, self._newest_at = epoch, now
        self.batches_received += 1
        self.last_batch_at = now
        self._deliver(prices)

    def _deliver(self, prices: Mapping[str, Decimal]) -> None:
        if self._on_prices is None:
            return
        try:
            self._on_prices(prices)
        except Exception:
            log.exception("[Cluster] Price handler failed")


def price_relay_for(settings: Settings, redis: Redis, node_id: str) -> RedisPriceRelay:
    """The relay with the node's settings, on its own pub/sub connection: symbol sets live a
    lease TTL, rewritten (and the union read) every lease renewal interval."""
    return RedisPriceRelay(
        redis,
        pubsub_pool(settings, node_id),
        node_id=node_id,
        entry_ttl_s=settings.lease_ttl_s,
        refresh_s=settings.lease_renew_s,
        timeout_s=settings.redis_timeout_s,
        backoff_initial_s=settings.redis_backoff_initial_s,
        backoff_max_s=settings.redis_backoff_max_s,
    )
