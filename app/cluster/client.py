"""Redis connections for a node: the shared command client and the pub/sub connection pool.

Both rely on redis-py 8's TCP keepalive defaults (idle 30 s, then 3 probes 5 s apart) to notice
a dead peer. Timeouts are short: a node must fall back to its local limits quickly rather than
hold a browser's upgrade while Redis is away. The pub/sub pool makes one connection attempt per
call and never retries by itself: the subscriber owns its reconnects (backoff, resubscribe,
resync), and a library-level silent reconnect would hide exactly the moment notices were lost.

No ``socket_timeout``: redis-py bounds each write with ``asyncio.wait_for``, which on Python
3.11 loses a task's cancellation when the write completes in the same instant (CPython
gh-86296, fixed in 3.12), so a cancelled task could run on and a shutdown hang. Every call
is bounded instead by ``bounded()`` (``asyncio.timeout``, which does not lose it); a call cut
short disconnects its connection, so no half-read reply is left behind.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from config.settings import Settings

# One retry after a short jittered pause covers a pooled connection that died with a restarted
# Redis. More would stall a WebSocket upgrade or the event writer for seconds during an outage.
COMMAND_RETRIES = 1


def node_id_for(settings: Settings) -> str:
    """NODE_ID, else ``<hostname>:<port>``, else (port 0: picked at bind) the host and a token."""
    if settings.node_id:
        return settings.node_id
    suffix = str(settings.port) if settings.port else secrets.token_hex(3)
    return f"{socket.gethostname()}:{suffix}"


def _redis_url(settings: Settings) -> str:
    if not settings.redis_url:
        raise ValueError("REDIS_URL is not set")
    return settings.redis_url


def command_client(settings: Settings, node_id: str) -> Redis:
    """The client for scripts, reads and publishes (a pool of connections)."""
    return Redis.from_url(
        _redis_url(settings),
        socket_timeout=None,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.2), COMMAND_RETRIES),
        client_name=f"portfolio-stream:{node_id}",
    )


def pubsub_pool(settings: Settings, node_id: str) -> ConnectionPool:
    """Where the subscriber takes its one connection from, once per (re)connect."""
    return ConnectionPool.from_url(
        _redis_url(settings),
        socket_timeout=None,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(NoBackoff(), 0),
        # RESP2: on a subscribed connection every frame is then a plain array read in order;
        # under RESP3 (redis-py 8's default) they are pushes, routed through push handlers.
        protocol=2,
        client_name=f"portfolio-stream:{node_id}:pubsub",
    )


@asynccontextmanager
async def bounded(timeout_s: float) -> AsyncIterator[None]:
    """Bound one exchange with Redis; running out of time raises redis-py's TimeoutError, a
    ``RedisError`` like every other Redis failure."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as error:
        raise RedisTimeoutError(f"no answer from Redis within {timeout_s:g} s") from error
