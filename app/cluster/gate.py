"""Per-user notice positions: deliver in order, drop what a snapshot already holds, and call for
a resync on a gap or a new state epoch (pub/sub is at-most-once; Redis may lose its data).

A pure core behind the subscriber. A user is *positioned* once the caller has read a snapshot
and set the (epoch, offset) it was at; until then (and again after a gap) notices are kept in
a bounded buffer, replayed when the position is set, so nothing published between the
subscription and the read is lost.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from app.cluster.notices import Notice

# Notices kept per user while it waits for a snapshot: a second or two of a busy account. On
# overflow the oldest go; if the snapshot is older than what is left, that is a gap: resync.
BUFFER_LIMIT = 1024


class Verdict(enum.Enum):
    DELIVER = "deliver"
    DROP = "drop"  # at or below the position: the snapshot or an earlier notice had it
    BUFFER = "buffer"  # the user waits for a snapshot
    RESYNC = "resync"  # a gap or a new epoch: the caller must re-read the state
    UNTRACKED = "untracked"  # a user this node no longer follows


@dataclass(slots=True)
class _Position:
    epoch: str | None = None
    offset: int = 0
    known: bool = False
    # The epoch replaced by the latest snapshot: its late notices are dropped, not resynced.
    retired: str | None = None
    buffer: deque[Notice] = field(default_factory=lambda: deque(maxlen=BUFFER_LIMIT))


class NoticeGate:
    def __init__(self) -> None:
        self._users: dict[str, _Position] = {}
        self.gaps = 0
        self.epoch_changes = 0
        self.stale = 0

    def track(self, user_id: str) -> None:
        self._users.setdefault(user_id, _Position())

    def forget(self, user_id: str) -> None:
        self._users.pop(user_id, None)

    def position(self, user_id: str) -> tuple[str | None, int] | None:
        """The (epoch, offset) delivered up to, or None while the user waits for a snapshot."""
        entry = self._users.get(user_id)
        if entry is None or not entry.known:
            return None
        return entry.epoch, entry.offset

    def offer(self, user_id: str, notice: Notice) -> Verdict:
        entry = self._users.get(user_id)
        if entry is None:
            return Verdict.UNTRACKED
        if not entry.known:
            entry.buffer.append(notice)
            return Verdict.BUFFER
        verdict = self._judge(entry, notice)
        if verdict is Verdict.RESYNC:
            entry.known = False
            entry.buffer.append(notice)
        return verdict

    def begin_resync(self, user_id: str) -> None:
        """Forget the position: notices wait until the next ``set_position``."""
        entry = self._users.get(user_id)
        if entry is not None:
            entry.known = False

    def set_position(
        self, user_id: str, epoch: str | None, offset: int
    ) -> tuple[list[Notice], bool]:
        """Position a waiting user at a snapshot's (epoch, offset).

        Returns the buffered notices to deliver now, in order, and whether a resync is needed
        after all (the buffer does not continue the snapshot). A user already positioned keeps
        its position: its notices flow, and a newer snapshot must not skip any of them.
        """
        entry = self._users.get(user_id)
        if entry is None or entry.known:
            return [], False
        if entry.epoch is not None and entry.epoch != epoch:
            entry.retired = entry.epoch
        entry.epoch, entry.offset, entry.known = epoch, offset, True
        pending = list(entry.buffer)
        entry.buffer.clear()
        deliver: list[Notice] = []
        for index, notice in enumerate(pending):
            verdict = self._judge(entry, notice)
            if verdict is Verdict.DELIVER:
                deliver.append(notice)
            elif verdict is Verdict.RESYNC:
                entry.known = False
                entry.buffer.extend(pending[index:])
                return deliver, True
        return deliver, False

    def _judge(self, entry: _Position, notice: Notice) -> Verdict:
        if notice.epoch == entry.retired:
            self.stale += 1
            return Verdict.DROP
        if notice.event is None:
            # The whole state was rewritten: re-read it, unless the snapshot already did.
            if notice.epoch == entry.epoch and notice.offset <= entry.offset:
                self.stale += 1
                return Verdict.DROP
            self.epoch_changes += 1
            return Verdict.RESYNC
        if entry.epoch is None:
            # The snapshot found no state: the first notice of a new epoch has offset 1.
            if notice.offset == entry.offset + 1:
                entry.epoch, entry.offset = notice.epoch, notice.offset
                return Verdict.DELIVER
            self.gaps += 1
            return Verdict.RESYNC
        if notice.epoch != entry.epoch:
            self.epoch_changes += 1
            return Verdict.RESYNC
        if notice.offset <= entry.offset:
            self.stale += 1
            return Verdict.DROP
        if notice.offset > entry.offset + 1:
            self.gaps += 1
            return Verdict.RESYNC
        entry.offset = notice.offset
        return Verdict.DELIVER
