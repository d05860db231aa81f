"""Which users' channels a node wants, what Redis has confirmed, and the commands to send next.

A pure core (no sockets, times passed in) behind the subscriber. Users are reference-counted:
the first ``acquire`` queues a SUBSCRIBE, the last ``release`` starts a grace period, and only a
user still unwanted when it ends is unsubscribed (a reloading tab must not churn the channel).
Commands are collected and sent in batches; every SUBSCRIBE and UNSUBSCRIBE sent is matched to
its confirmation in order, so a subscribe, unsubscribe, subscribe sequence of one channel in
flight at once cannot be mistaken for a live subscription (redis-py issue #764).
"""

from __future__ import annotations

from collections import deque


class SubscriptionBook:
    def __init__(self, unsubscribe_delay_s: float) -> None:
        self._delay = unsubscribe_delay_s
        self._refs: dict[str, int] = {}
        self._deadlines: dict[str, float] = {}
        # What Redis will hold once everything sent and queued is processed.
        self._intended: set[str] = set()
        self._to_subscribe: dict[str, None] = {}
        self._to_unsubscribe: dict[str, None] = {}
        # Per user, the kinds sent and not yet confirmed (True: SUBSCRIBE), oldest first.
        self._in_flight: dict[str, deque[bool]] = {}
        self._live: set[str] = set()
        self._resync_on_confirm: set[str] = set()

    def acquire(self, user_id: str) -> None:
        self._refs[user_id] = self._refs.get(user_id, 0) + 1
        self._deadlines.pop(user_id, None)
        if user_id in self._intended:
            return
        self._intended.add(user_id)
        if user_id in self._to_unsubscribe:
            # Never sent: Redis still has the channel, so nothing needs sending.
            del self._to_unsubscribe[user_id]
        else:
            self._to_subscribe[user_id] = None

    def release(self, user_id: str, now: float) -> None:
        refs = self._refs.get(user_id, 0)
        if refs <= 0:
            return
        self._refs[user_id] = refs - 1
        if refs == 1:
            self._deadlines[user_id] = now + self._delay

    def due(self, now: float) -> list[str]:
        """Users whose grace period ended unwanted: no longer tracked from here on."""
        ended = [uid for uid, at in self._deadlines.items() if at <= now]
        for user_id in ended:
            del self._deadlines[user_id]
            del self._refs[user_id]
            self._intended.discard(user_id)
            if user_id in self._to_subscribe:
                del self._to_subscribe[user_id]
            else:
                self._to_unsubscribe[user_id] = None
            self._resync_on_confirm.discard(user_id)
        return ended

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    def take_commands(self) -> tuple[list[str], list[str]]:
        """(users to SUBSCRIBE, users to UNSUBSCRIBE), now counted as sent."""
        subscribe, unsubscribe = list(self._to_subscribe), list(self._to_unsubscribe)
        self._to_subscribe.clear()
        self._to_unsubscribe.clear()
        for user_id in subscribe:
            self._in_flight.setdefault(user_id, deque()).append(True)
        for user_id in unsubscribe:
            self._in_flight.setdefault(user_id, deque()).append(False)
            self._live.discard(user_id)
        return subscribe, unsubscribe

    @property
    def has_commands(self) -> bool:
        return bool(self._to_subscribe or self._to_unsubscribe)

    def confirmed(self, user_id: str, subscribed: bool) -> bool:
        """Record Redis's confirmation of one command; True when it made the channel live."""
        sent = self._in_flight.get(user_id)
        if not sent or sent[0] is not subscribed:
            return False  # not ours (e.g. from before a reconnect): nothing to match
        sent.popleft()
        if not sent:
            del self._in_flight[user_id]
        if not subscribed:
            self._live.discard(user_id)
            return False
        if False in (sent or ()) or user_id not in self._intended:
            return False  # an unsubscribe is already on its way
        self._live.add(user_id)
        return True

    def take_resync_flag(self, user_id: str) -> bool:
        """Whether this user was live before the connection was lost (its state may have gaps)."""
        if user_id in self._resync_on_confirm:
            self._resync_on_confirm.discard(user_id)
            return True
        return False

    def connection_reset(self) -> list[str]:
        """A new connection holds no subscription: queue every wanted user again. Users in their
        grace period are dropped now; they are returned."""
        self._resync_on_confirm |= self._live & self._refs.keys()
        self._live.clear()
        self._in_flight.clear()
        self._to_unsubscribe.clear()
        dropped = list(self._deadlines)
        for user_id in dropped:
            del self._refs[user_id]
            self._resync_on_confirm.discard(user_id)
        self._deadlines.clear()
        self._intended = set(self._refs)
        self._to_subscribe = dict.fromkeys(self._refs)
        return dropped

    def is_wanted(self, user_id: str) -> bool:
        return user_id in self._refs

    def is_live(self, user_id: str) -> bool:
        return user_id in self._live

    def refs(self, user_id: str) -> int:
        return self._refs.get(user_id, 0)

    @property
    def wanted_count(self) -> int:
        return len(self._refs)

    @property
    def live_count(self) -> int:
        return len(self._live)

    def wanted(self) -> list[str]:
        return list(self._refs)
