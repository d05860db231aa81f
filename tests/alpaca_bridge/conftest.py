"""Fixtures for the broker bridge tests: captured log lines, a running in-process bus, a user
store with alice in it, and bridges built on them (stopped after the test), also pointed at a
module's simulated broker."""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from bridge_support import AlpacaBridgeFor, alpaca_settings, users_in

from alpaca_bridge.service import BrokerBridge
from alpaca_bridge.simulator import SimulatedBroker
from app.bus import InProcessBus
from app.events import EVENT_TYPES, Event
from app.store import Store
from config.logging import configure_logging
from config.settings import Settings


class _NotifyingStream(io.StringIO):
    """A StringIO that wakes ``LogLines.wait_for`` on every write, from any thread."""

    def __init__(self) -> None:
        super().__init__()
        self.changed: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.changed is not None and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.changed.set)
        return written


class LogLines:
    """Every rendered log line since the fixture started (text format, DEBUG and up)."""

    def __init__(self, stream: _NotifyingStream) -> None:
        self._stream = stream

    def all(self) -> list[str]:
        return self._stream.getvalue().splitlines()

    def matching(self, *needles: str) -> list[str]:
        return [line for line in self.all() if all(n in line for n in needles)]

    async def wait_for(self, *needles: str, count: int = 1) -> str:
        """The first line containing every needle, once ``count`` such lines have been logged."""
        self._stream.loop = asyncio.get_running_loop()
        changed = self._stream.changed = asyncio.Event()
        while len(found := self.matching(*needles)) < count:
            changed.clear()
            await changed.wait()
        return found[0]


@pytest.fixture
def log_lines() -> LogLines:
    stream = _NotifyingStream()
    configure_logging(Settings(_env_file=None, log_level="DEBUG"), extra_streams=[stream])
    return LogLines(stream)


class EventCollector:
    """Everything published on the bus, with a way to await a particular event."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[Event], bool], within: float = 5.0) -> Event:
        async with asyncio.timeout(within):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    def of_type(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]


@pytest.fixture
async def bus() -> AsyncIterator[InProcessBus]:
    bus = InProcessBus()
    await bus.start()
    yield bus
    await bus.close()


@pytest.fixture
def collected(bus: InProcessBus) -> EventCollector:
    collector = EventCollector()
    for kind in EVENT_TYPES:
        bus.subscribe(kind, collector)
    return collector


@pytest.fixture(scope="session")
def users_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user database with alice in it, made once: password hashing is deliberately slow."""
    path = tmp_path_factory.mktemp("users") / "users.db"

    async def create() -> None:
        store = Store(path)
        await store.open()
        await store.create_user("alice", "pw")
        await store.close()

    asyncio.run(create())
    return path


@pytest.fixture
async def store(tmp_path: Path, users_db: Path) -> AsyncIterator[Store]:
    shutil.copy(users_db, tmp_path / "users.db")
    store = Store(tmp_path / "users.db")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def bridge_for(
    bus: InProcessBus,
    store: Store,
) -> AsyncIterator[Callable[[Settings], BrokerBridge]]:
    made: list[BrokerBridge] = []

    def make(settings: Settings) -> BrokerBridge:
        bridge = BrokerBridge(settings, bus, users_in(store))
        made.append(bridge)
        return bridge

    yield make
    for bridge in made:
        await bridge.stop()


@pytest.fixture
def alpaca_bridge_for(
    broker: SimulatedBroker,
    tmp_path: Path,
    bridge_for: Callable[[Settings], BrokerBridge],
) -> AlpacaBridgeFor:
    """Bridges with BROKER=alpaca on the test module's simulated ``broker`` (its own fixture),
    settings overridden by keyword; stopped after the test like every ``bridge_for`` one."""
    return lambda **values: bridge_for(alpaca_settings(broker, tmp_path, **values))
