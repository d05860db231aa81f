"""This node's connection slots in the cluster-wide admission (``ClusterAdmission``).

``admit`` asks Redis for a slot before a connection is served; ``release`` gives it back
(batched, off the connection's path). A background loop refreshes every held slot well inside
its TTL, so a node that dies leaks its slots for at most one TTL, and registers again the
slots Redis no longer has (it restarted, or the node admitted while it was away).

Without Redis the node admits by its own limits only (the caller applies them) and does not
ask Redis again until the background loop finds it back: one ``ERROR`` line when that starts,
one ``INFO`` when Redis answers again, and ``available`` says which.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from redis.exceptions import RedisError

from app.cluster.admission import Admission, ClusterAdmission, Slot
from config.logging import get_logger

log = get_logger()

# Slot refreshes per TTL: two may fail in a row (a Redis blip) before a slot lapses.
REFRESHES_PER_TTL: Final = 3
# While Redis is away, admissions do not wait on it (each would cost a connect timeout); the
# background loop tries it this often instead, and admissions use it again once it answers.
RETRY_WHILE_AWAY_S: Final = 1.0


class SlotKeeper:
    def __init__(self, admission: ClusterAdmission, *, ttl_s: float) -> None:
        self._admission = admission
        self._interval = ttl_s / REFRESHES_PER_TTL
        self._held: dict[str, Slot] = {}
        self._to_release: list[Slot] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.available = True
        self.restored = 0

    async def admit(self, connection_id: str, user_id: str) -> Admission | None:
        """The cluster's verdict, or None when Redis did not answer (admit by local limits)."""
        slot = Slot(connection_id, user_id)
        if not self.available:
            self._held[connection_id] = slot  # registered once Redis is back
            return None
        try:
            verdict = await self._admission.admit(slot)
        except (RedisError, OSError) as error:
            self._unavailable(error)
            self._held[connection_id] = slot  # registered once Redis is back
            return None
        self._available_again()
        if verdict.admitted:
            self._held[connection_id] = slot
        return verdict

    def release(self, connection_id: str) -> None:
        slot = self._held.pop(connection_id, None)
        if slot is not None:
            self._to_release.append(slot)
            self._wake.set()

    @property
    def held(self) -> int:
        return len(self._held)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-slots")

    async def close(self) -> None:
        """Stop refreshing; the node's remaining slots are given back by ``release_node``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            interval = self._interval if self.available else min(self._interval, RETRY_WHILE_AWAY_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            try:
                await self._release_queued()
                await self._refresh()
            except (RedisError, OSError) as error:
                self._unavailable(error)

    async def _release_queued(self) -> None:
        while self._to_release:
            batch, self._to_release = self._to_release, []
            try:
                await self._admission.release(batch)
            except BaseException:
                self._to_release = batch + self._to_release
                raise

    async def _refresh(self) -> None:
        slots = list(self._held.values())
        if not slots:
            if not self.available:
                await self._admission.node_slots()  # does Redis answer?
                self._available_again()
            return
        missing = await self._admission.refresh(slots)
        self._available_again()
        for slot in missing:
            if self._held.get(slot.connection_id) == slot:
                # Open here, unknown to Redis: count it again, whatever the limits say.
                await self._admission.restore(slot)
                self.restored += 1
        if missing:
            log.info("[Cluster] Connection slots registered again", count=len(missing))

    def _unavailable(self, error: BaseException) -> None:
        if self.available:
            self.available = False
            log.error(
                "[Cluster] Redis unavailable: admitting by this node's limits only",
                error=repr(error),
            )

    def _available_again(self) -> None:
        if not self.available:
            self.available = True
            log.info("[Cluster] Redis available: cluster-wide connection limits apply again")
