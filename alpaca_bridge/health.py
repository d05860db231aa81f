"""Whether an account's portfolio can be trusted right now, in one word, for stats and readiness.

A stream can be ``connected`` while the portfolio behind it is stale (its REST reconciliation
hangs or fails), so the stream's state alone says too little. The most serious problem wins:
an account without a user, refused credentials, a REST timeout or failure, a stream that is not
connected, a first reconciliation still running; ``ok`` when none applies. A ``standby`` account
(consumed by another node) is ``ok`` once its user is known: this node has nothing of it to
trust or distrust, and its test trades go to the broker as anywhere.
"""

from __future__ import annotations

from alpaca_bridge.account_sync import AccountSync
from alpaca_bridge.trade_stream import StreamState, TradeUpdatesStream
from app.broker import AccountHealth


def account_health(
    user_id: str | None,
    stream: TradeUpdatesStream | None,
    sync: AccountSync | None,
    *,
    standby: bool = False,
) -> AccountHealth:
    if standby and user_id is not None:
        return "ok"
    if user_id is None or sync is None or stream is None:
        return "unknown_user"
    if stream.state is StreamState.UNAUTHORIZED:
        return "unauthorized"
    if stream.state is StreamState.STOPPED:
        return "stopped"
    if sync.problem is not None:
        return sync.problem
    if sync.reconciled_at is None:
        return "starting"
    if stream.state is not StreamState.CONNECTED:
        return "disconnected"
    return "ok"
