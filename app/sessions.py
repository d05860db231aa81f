"""Session revocation signals: what ends a session while a WebSocket may still be using it.

The store publishes ``SessionRevoked`` when a session is logged out or its user removed in this
process; ``SessionWatch`` (app/session_watch.py) adds expiry and changes made by other
processes (``portfolio-stream users remove`` runs in its own). A subscriber, the stream
manager, closes the sockets of that session (or of every session of that user).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from config.logging import get_logger

log = get_logger()


class RevokedBecause(StrEnum):
    LOGOUT = "logout"
    USER_REMOVED = "user_removed"
    EXPIRED = "expired"
    REVOKED = "revoked"  # gone from the store by other means (another process, a cleanup)


@dataclass(frozen=True, slots=True)
class SessionRevoked:
    """A session that no longer authenticates anything.

    ``token_hash`` is the SHA-256 the store keys sessions by (``app.store.hash_token``); None
    means every session of ``user_id``.
    """

    user_id: str
    token_hash: str | None
    reason: RevokedBecause

    def covers(self, user_id: str, token_hash: str) -> bool:
        """Whether a connection authenticated by (user_id, token_hash) must close."""
        return user_id == self.user_id and self.token_hash in (None, token_hash)


Listener = Callable[[SessionRevoked], None]


class Revocations:
    """Synchronous publish/subscribe for SessionRevoked (like the bus: a failing listener is
    logged and the others still run)."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every revocation; returns the function that undoes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def publish(self, event: SessionRevoked) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception(
                    "[Auth] Session revocation listener failed",
                    userId=event.user_id,
                    reason=event.reason.value,
                )
