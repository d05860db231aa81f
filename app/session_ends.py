"""Sockets whose session has ended are closed (SPEC §10: logout revokes).

The store publishes ``SessionRevoked`` for a logout, an expiry or a removed user (app/sessions.py);
every connection opened with that session, or every one of that user, is closed with 4001 and
a reason the browser takes as "sign in again", not "reconnect".
"""

from __future__ import annotations

from collections.abc import Mapping

from app.connection import Connection
from app.protocol import SESSION_END_REASONS, CloseCode
from app.sessions import SessionRevoked
from config.logging import get_logger

log = get_logger()


class SessionEnds:
    """The stream's listener on the store's revocations."""

    def __init__(self, by_user: Mapping[str, Mapping[str, Connection]]) -> None:
        self._by_user = by_user

    def on_revoked(self, event: SessionRevoked) -> None:
        """Synchronous, as revocation listeners are: it only starts the closes."""
        user_conns = self._by_user.get(event.user_id)
        if not user_conns:
            return
        reason = SESSION_END_REASONS[event.reason]
        for conn in list(user_conns.values()):
            if event.covers(conn.user_id, conn.token_hash) and not conn.writer.closing:
                log.info(
                    "[PortfolioStream] Closing connection: session ended",
                    userId=conn.user_id,
                    connectionId=conn.id,
                    reason=reason,
                )
                conn.writer.start_close(CloseCode.SESSION_ENDED, reason)
