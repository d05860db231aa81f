"""Users' latest-value portfolio state in Redis, written and published atomically.

The node that consumes a broker account applies each of its events here: one script checks the
writer's account epoch (fencing), writes the state, counts the user's offset and publishes the
change notice. Any node reads a user's whole state with its epoch and offset in one step, for
snapshots. Keys and the notice format: ``app.cluster.keys``, ``app.cluster.notices``.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from app.cluster.client import bounded
from app.cluster.keys import GENERATION, UserKeys
from app.cluster.notices import decode_json_object, script_args
from app.cluster.scripts import Arg, script
from app.events import Event, validate_payload
from app.portfolio import UserPortfolio


@dataclass(frozen=True, slots=True)
class WriteResult:
    """``applied``: the event is in the state and its notice was published at ``offset``.
    Refused (an older writer): ``fencing_epoch`` is the newer epoch that Redis holds."""

    applied: bool
    epoch: str | None
    offset: int | None
    fencing_epoch: int


@dataclass(frozen=True, slots=True)
class UserState:
    """A user's state at one offset. ``epoch`` is None when nothing was ever written (or Redis
    lost it); the first notice then has offset 1."""

    user_id: str
    epoch: str | None
    offset: int
    fencing_epoch: int
    portfolio: UserPortfolio
    # The shared state's generation when it was read (None: Redis lost its data and the
    # consumer has not rebuilt it yet, or nothing ever consumed into it).
    generation: str | None = None

    def snapshot(self, channels: frozenset[str] | set[str]) -> dict[str, Any]:
        """The body of a ``snapshot`` message, exactly as the in-process store builds it."""
        return self.portfolio.snapshot(channels)


class SharedPortfolio:
    """Apply events to, and read, the state that every node shares."""

    def __init__(self, redis: Redis, *, recent_orders_limit: int, timeout_s: float) -> None:
        self._redis = redis
        self._recent_limit = recent_orders_limit
        self._timeout = timeout_s
        self._apply = script("apply_events")
        self._replace = script("replace_state")
        self._read = script("read_state")

    def _call(
        self, user_id: str, events: Sequence[Event], epoch: int
    ) -> tuple[list[str], list[Arg]]:
        """One call of the write script for a run of one user's events."""
        keys = UserKeys.of(user_id)
        args: list[Arg] = [
            epoch,
            # Used only if the user has no state yet: a fresh epoch per state lifetime.
            secrets.token_hex(6),
            self._recent_limit,
            keys.channel,
        ]
        for event in events:
            validate_payload(event.type, event.payload)
            args.extend(script_args(event))
        return keys.state_keys, args

    async def apply(self, event: Event, *, epoch: int) -> WriteResult:
        """Write one event as the holder of account epoch ``epoch``."""
        [result] = await self.apply_many([event], epoch=epoch)
        return result

    async def apply_many(
        self, events: Sequence[Event], *, epoch: int | Sequence[int]
    ) -> list[WriteResult]:
        """Write events in one round trip; results in the same order. ``epoch`` is the
        writer's account epoch for all of them, or one per event.

        Each user's events go in one script call per epoch, in their order (users' offsets
        are independent, so the order between users does not matter). A call that failed in
        Redis raises after the others were applied: everything before it is written.
        """
        if not events:
            return []
        epochs = [epoch] * len(events) if isinstance(epoch, int) else list(epoch)
        runs: dict[tuple[str, int], list[int]] = {}
        for index, (event, e) in enumerate(zip(events, epochs, strict=True)):
            runs.setdefault((event.user_id, e), []).append(index)
        groups = list(runs.items())
        calls = [
            self._call(user_id, [events[i] for i in indexes], e) for (user_id, e), indexes in groups
        ]
        async with bounded(self._timeout):
            answers = await self._apply.run_many(self._redis, calls)
        results: list[WriteResult | None] = [None] * len(events)
        for ((_, e), indexes), answer in zip(groups, answers, strict=True):
            if isinstance(answer, Exception):
                raise answer
            if int(answer[0]) == 1:
                state_epoch, last = answer[1].decode(), int(answer[2])
                first = last - len(indexes) + 1
                for n, index in enumerate(indexes):
                    results[index] = WriteResult(True, state_epoch, first + n, e)
            else:
                refused = WriteResult(False, None, None, int(answer[1]))
                for index in indexes:
                    results[index] = refused
        return [r for r in results if r is not None]

    async def replace(self, user_id: str, events: Sequence[Event], *, epoch: int) -> WriteResult:
        """Make ``events`` the user's whole state, in one step under a new state epoch; readers
        get one ``state:reset`` notice and re-read it. Events of other users are refused."""
        keys = UserKeys.of(user_id)
        args: list[Arg] = [
            epoch,
            secrets.token_hex(6),
            self._recent_limit,
            keys.channel,
            f"{time.time():.6f}",
            orjson.dumps(user_id),
        ]
        for event in events:
            if event.user_id != user_id:
                raise ValueError(f"an event of user {event.user_id!r} in {user_id!r}'s state")
            validate_payload(event.type, event.payload)
            kind, payload, field, terminal, _, _ = script_args(event)
            args.extend((kind, payload, field, terminal))
        async with bounded(self._timeout):
            answer = await self._replace.run(self._redis, keys.state_keys, args)
        return _write_result(answer, epoch)

    async def read(self, user_id: str) -> UserState:
        """The user's whole state and the offset it is at, read atomically, with the shared
        state's generation (read just before, in the same round trip)."""
        keys = UserKeys.of(user_id)
        async with bounded(self._timeout), self._redis.pipeline(transaction=False) as pipe:
            pipe.get(GENERATION)
            pipe.evalsha(self._read.sha, len(keys.state_keys), *keys.state_keys)
            generation, answer = await pipe.execute(raise_on_error=False)
        if isinstance(answer, NoScriptError):
            async with bounded(self._timeout):
                answer = await self._read.run(self._redis, keys.state_keys, [])
        for result in (generation, answer):
            if isinstance(result, Exception):
                raise result
        epoch, offset, fencing, flat_positions, orders, account = answer
        portfolio = UserPortfolio()
        for i in range(0, len(flat_positions), 2):
            portfolio.positions[flat_positions[i].decode()] = decode_json_object(
                flat_positions[i + 1]
            )
        # The script returns the newest first; UserPortfolio keeps the oldest first.
        recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        for raw in reversed(orders):
            order = decode_json_object(raw)
            recent[str(order["orderId"])] = order
        portfolio.orders = recent
        portfolio.account = decode_json_object(account) if account else None
        return UserState(
            user_id=user_id,
            epoch=epoch.decode() or None,
            offset=int(offset),
            fencing_epoch=int(fencing),
            portfolio=portfolio,
            generation=generation.decode() if generation else None,
        )


def _write_result(answer: list[Any], epoch: int) -> WriteResult:
    if int(answer[0]) == 1:
        return WriteResult(True, answer[1].decode(), int(answer[2]), epoch)
    return WriteResult(False, None, None, int(answer[1]))
