"""What a connection's writer sends besides text (pings, pongs, snapshots built when sent),
and what every writer shares (``WriterContext``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from app.protocol import PreparedBatch
from app.tasks import TaskSet

# Why a connection was dropped without a close frame; logged, never sent.
NOT_READING: Final = "Client is not reading"
INTERNAL_ERROR: Final = "Internal error"


class _Ping:
    """Marker for a protocol-level ping among the queued frames."""


PING: Final = _Ping()


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to a client's ping frame, with the ping's payload."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """A snapshot of ``channels``, built when it is sent so it is never stale."""

    channels: frozenset[str]


Outgoing = bytes | SnapshotRequest | _Ping | Pong | PreparedBatch
# A rendered frame: the text payload, or the control frame to send; None: nothing to send (a
# snapshot of a state this node has not read yet: it is sent once the state is read).
Rendered = bytes | _Ping | Pong | None


@dataclass(frozen=True, slots=True)
class WriterContext:
    """What every connection's writer shares: where snapshots come from, where sends are
    counted, the clocks and the limits."""

    snapshot: Callable[[str, frozenset[str]], dict[str, Any] | None]
    message_sent: Callable[[int], None]
    observe_latency: Callable[[float], None] | None
    clock: Callable[[], float]  # monotonic, for "stuck"
    wall_clock: Callable[[], float]  # for ``ts`` and emit-to-send latency
    tasks: TaskSet
    max_queued_frames: int
    close_grace_s: float
    # Closing a connection with more than this unsent drops it: a close frame would queue
    # behind all of it.
    abort_above_bytes: int
