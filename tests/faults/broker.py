"""A misbehaving broker for a server process: the simulated Alpaca, driven by its own controls.

The simulated broker (the protocol-faithful one the service embeds) runs on a background
thread's event loop in the test process, and the server under test reaches it as a real
Alpaca (``BROKER=alpaca``, its URLs, an accounts file). Through the simulator's fault controls a
test withholds trade updates and releases them reordered, repeated or not at all, cuts the
stream, and makes REST calls fail, hang, answer slowly or carry a record no parser expects.
Everything the test asks of it runs on that loop (``call``/``run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

from tests.faults.targets import SimulatedBroker

T = TypeVar("T")
FILL_EVENTS = ("fill", "partial_fill")


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    api_key: str
    secret_key: str


class Poison:
    """A REST rewrite that appends ``record`` to the first ``times`` JSON arrays it sees."""

    def __init__(self, record: Any, times: int) -> None:
        self.record = record
        self.times = times
        self.hits = 0

    def __call__(self, payload: Any) -> Any:
        if not isinstance(payload, list) or self.hits >= self.times:
            return payload
        self.hits += 1
        return [*payload, self.record]


class FaultyBroker:
    """See the module docstring. Use as a context manager; ``env()`` is for the server."""

    def __init__(
        self,
        usernames: list[str],
        *,
        tick_interval_s: float = 0.05,
        fill_delay_s: float = 0.02,
        partial_fills: bool = False,
        cash: Decimal | None = None,
    ) -> None:
        self.accounts = [
            Account(name, f"PK{index:04d}{name.upper()[:10]}", f"secret-{index}-{name}")
            for index, name in enumerate(usernames)
        ]
        self._tick_interval_s = tick_interval_s
        self._fill_delay_s = fill_delay_s
        self._partial_fills = partial_fills
        self._cash = cash
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faulty-broker")
        self._broker: SimulatedBroker | None = None
        self._withheld_from: dict[str, int] = {}  # username -> history length when withheld
        self._slow: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FaultyBroker:
        self._thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(Exception):
            self.run(self._stop(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def broker(self) -> SimulatedBroker:
        assert self._broker is not None, "not started"
        return self._broker

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    def call(self, action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async def invoke() -> T:
            return action(*args, **kwargs)

        return self.run(invoke())

    async def _start(self) -> None:
        broker = SimulatedBroker(
            tick_interval_s=self._tick_interval_s,
            order_interval_s=0,
            fill_delay_s=self._fill_delay_s,
            seed=7,
        )
        for account in self.accounts:
            broker.add_account(
                account.api_key, account.secret_key, label=account.username, cash=self._cash
            )
        broker.set_partial_fills(self._partial_fills)
        await broker.start()
        self._broker = broker

    async def _stop(self) -> None:
        if self._slow is not None:
            self._slow.cancel()
        if self._broker is not None:
            self._broker.clear_rest_faults()  # held requests are served, not left hanging
            await self._broker.stop()

    def env(self, tmp_path: Path) -> dict[str, str]:
        """The server's broker settings: these accounts, at the simulator's URLs."""
        accounts = tmp_path / "accounts.toml"
        accounts.write_text(
            "".join(
                f'[[accounts]]\nusername = "{a.username}"\napi_key = "{a.api_key}"\n'
                f'secret_key = "{a.secret_key}"\npaper = true\n\n'
                for a in self.accounts
            )
        )
        return {
            "BROKER": "alpaca",
            "ACCOUNTS_FILE": str(accounts),
            "ALPACA_API_URL": self.broker.base_url,
            "ALPACA_STREAM_URL": self.broker.trading_stream_url,
            "ALPACA_DATA_STREAM_URL": self.broker.data_stream_url,
            "ALPACA_BACKOFF_INITIAL_S": "0.05",
            "ALPACA_BACKOFF_MAX_S": "0.5",
        }

    def account(self, username: str) -> Account:
        return next(a for a in self.accounts if a.username == username)

    def key(self, username: str) -> str:
        return self.account(username).api_key

    # ---- orders and what the broker knows --------------------------------------------------

    def submit(self, username: str, symbol: str, side: str, qty: int) -> dict[str, Any]:
        key = self.key(username)

        async def place() -> dict[str, Any]:
            return await self.broker.submit_order(key, symbol, side, Decimal(qty))

        return self.run(place())

    def fills(self, username: str) -> list[dict[str, Any]]:
        """Every execution the broker announced for the account (delivered or not)."""
        history = self.call(self.broker.trade_updates, self.key(username))
        return [u["data"] for u in history if u["data"]["event"] in FILL_EVENTS]

    def positions(self, username: str) -> dict[str, str]:
        rows = self.call(self.broker.positions, self.key(username))
        return {row["symbol"]: row["qty"] for row in rows}

    def orders(self, username: str) -> list[dict[str, Any]]:
        return self.call(self.broker.orders, self.key(username))

    def listening(self, username: str) -> bool:
        return self.call(self.broker.trading_connections, self.key(username)) > 0

    def wait_listening(self, username: str, timeout: float = 20) -> None:
        waiting = self.broker.wait_trading_listener(self.key(username))
        self.run(asyncio.wait_for(waiting, timeout), timeout + 1)

    # ---- stream faults ---------------------------------------------------------------------

    def drop_streams(self) -> None:
        """Cut every trade_updates connection (TCP reset, no close frame)."""
        self.call(self.broker.drop_trading_streams)

    def resend_last_fill(self, username: str) -> None:
        self.call(self.broker.resend_last_fill, self.key(username))

    def reject_credentials(self, username: str) -> None:
        self.call(self.broker.set_auth_behaviour, self.key(username), "reject")

    def hold(self, username: str) -> None:
        """Keep the account's trade updates back (REST already shows them)."""
        key = self.key(username)

        def withhold() -> None:
            self._withheld_from[username] = len(self.broker.trade_updates(key))
            self.broker.withhold_trade_updates(key)

        self.call(withhold)

    def held(self, username: str) -> int:
        """Trade updates announced since ``hold``: all of them withheld."""
        start = self._withheld_from.get(username)
        if start is None:
            return 0
        return len(self.call(self.broker.trade_updates, self.key(username))) - start

    def release(
        self, username: str, order: Literal["reversed", "as_sent", "none"] = "reversed"
    ) -> int:
        """Deliver the held updates (newest first by default; ``none``: lose them all);
        returns how many were held."""
        self._withheld_from.pop(username, None)
        held: list[int] = []

        def reorder(kept: list[Any]) -> list[Any]:
            held.append(len(kept))
            return {"reversed": kept[::-1], "as_sent": kept, "none": []}[order]

        self.call(self.broker.release_trade_updates, self.key(username), reorder)
        return held[0] if held else 0

    def lose_held_and_drop(self, username: str) -> int:
        """Cut the stream with the held updates never delivered: the fills in them happened,
        but only a reconciliation can tell the server. Returns how many were lost."""
        self.drop_streams()
        return self.release(username, "none")

    # ---- REST faults -----------------------------------------------------------------------

    def fail_rest(self, status: int = 500, *, method: str | None = None, path: str) -> None:
        self.call(self.broker.fail_rest, status, method=method, path=path)

    def hang_rest(self, *, method: str | None = None, path: str) -> None:
        """Hold matching requests until ``clear_rest_faults`` (then they are served, late)."""
        self.call(self.broker.hang_rest, method=method, path=path)

    def poison_rest(self, path: str, record: Any, times: int) -> Poison:
        poison = Poison(record, times)
        self.call(self.broker.rewrite_rest, poison, path=path)
        return poison

    def slow_rest(self, seconds: float, *, path: str = "/v2/") -> None:
        """Answer every matching request up to ``seconds`` late, until cleared."""

        async def slow() -> None:
            while True:
                self.broker.hang_rest(path=path)
                await asyncio.sleep(seconds)
                self.broker.clear_rest_faults()

        async def begin() -> None:
            self._slow = asyncio.ensure_future(slow())

        self.run(begin())

    def clear_rest_faults(self) -> None:
        async def clear() -> None:
            if self._slow is not None:
                self._slow.cancel()
                self._slow = None
            self.broker.clear_rest_faults()

        self.run(clear())
