"""Every Redis key and channel name the cluster uses, in one place (docs/scaling.md lists them).

Names share the prefix ``pf``. Keys whose scripts touch several of them at once carry one hash
tag (``{<userId>}``, ``{conn}``, ``{nodes}``) so that all keys of one script live in one Redis
Cluster slot: today one Redis serves everything, and the tags keep a later move to Cluster open.
Channels are not keys, but a user's channel carries the same tag so a sharded publish from the
write script would stay in the user's slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PREFIX: Final = "pf"
USER_CHANNEL_PREFIX: Final = f"{PREFIX}.u."


@dataclass(frozen=True, slots=True)
class UserKeys:
    """A user's latest-value state and its change channel.

    - ``meta``: HASH ``e`` state epoch (a random token made when the state is first written, so
      a Redis that lost its data is told apart from one that did not), ``o`` offset (one per
      applied event), ``fe`` fencing epoch (the newest writer's account epoch).
    - ``positions``: HASH symbol -> ``position:updated`` payload (JSON).
    - ``orders``: HASH order id -> ``order:updated`` payload (JSON).
    - ``order_recency``: ZSET order id -> offset of its last update (snapshot order).
    - ``orders_done``: ZSET terminal order id -> offset (which closed orders to evict first).
    - ``account``: STRING, the latest ``account:updated`` payload (JSON).
    - ``channel``: where the write script publishes each change notice.
    """

    meta: str
    positions: str
    orders: str
    order_recency: str
    orders_done: str
    account: str
    channel: str

    @classmethod
    def of(cls, user_id: str) -> UserKeys:
        base = f"{PREFIX}:{{{user_id}}}"
        return cls(
            meta=f"{base}:meta",
            positions=f"{base}:pos",
            orders=f"{base}:ord",
            order_recency=f"{base}:ord:recent",
            orders_done=f"{base}:ord:done",
            account=f"{base}:acct",
            channel=user_channel(user_id),
        )

    @property
    def state_keys(self) -> list[str]:
        """The keys the write and read scripts take, in the order the scripts expect."""
        return [
            self.meta,
            self.positions,
            self.orders,
            self.order_recency,
            self.orders_done,
            self.account,
        ]


def user_channel(user_id: str) -> str:
    return f"{USER_CHANNEL_PREFIX}{{{user_id}}}"


def user_of_channel(channel: str) -> str | None:
    """The user id a user channel belongs to, or None for any other channel."""
    if not channel.startswith(USER_CHANNEL_PREFIX + "{") or not channel.endswith("}"):
        return None
    return channel[len(USER_CHANNEL_PREFIX) + 1 : -1]


def probe_channel(node_id: str) -> str:
    """A node's own pub/sub liveness probe: only that node publishes and subscribes here."""
    return f"{PREFIX}.probe.{node_id}"


# Admission: ZSETs of connection slots scored by expiry (Redis TIME, ms). Members are
# "<connectionId> <userId>" everywhere, so the cluster-wide set alone yields per-user counts.
CONN_TAG: Final = "{conn}"
CONN_ALL: Final = f"{PREFIX}:{CONN_TAG}:all"


def conn_user_key(user_id: str) -> str:
    return f"{PREFIX}:{CONN_TAG}:u:{user_id}"


def conn_node_key(node_id: str) -> str:
    return f"{PREFIX}:{CONN_TAG}:n:{node_id}"


# Node registry: a ZSET of node id -> expiry (ms), and two HASHes: id -> row (JSON) and
# id -> last seen (ms, Redis TIME).
NODES_INDEX: Final = f"{PREFIX}:{{nodes}}"
NODES_ROWS: Final = f"{PREFIX}:{{nodes}}:rows"
NODES_SEEN: Final = f"{PREFIX}:{{nodes}}:seen"


# Expiring counters: the key is the hash tag, so a counter and its holds (one script takes
# both) share a slot whatever the key holds (a tag ends at the first "}" after our "{", which
# falls at the same place in both names).
def counter_key(namespace: str, key: str) -> str:
    """An expiring counter (login throttle and similar): STRING count with a PX expiry."""
    return f"{PREFIX}:count:{namespace}:{{{key}}}"


def held_key(namespace: str, key: str) -> str:
    """Attempts in flight against that counter: ZSET hold id -> expiry (ms, Redis TIME)."""
    return f"{PREFIX}:held:{namespace}:{{{key}}}"


# The shared state's generation: a token any node sets when Redis has none at its start, and
# the consuming node writes again once it rebuilt a state Redis lost. A Redis that lost its data
# (restarted without persistence, flushed, replaced) has none: readers then wait for the
# consumer's rebuild instead of showing a portfolio that is not there.
GENERATION: Final = f"{PREFIX}:generation"


# Leases: which node consumes a broker account's streams, and the market-data stream. Each
# lease's two keys share its name as hash tag (one script takes both).
def lease_key(name: str) -> str:
    """The current grant: HASH ``node``, ``epoch``, ``since`` and ``renewed`` (ms, Redis
    TIME), with a PX expiry; absent when nobody holds the lease."""
    return f"{PREFIX}:lease:{{{name}}}"


def lease_grants_key(name: str) -> str:
    """The lease's history, never expiring: HASH ``epoch`` (the last one granted: the fencing
    token), ``node`` (its holder) and ``ended`` (``released`` once given back gracefully)."""
    return f"{PREFIX}:lease:{{{name}}}:grants"


# The nodes that take leases: ZSET node id -> expiry (ms, Redis time), what the spreading
# divides the leases by (a node that consumes no broker streams is not in it).
LEASE_NODES: Final = f"{PREFIX}:{{leases}}:nodes"


# Prices: one node runs the market-data connection (the ``prices`` lease); every node keeps the
# symbols its accounts hold here, and ticks reach every node on one channel.
PRICES_TAG: Final = "{prices}"
PRICE_NODES: Final = f"{PREFIX}:{PRICES_TAG}:nodes"
"""ZSET node id -> when its symbol set lapses (ms, Redis time) unless written again."""
PRICE_WANTS: Final = f"{PREFIX}:{PRICES_TAG}:want"
"""HASH node id -> JSON object symbol -> how many of that node's accounts hold it."""
PRICES_CHANNEL: Final = f"{PREFIX}.prices"
"""Tick batches from the market-data connection's holder (JSON, see app/cluster/price_relay)."""
PRICE_WANTS_CHANNEL: Final = f"{PREFIX}.prices.want"
"""A node's symbol set changed (the payload is its id): the holder reads the union again."""
