"""One node of a cluster, as the app uses it: the Redis bus, the view of held users' state, the
connection slots and the stats row, built together from Settings (REDIS_URL set).

The app holds one ``ClusterRuntime`` (``app.keys.CLUSTER_KEY``). Start order: ``start`` (Redis
scripts, the subscriber, the slot refresher), the bus; then, once the stream serves,
``start_reports``. Stop order is the reverse; ``close`` runs after the last socket closed and
gives this node's slots and stats row back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from redis.exceptions import RedisError

from app.broker import CONSUMING, AccountStatus, Broker
from app.cluster.admission import Admission
from app.cluster.bus import RedisBus
from app.cluster.leases import (
    ACCOUNT_LEASE_PREFIX,
    PRICES_LEASE,
    LeaseKeeper,
    LeaseRow,
    LeaseTable,
    account_lease,
)
from app.cluster.node import ClusterNode
from app.cluster.registry import NodeFigures, NodeRow
from app.cluster.slots import SlotKeeper
from app.cluster.view import ClusterView
from app.metrics import ClusterGauges
from app.portfolio import PortfolioStore
from app.stats import StatsTotals
from config.settings import Settings


@dataclass(frozen=True, slots=True)
class ClusterHealth:
    redis: Literal["connected", "unavailable"]
    degraded: bool

    def as_json(self) -> dict[str, Any]:
        return {"redis": self.redis, "degraded": self.degraded}


@dataclass(frozen=True, slots=True)
class ClusterFigures:
    """What the stats document needs of the cluster, read in one go."""

    rows: list[NodeRow]
    by_user: dict[str, int]


class ClusterRuntime:
    def __init__(self, settings: Settings, mirror: PortfolioStore) -> None:
        self.settings = settings
        self.node = ClusterNode(
            settings,
            on_event=self._on_event,
            on_resync=self._on_resync,
            on_forget=self._on_forget,
        )
        self.node_id = self.node.node_id
        self.bus = RedisBus(
            self.node.state,
            self.node.redis,
            timeout_s=settings.redis_timeout_s,
            backoff_initial_s=settings.redis_backoff_initial_s,
            backoff_max_s=settings.redis_backoff_max_s,
        )
        self.view = ClusterView(
            self.node.state,
            self.node.subscriber,
            mirror,
            subscribe_timeout_s=settings.redis_timeout_s,
        )
        self.slots = SlotKeeper(self.node.admission, ttl_s=settings.cluster_entry_ttl_s)
        self.leases = LeaseTable(
            self.node.redis, ttl_s=settings.lease_ttl_s, timeout_s=settings.redis_timeout_s
        )
        self.keeper: LeaseKeeper | None = None
        self._keeper_task: asyncio.Task[None] | None = None
        self._consumed_users: dict[str, str] = {}  # lease name -> user id
        self.started_at = time.monotonic()
        self.last_rtt_s: float | None = None

    # The subscriber's callbacks, bound late: the bus and view exist once __init__ is through.
    def _on_event(self, event: Any) -> None:
        self.bus.deliver(event)

    def _on_resync(self, user_id: str) -> None:
        self.view.on_resync(user_id)

    def _on_forget(self, user_id: str) -> None:
        self.view.on_forget(user_id)

    async def start(self) -> None:
        await self.node.start()
        self.slots.start()

    def start_reports(
        self, collect: Callable[[], tuple[int, int, list[AccountStatus], StatsTotals]]
    ) -> None:
        """Write this node's stats row every interval; ``collect`` returns (connections,
        users, the accounts consumed here, stream totals)."""

        def figures(rtt_s: float | None) -> NodeFigures:
            self.last_rtt_s = rtt_s
            return self.figures(*collect())

        self.node.start_reports(figures)

    # -- broker accounts: which node consumes each ------------------------------------------

    def start_leases(self, broker: Broker) -> None:
        """Compete for the leases of the accounts ``broker`` may consume (SPEC §11): a grant
        starts the account here with the grant's epoch on every write; a loss (another grant,
        an overdue renewal, a stop) stops it before anything more of it is written."""
        names = [account_lease(username) for username in broker.consumable_accounts()]
        if not names:
            return
        # The market-data connection too: Alpaca allows one per key (406 for a second).
        names.append(PRICES_LEASE)
        bus = self.bus

        async def acquired(name: str, epoch: int) -> None:
            if name == PRICES_LEASE:
                broker.start_prices(epoch)
                return
            user_id = await broker.consume(name.removeprefix(ACCOUNT_LEASE_PREFIX))
            if user_id is not None:
                # Before the account's first publish: its stream is still connecting.
                bus.set_epoch(user_id, epoch)
                self._consumed_users[name] = user_id

        async def lost(name: str, epoch: int, reason: str) -> None:
            if name == PRICES_LEASE:
                await broker.stop_prices(reason)
                return
            await broker.stop_consuming(name.removeprefix(ACCOUNT_LEASE_PREFIX), reason)
            user_id = self._consumed_users.pop(name, None)
            if user_id is not None:
                bus.set_epoch(user_id, None)

        self.keeper = LeaseKeeper(
            self.leases,
            self.node_id,
            names,
            on_acquired=acquired,
            on_lost=lost,
            renew_s=self.settings.lease_renew_s,
        )
        self._keeper_task = asyncio.create_task(self.keeper.run(), name="cluster-leases")

    async def stop_leases(self) -> None:
        """Stop consuming and give every lease back at once (a graceful stop hands over to
        another node now, not after a TTL). Idempotent."""
        task, self._keeper_task = self._keeper_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if self.keeper is not None:
            await self.keeper.close()

    async def lease_rows(self) -> list[LeaseRow]:
        """Every account lease as Redis has it; empty when this node consumes none."""
        if self.keeper is None:
            return []
        try:
            return await self.keeper.cluster()
        except (RedisError, OSError):
            return []

    @staticmethod
    def consumed_accounts(broker: Broker) -> list[AccountStatus]:
        """The status of each account consumed here, for this node's stats row."""
        return [a for a in broker.accounts_status() if a["status"] in CONSUMING]

    async def close(self) -> None:
        await self.stop_leases()
        await self.view.close()
        await self.slots.close()
        await self.node.close()

    # -- connections -------------------------------------------------------------------------

    async def admit(self, connection_id: str, user_id: str) -> Admission | None:
        """Take a cluster-wide slot and follow the user's state; None: Redis did not answer
        (the caller's local limits decide). A refused connection holds nothing."""
        verdict = await self.slots.admit(connection_id, user_id)
        if verdict is not None and not verdict.admitted:
            return verdict
        await self.view.hold(user_id)
        return verdict

    def release(self, connection_id: str, user_id: str) -> None:
        """Undo a successful ``admit``."""
        self.slots.release(connection_id)
        self.view.release(user_id)

    # -- health and stats --------------------------------------------------------------------

    @property
    def health(self) -> ClusterHealth:
        connected = (
            self.node.subscriber.status.connected
            and self.slots.available
            and self.bus.status.available
        )
        return ClusterHealth("connected" if connected else "unavailable", not connected)

    def gauges(self) -> ClusterGauges:
        status, bus = self.node.subscriber.status, self.bus.status
        return ClusterGauges(
            redis_up=self.health.redis == "connected",
            pubsub_lag_s=status.lag_s,
            write_queue=bus.pending,
            resyncs=status.resyncs,
            gaps=status.gaps,
            rebuilds=bus.rebuilds,
        )

    def figures(
        self, connections: int, users: int, consumed: list[AccountStatus], totals: StatsTotals
    ) -> NodeFigures:
        status = self.node.subscriber.status
        rtt = self.last_rtt_s
        return NodeFigures(
            node_id=self.node_id,
            connections=connections,
            users=users,
            accounts=len(consumed),
            uptime_s=time.monotonic() - self.started_at,
            redis_rtt_ms=None if rtt is None else round(rtt * 1000, 3),
            pubsub_lag_ms=None if status.lag_s is None else round(status.lag_s * 1000, 3),
            degraded=self.health.degraded,
            totals=totals,
            consumed=tuple(dict(a) for a in consumed),
        )

    async def read_figures(self) -> ClusterFigures | None:
        """Every live node's row and the cluster's connections per user; None without Redis."""
        try:
            rows = await self.node.registry.live()
            by_user = await self.node.admission.census()
        except (RedisError, OSError):
            return None
        return ClusterFigures(rows, by_user)

    async def portfolio(self, user_id: str) -> dict[str, Any] | None:
        """A user's whole shared state as a snapshot body (the polling fallback); None when
        Redis cannot say."""
        try:
            state = await self.node.state.read(user_id)
        except (RedisError, OSError):
            return None
        if state.generation is None and state.epoch is None:
            return None
        return state.snapshot({"positions", "orders", "account"})
