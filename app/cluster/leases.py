"""Leases: exactly one node consumes each broker account's streams, and the market-data stream.

A lease is granted atomically to one node (a Redis hash set only when absent, with a PX expiry)
and every grant takes the lease's next epoch: the fencing token the holder's state writes carry
(``SharedPortfolio.apply(..., epoch=)``), so a holder that lost its lease without knowing it
(paused, cut off) can change nothing. A holder renews well inside the TTL and stops consuming
(self-fencing) once a renewal is overdue, before the TTL can end, by its own monotonic clock
counted from when it *sent* its last successful renewal: a slow answer never extends it. A
graceful stop gives every lease back at once. How leases spread over the nodes: docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.cluster.client import bounded
from app.cluster.keys import LEASE_NODES, lease_grants_key, lease_key
from app.cluster.scripts import Arg, script
from config.logging import get_logger

log = get_logger()

PRICES_LEASE: Final = "prices"
ACCOUNT_LEASE_PREFIX: Final = "account:"

# Why a holder stopped holding: on_lost's reason, and the stats'.
LOST_TAKEN: Final = "taken"  # a renewal found the lease ended or granted again
LOST_OVERDUE: Final = "overdue"  # self-fenced: no renewal succeeded in time
RELEASED_SHARE: Final = "rebalance"  # given back to a node under its share
RELEASED_STOP: Final = "stop"  # graceful stop
RELEASED_UNWANTED: Final = "unwanted"  # no longer among the names this node takes
START_FAILED: Final = "start-failed"  # on_acquired raised

OnAcquired = Callable[[str, int], Awaitable[None] | None]
OnLost = Callable[[str, int, str], Awaitable[None] | None]
Clock = Callable[[], float]


def account_lease(username: str) -> str:
    """The lease on the streams of the broker account that serves ``username``."""
    return f"{ACCOUNT_LEASE_PREFIX}{username}"


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease granted: its epoch (the fencing token) and who held it before, if anyone."""

    epoch: int
    granted_at_ms: int
    previous_holder: str | None
    previous_released: bool


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One lease as Redis has it: the holder and epoch of its current grant (None when free),
    the last epoch ever granted, and the grant's time left."""

    name: str
    holder: str | None
    epoch: int | None
    last_epoch: int
    ttl_left_s: float | None
    held_since_ms: int | None
    renewed_ms: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "holder": self.holder,
            "epoch": self.epoch,
            "lastEpoch": self.last_epoch,
            "ttlLeftSeconds": self.ttl_left_s,
            "heldSinceMs": self.held_since_ms,
            "renewedMs": self.renewed_ms,
        }


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _text(value: Any) -> str | None:
    if value is None or value == b"" or value == "":
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class LeaseTable:
    """The leases in Redis: grant, renew, give back, list. No state of its own."""

    def __init__(self, redis: Redis, *, ttl_s: float, timeout_s: float) -> None:
        self._redis = redis
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._ttl_ms = max(1, round(ttl_s * 1000))

    def _limit(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else max(0.001, timeout_s)

    async def acquire(
        self, name: str, node_id: str, *, at_least: int = 0, timeout_s: float | None = None
    ) -> Grant | None:
        """Grant ``name`` to ``node_id`` unless another node holds it (None then). The epoch
        is the last one granted plus one, and at least ``at_least`` (a floor kept elsewhere,
        for a Redis that lost its data)."""
        async with bounded(self._limit(timeout_s)):
            answer = await script("lease_acquire").run(
                self._redis,
                [lease_key(name), lease_grants_key(name)],
                [node_id, self._ttl_ms, at_least],
            )
        if int(answer[0]) != 1:
            return None
        return Grant(
            epoch=int(answer[1]),
            granted_at_ms=int(answer[2]),
            previous_holder=_text(answer[3]),
            previous_released=_text(answer[4]) == "released",
        )

    async def renew(
        self, name: str, node_id: str, epoch: int, *, timeout_s: float | None = None
    ) -> bool:
        """Extend the grant by the TTL; False when the lease is no longer this grant's."""
        [answer] = await self.renew_many(node_id, [(name, epoch)], timeout_s=timeout_s)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def renew_many(
        self, node_id: str, grants: Sequence[tuple[str, int]], *, timeout_s: float | None = None
    ) -> list[bool | Exception]:
        """Renew several grants in one round trip; per grant True, False (lost) or the error."""
        calls: list[tuple[Sequence[str], Sequence[Arg]]] = [
            ([lease_key(name)], [node_id, epoch, self._ttl_ms]) for name, epoch in grants
        ]
        async with bounded(self._limit(timeout_s)):
            answers = await script("lease_renew").run_many(self._redis, calls)
        return [a if isinstance(a, Exception) else int(a) != 0 for a in answers]

    async def release(
        self, name: str, node_id: str, epoch: int, *, timeout_s: float | None = None
    ) -> bool:
        """Give the grant back at once; False when it was no longer this grant's."""
        async with bounded(self._limit(timeout_s)):
            answer = await script("lease_release").run(
                self._redis, [lease_key(name), lease_grants_key(name)], [node_id, epoch]
            )
        return int(answer) == 1

    async def rows(self, names: Iterable[str], *, timeout_s: float | None = None) -> list[LeaseRow]:
        """Every named lease as Redis has it now, in the order given (one round trip)."""
        names = list(names)
        async with (
            bounded(self._limit(timeout_s)),
            self._redis.pipeline(transaction=False) as pipe,
        ):
            for name in names:
                pipe.hmget(lease_key(name), ["node", "epoch", "since", "renewed"])
                pipe.pttl(lease_key(name))
                pipe.hget(lease_grants_key(name), "epoch")
            answers = await pipe.execute()
        rows = []
        for i, name in enumerate(names):
            (node, epoch, since, renewed), pttl, last = answers[3 * i : 3 * i + 3]
            holder = _text(node)
            rows.append(
                LeaseRow(
                    name=name,
                    holder=holder,
                    epoch=_int(epoch) if holder else None,
                    last_epoch=_int(last) or 0,
                    ttl_left_s=int(pttl) / 1000 if holder and int(pttl) >= 0 else None,
                    held_since_ms=_int(since) if holder else None,
                    renewed_ms=_int(renewed) if holder else None,
                )
            )
        return rows

    async def join(self, node_id: str, *, timeout_s: float | None = None) -> list[str]:
        """Count ``node_id`` among the nodes taking leases for one TTL; returns them all."""
        async with bounded(self._limit(timeout_s)):
            ids = await script("lease_presence").run(
                self._redis, [LEASE_NODES], [node_id, self._ttl_ms]
            )
        return [_text(i) or "" for i in ids]

    async def leave(self, node_id: str, *, timeout_s: float | None = None) -> None:
        async with bounded(self._limit(timeout_s)):
            await self._redis.zrem(LEASE_NODES, node_id)


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """One lease this node takes part in, for the stats. Times are epoch seconds (wall)."""

    name: str
    held: bool
    epoch: int | None
    held_since: float | None
    last_renew: float | None
    renew_failing: bool
    # Seconds until this node stops consuming unless a renewal succeeds (None: not held).
    fences_in_s: float | None
    acquisitions: int
    releases: int
    losses: int
    last_loss: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "held": self.held,
            "epoch": self.epoch,
            "heldSince": self.held_since,
            "lastRenew": self.last_renew,
            "renewFailing": self.renew_failing,
            "fencesInSeconds": self.fences_in_s,
            "acquisitions": self.acquisitions,
            "releases": self.releases,
            "losses": self.losses,
            "lastLoss": self.last_loss,
        }


@dataclass(slots=True)
class _Held:
    epoch: int
    since: float  # wall
    renewed: float  # wall
    valid_from: float  # monotonic: when the last successful grant or renewal was sent
    failing: bool = False


@dataclass(slots=True)
class _Counts:
    acquisitions: int = 0
    releases: int = 0
    losses: int = 0
    last_loss: str | None = None


class LeaseKeeper:
    """One node's leases: takes free ones up to its fair share, renews the ones it holds,
    stops consuming one before its TTL can end when renewals fail, gives back the excess
    when nodes join and everything on ``close``.

    ``on_acquired(name, epoch)`` starts consuming under that epoch; ``on_lost(name, epoch,
    reason)`` stops it, and is awaited before the lease is given back, so the next holder
    never starts while this one still consumes (it also follows an ``on_acquired`` that
    raised: the lease is then given back). Both may be coroutines; keep them short, since
    other leases' deadlines wait on them. Cancel ``run`` before ``close``.
    """

    def __init__(
        self,
        table: LeaseTable,
        node_id: str,
        names: Iterable[str],
        *,
        on_acquired: OnAcquired,
        on_lost: OnLost,
        renew_s: float,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        if renew_s >= table.ttl_s / 2:
            raise ValueError("the renew interval must be under half of the lease TTL")
        self._table = table
        self.node_id = node_id
        self._names = frozenset(names)
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._renew_s = renew_s
        # A renewal must succeed within TTL - one interval of the last one sent.
        self._valid_s = table.ttl_s - renew_s
        self._clock = clock
        self._wall = wall_clock
        self._held: dict[str, _Held] = {}
        self._counts: dict[str, _Counts] = {}
        self._lock = asyncio.Lock()
        self._closed = False
        self._last_step: float | None = None
        self._live: frozenset[str] = frozenset({node_id})

    @property
    def names(self) -> frozenset[str]:
        return self._names

    def set_names(self, names: Iterable[str]) -> None:
        """The leases to take part in from now on; held ones no longer named are given back
        at the next step."""
        self._names = frozenset(names)

    def held(self) -> dict[str, int]:
        """Lease name -> epoch of every lease this node holds now."""
        return {name: lease.epoch for name, lease in self._held.items()}

    def live_nodes(self) -> frozenset[str]:
        """The nodes taking leases, as last read (this node included)."""
        return self._live

    def status(self) -> list[LeaseStatus]:
        """Every lease this node takes part in or held, by name."""
        now = self._clock()
        rows = []
        for name in sorted(self._names | self._held.keys() | self._counts.keys()):
            lease = self._held.get(name)
            counts = self._counts.get(name, _Counts())
            rows.append(
                LeaseStatus(
                    name=name,
                    held=lease is not None,
                    epoch=lease.epoch if lease else None,
                    held_since=lease.since if lease else None,
                    last_renew=lease.renewed if lease else None,
                    renew_failing=lease.failing if lease else False,
                    fences_in_s=(
                        round(max(0.0, lease.valid_from + self._valid_s - now), 3)
                        if lease
                        else None
                    ),
                    acquisitions=counts.acquisitions,
                    releases=counts.releases,
                    losses=counts.losses,
                    last_loss=counts.last_loss,
                )
            )
        return rows

    async def cluster(self) -> list[LeaseRow]:
        """Every lease this node takes part in as Redis has it (holder, epoch, time left),
        whoever holds it: the stats document's cluster-wide view."""
        return await self._table.rows(sorted(self._names))

    async def run(self) -> None:
        """Step until cancelled (then ``close`` gives the leases back)."""
        while True:
            try:
                delay = await self.step()
            except Exception:
                log.exception("[AlpacaStream] Lease keeping failed", node=self.node_id)
                delay = self._renew_s / 2
            await asyncio.sleep(delay)

    async def step(self) -> float:
        """One round: fence overdue leases, renew the held ones, take or give back leases
        towards this node's share. Returns the seconds until the next round is due."""
        async with self._lock:
            if self._closed:
                return self._renew_s
            self._last_step = self._clock()
            await self._renew()
            await self._spread()
            return self._next_delay()

    async def close(self) -> None:
        """Stop consuming and give every lease back at once; leave the spreading."""
        async with self._lock:
            self._closed = True
            for name in list(self._held):
                await self._give_back(name, RELEASED_STOP)
            try:
                await self._table.leave(self.node_id)
            except (RedisError, OSError) as error:
                log.warning("[AlpacaStream] Could not leave the lease spreading", error=repr(error))

    # --- the rounds -----------------------------------------------------------------------

    async def _bound(self) -> float:
        """How long the next exchange with Redis may take: the timeout, cut at the earliest
        fencing deadline; leases already past theirs are fenced first."""
        now = self._clock()
        for name, lease in list(self._held.items()):
            if now >= lease.valid_from + self._valid_s and self._held.get(name) is lease:
                await self._lose(name, LOST_OVERDUE)
        now = self._clock()
        left = [lease.valid_from + self._valid_s - now for lease in self._held.values()]
        return min([self._table.timeout_s, *left])

    async def _renew(self) -> None:
        bound = await self._bound()
        grants = list(self._held.items())
        if not grants:
            return
        sent_at = self._clock()
        try:
            answers = await self._table.renew_many(
                self.node_id, [(name, lease.epoch) for name, lease in grants], timeout_s=bound
            )
        except (RedisError, OSError) as error:
            answers = [error] * len(grants)
        for (name, lease), answer in zip(grants, answers, strict=True):
            if self._held.get(name) is not lease:
                continue
            if isinstance(answer, Exception):
                if not lease.failing:
                    log.warning(
                        "[AlpacaStream] Lease renewal failed",
                        lease=name,
                        epoch=lease.epoch,
                        error=repr(answer),
                        stopsInSeconds=round(lease.valid_from + self._valid_s - self._clock(), 3),
                    )
                lease.failing = True
            elif answer:
                lease.valid_from = sent_at
                lease.renewed = self._wall()
                if lease.failing:
                    log.info("[AlpacaStream] Lease renewed again", lease=name, epoch=lease.epoch)
                lease.failing = False
            else:
                await self._lose(name, LOST_TAKEN)
        await self._bound()

    async def _spread(self) -> None:
        for name in [n for n in self._held if n not in self._names]:
            await self._give_back(name, RELEASED_UNWANTED)
        names = sorted(self._names, key=self._preference, reverse=True)
        if not names:
            return
        try:
            joined = await self._table.join(self.node_id, timeout_s=await self._bound())
            self._live = frozenset(joined) | {self.node_id}
            rows = await self._table.rows(names, timeout_s=await self._bound())
        except (RedisError, OSError):
            return  # the renewal's failure was logged; try again next round
        live = self._live
        floor, extra = divmod(len(names), len(live))
        ceil = floor + (1 if extra else 0)
        others = Counter(
            row.holder for row in rows if row.holder in live and row.holder != self.node_id
        )
        needy = any(others[node] < floor for node in live if node != self.node_id)
        free = [
            row.name
            for row in rows
            if row.name not in self._held and row.holder in (None, self.node_id)
        ]
        mine = len(self._held)
        if mine > ceil or (mine > floor and needy and not free):
            # One per round: the others take it up before the next goes. The market-data
            # lease goes last: moving it restarts the cluster's one price connection.
            least = min(self._held, key=lambda name: (name == PRICES_LEASE, self._preference(name)))
            await self._give_back(least, RELEASED_SHARE)
            return
        wanted = (floor if needy else ceil) - mine
        for name in free:
            if wanted <= 0:
                break
            taken = await self._acquire(name)
            if taken is None:
                break  # Redis failed: the next round tries again
            wanted -= taken

    async def _acquire(self, name: str) -> bool | None:
        """Take ``name`` if free and start consuming it; None when Redis failed."""
        bound = await self._bound()
        sent_at = self._clock()
        try:
            grant = await self._table.acquire(name, self.node_id, timeout_s=bound)
        except (RedisError, OSError) as error:
            log.warning("[AlpacaStream] Lease acquisition failed", lease=name, error=repr(error))
            return None
        if grant is None:
            return False
        now = self._wall()
        self._held[name] = _Held(grant.epoch, since=now, renewed=now, valid_from=sent_at)
        self._counts.setdefault(name, _Counts()).acquisitions += 1
        if grant.epoch > 1:
            log.info(
                "[AlpacaStream] Lease taken over",
                lease=name,
                epoch=grant.epoch,
                node=self.node_id,
                previous=grant.previous_holder,
                handedOver=grant.previous_released,
            )
        else:
            log.info("[AlpacaStream] Lease acquired", lease=name, epoch=1, node=self.node_id)
        try:
            await _call(self._on_acquired, name, grant.epoch)
        except Exception:
            log.exception("[AlpacaStream] Could not start consuming under a lease", lease=name)
            if self._held.get(name) is not None:
                await self._give_back(name, START_FAILED)
            return False
        return True

    async def _lose(self, name: str, reason: str) -> None:
        lease = self._held.pop(name)
        counts = self._counts.setdefault(name, _Counts())
        counts.losses += 1
        counts.last_loss = reason
        if reason == LOST_OVERDUE:
            log.error(
                "[AlpacaStream] Lease renewal overdue: stopped consuming",
                lease=name,
                epoch=lease.epoch,
                node=self.node_id,
            )
        else:
            log.warning(
                "[AlpacaStream] Lease lost to another grant: stopped consuming",
                lease=name,
                epoch=lease.epoch,
                node=self.node_id,
            )
        await self._notify_lost(name, lease.epoch, reason)

    async def _give_back(self, name: str, reason: str) -> None:
        """Stop consuming, then release: the next holder starts only after this one stopped."""
        lease = self._held.pop(name)
        counts = self._counts.setdefault(name, _Counts())
        counts.releases += 1
        await self._notify_lost(name, lease.epoch, reason)
        try:
            released = await self._table.release(name, self.node_id, lease.epoch)
        except (RedisError, OSError) as error:
            log.warning(
                "[AlpacaStream] Lease not released: it ends with its TTL",
                lease=name,
                epoch=lease.epoch,
                error=repr(error),
            )
            return
        log.info(
            "[AlpacaStream] Lease released",
            lease=name,
            epoch=lease.epoch,
            node=self.node_id,
            reason=reason,
            wasHeld=released,
        )

    async def _notify_lost(self, name: str, epoch: int, reason: str) -> None:
        try:
            await _call(self._on_lost, name, epoch, reason)
        except Exception:
            log.exception("[AlpacaStream] Stopping a lease's consumer failed", lease=name)

    def _next_delay(self) -> float:
        now = self._clock()
        started = self._last_step if self._last_step is not None else now
        failing = any(lease.failing for lease in self._held.values())
        due = [started + (self._renew_s / 2 if failing else self._renew_s)]
        due.extend(lease.valid_from + self._valid_s for lease in self._held.values())
        return max(0.0, min(due) - now)

    def _preference(self, name: str) -> bytes:
        """Rendezvous order: each node prefers its own pseudo-random subset of the leases, so
        nodes starting together mostly try different ones first."""
        return hashlib.blake2b(f"{self.node_id}\0{name}".encode(), digest_size=8).digest()


async def _call(callback: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    result = callback(*args)
    if inspect.isawaitable(result):
        await result
