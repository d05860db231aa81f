"""One configured account inside the running bridge, and how it reports itself in stats."""

from __future__ import annotations

from dataclasses import dataclass

from alpaca.trading.client import TradingClient

from alpaca_bridge.account_sync import AccountSync
from alpaca_bridge.accounts import BrokerAccount
from alpaca_bridge.health import account_health
from alpaca_bridge.trade_stream import StreamState, TradeUpdatesStream
from alpaca_bridge.wire_parser import iso_from_epoch
from app.broker import AccountStatus, AccountStreamStatus


@dataclass(slots=True)
class AccountRuntime:
    """An account's REST client and, once its user is known, its ledger sync and stream
    (none of those on a ``standby`` node, where another node consumes the account)."""

    account: BrokerAccount
    client: TradingClient
    standby: bool = False
    user_id: str | None = None
    sync: AccountSync | None = None
    stream: TradeUpdatesStream | None = None

    @property
    def settled(self) -> bool:
        """Reconciled at least once, tried and failed, or failed for good (unknown user, bad
        credentials): the account's state is known, if not good (see ``status()["health"]``)."""
        if self.sync is None:
            return True
        if self.stream is not None and self.stream.state is StreamState.UNAUTHORIZED:
            return True
        return self.sync.reconciled_at is not None or self.sync.problem is not None

    def status(self, mode: str) -> AccountStatus:
        """The per-account entry of ``BrokerBridge.accounts_status()``; ``reconnects`` counts
        reconnect attempts since start."""
        stream, sync = self.stream, self.sync
        state: AccountStreamStatus = "unknown_user" if self.user_id is None else "stopped"
        if self.user_id is not None and stream is not None:
            state = stream.state.value
        elif self.user_id is not None and self.standby:
            state = "standby"
        last = stream.last_event_at if stream is not None else None
        reconciled = sync.reconciled_at if sync is not None else None
        return {
            "username": self.account.username,
            "userId": self.user_id,
            "status": state,
            "lastEventAt": None if last is None else iso_from_epoch(last),
            "lastReconciledAt": None if reconciled is None else iso_from_epoch(reconciled),
            "reconnects": stream.reconnects if stream is not None else 0,
            "mode": mode,
            "paper": self.account.paper,
            "health": account_health(self.user_id, stream, sync, standby=self.standby),
            "lastError": sync.last_error if sync is not None else None,
        }
