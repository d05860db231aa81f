"""Cluster-wide connection limits: one atomic script over expiring slots in Redis.

Each open WebSocket holds a slot in three sorted sets (its user's, the cluster's, its node's)
scored by expiry in Redis's own clock (``TIME``: nodes' clocks never enter). Admission first
drops expired slots, then refuses when the user or the cluster is at its limit. The heartbeat
refreshes live slots; closing releases them; a node that dies (SIGKILL) stops refreshing, and
its slots lapse within one TTL. Counters that go up and down would leak forever on a crash.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from redis.asyncio import Redis

from app.cluster.client import bounded
from app.cluster.keys import CONN_ALL, conn_node_key, conn_user_key
from app.cluster.scripts import Arg, script

# Slots per script call when many are refreshed or released at once: one call holds Redis for
# a bounded time.
CALL_BATCH = 500


@dataclass(frozen=True, slots=True)
class Slot:
    """One connection's place: ``<connectionId> <userId>`` in Redis (ids carry no space)."""

    connection_id: str
    user_id: str

    def __post_init__(self) -> None:
        if " " in self.connection_id or not self.connection_id:
            raise ValueError("a connection id is non-empty and has no space")

    @property
    def member(self) -> str:
        return f"{self.connection_id} {self.user_id}"

    @classmethod
    def from_member(cls, member: bytes | str) -> Slot:
        text = member.decode() if isinstance(member, bytes) else member
        connection_id, _, user_id = text.partition(" ")
        return cls(connection_id, user_id)


@dataclass(frozen=True, slots=True)
class Admission:
    """``refused`` names the limit that was reached: ``"user"`` or ``"total"``."""

    admitted: bool
    refused: Literal["user", "total"] | None
    user_connections: int
    total_connections: int


class ClusterAdmission:
    """This node's view of the cluster's connection slots."""

    def __init__(
        self,
        redis: Redis,
        *,
        node_id: str,
        ttl_s: float,
        max_per_user: int,
        max_total: int,
        timeout_s: float,
    ) -> None:
        self._redis = redis
        self._timeout = timeout_s
        self._node_key = conn_node_key(node_id)
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._limits = (max_per_user, max_total)

    async def admit(self, slot: Slot) -> Admission:
        """Take a slot if neither the user's nor the cluster's limit is reached."""
        return await self._admit(slot, restore=False)

    async def restore(self, slot: Slot) -> Admission:
        """Register an already open connection again, whatever the limits (Redis came back
        without it): refusing would not close the socket, only hide it from the count."""
        return await self._admit(slot, restore=True)

    async def _admit(self, slot: Slot, *, restore: bool) -> Admission:
        keys = [conn_user_key(slot.user_id), CONN_ALL, self._node_key]
        args = [slot.member, self._ttl_ms, *self._limits, "1" if restore else "0"]
        async with bounded(self._timeout):
            answer = await script("admit").run(self._redis, keys, args)
        admitted, reason, users, total = answer
        refused: Literal["user", "total"] | None = None
        if not int(admitted):
            refused = "user" if reason == b"user" else "total"
        return Admission(refused is None, refused, int(users), int(total))

    async def refresh(self, slots: Sequence[Slot]) -> list[Slot]:
        """Extend the slots by one TTL; returns those Redis no longer held (expired or lost)."""
        missing: list[Slot] = []
        for batch in _batches(slots):
            keys = [CONN_ALL, self._node_key, *(conn_user_key(s.user_id) for s in batch)]
            args: list[Arg] = [self._ttl_ms, *(s.member for s in batch)]
            async with bounded(self._timeout):
                answer = await script("refresh").run(self._redis, keys, args)
            missing.extend(Slot.from_member(member) for member in answer)
        return missing

    async def release(self, slots: Sequence[Slot]) -> int:
        """Give slots back (connections closed); returns how many were still held."""
        return await self._release(slots)

    async def release_node(self) -> int:
        """Give back every slot this node holds (graceful stop, or a restart under the same
        NODE_ID clearing what its previous run left)."""
        released = 0
        while True:
            async with bounded(self._timeout):
                members = cast(
                    "list[bytes]", await self._redis.zrange(self._node_key, 0, CALL_BATCH - 1)
                )
            if not members:
                return released
            released += await self._release([Slot.from_member(m) for m in members])

    async def census(self) -> dict[str, int]:
        """Live connections per user, cluster-wide."""
        async with bounded(self._timeout):
            members = await script("census").run(self._redis, [CONN_ALL], [])
        return dict(Counter(Slot.from_member(m).user_id for m in members))

    async def node_slots(self) -> list[Slot]:
        """This node's live slots."""
        async with bounded(self._timeout):
            members = await script("census").run(self._redis, [self._node_key], [])
        return [Slot.from_member(m) for m in members]

    async def _release(self, slots: Sequence[Slot]) -> int:
        released = 0
        for batch in _batches(slots):
            keys = [CONN_ALL, self._node_key, *(conn_user_key(s.user_id) for s in batch)]
            async with bounded(self._timeout):
                answer = await script("release").run(self._redis, keys, [s.member for s in batch])
            released += int(answer)
        return released


def _batches(slots: Sequence[Slot]) -> Iterable[Sequence[Slot]]:
    for start in range(0, len(slots), CALL_BATCH):
        yield slots[start : start + CALL_BATCH]
