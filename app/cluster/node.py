"""Everything one node needs of Redis, built from Settings, started and stopped as one resource.

The app's wiring holds one ``ClusterNode`` (a ``cleanup_ctx``): ``start`` before serving,
``close`` on the way out, after the last connection was closed (it gives this node's
connection slots back and drops its stats row, so other nodes see it gone at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable

from redis.exceptions import RedisError

from app.cluster.admission import ClusterAdmission
from app.cluster.client import bounded, command_client, node_id_for, pubsub_pool
from app.cluster.counters import ExpiringCounters
from app.cluster.keys import GENERATION
from app.cluster.registry import NodeFigures, NodeRegistry
from app.cluster.scripts import load_all
from app.cluster.state import SharedPortfolio
from app.cluster.subscriber import NoticeSubscriber
from app.events import Event
from config.logging import get_logger
from config.settings import Settings

log = get_logger()


class ClusterNode:
    """This node's Redis-backed parts. ``on_event`` gets every notice of a held user, in
    order; ``on_resync(user_id)`` asks for that user's state to be read again (see
    ``NoticeSubscriber``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_event: Callable[[Event], None],
        on_resync: Callable[[str], None],
        on_forget: Callable[[str], None] | None = None,
    ) -> None:
        self.node_id = node_id_for(settings)
        timeout = settings.redis_timeout_s
        self.redis = command_client(settings, self.node_id)
        self._pool = pubsub_pool(settings, self.node_id)
        self.state = SharedPortfolio(
            self.redis, recent_orders_limit=settings.recent_orders_limit, timeout_s=timeout
        )
        self.subscriber = NoticeSubscriber(
            self._pool,
            self.redis,
            node_id=self.node_id,
            on_event=on_event,
            on_resync=on_resync,
            on_forget=on_forget,
            unsubscribe_delay_s=settings.redis_unsubscribe_delay_s,
            probe_interval_s=settings.redis_probe_interval_s,
            backoff_initial_s=settings.redis_backoff_initial_s,
            backoff_max_s=settings.redis_backoff_max_s,
            timeout_s=timeout,
        )
        self.admission = ClusterAdmission(
            self.redis,
            node_id=self.node_id,
            ttl_s=settings.cluster_entry_ttl_s,
            max_per_user=settings.max_connections_per_user,
            max_total=settings.max_total_connections,
            timeout_s=timeout,
        )
        self.registry = NodeRegistry(
            self.redis,
            report_interval_s=settings.cluster_node_report_interval_s,
            timeout_s=timeout,
        )
        self._timeout = timeout
        self._reports: asyncio.Task[None] | None = None

    def counters(self, namespace: str) -> ExpiringCounters:
        """Cluster-wide expiring counters, e.g. ``counters("login:user")`` for the throttle."""
        return ExpiringCounters(self.redis, namespace, timeout_s=self._timeout)

    async def start(self) -> None:
        """Start the subscriber; a Redis that is away is not an error here (it reconnects)."""
        try:
            async with bounded(self._timeout):
                await load_all(self.redis)
                # A fresh Redis is a whole (empty) state. Only a token that disappears later
                # says Redis lost data (see app.cluster.bus): readers then wait for a rebuild.
                await self.redis.set(GENERATION, secrets.token_hex(8), nx=True)
            # A restart under the same NODE_ID: what the previous run held is not held now.
            released = await self.admission.release_node()
            if released:
                log.info("[Cluster] Released slots left by this node's last run", count=released)
        except RedisError as error:
            log.warning("[Cluster] Redis unavailable at start", error=repr(error))
        await self.subscriber.start()

    def start_reports(self, collect: Callable[[float | None], NodeFigures]) -> None:
        """Write this node's stats row every interval (``NodeRegistry.run``)."""
        self._reports = asyncio.create_task(self.registry.run(collect), name="cluster-reports")

    async def close(self) -> None:
        if self._reports is not None:
            self._reports.cancel()
            await asyncio.wait([self._reports])
        await self.subscriber.close()
        with contextlib.suppress(RedisError):
            await self.admission.release_node()
            await self.registry.remove(self.node_id)
        await self.redis.aclose()
        await self._pool.disconnect()
