"""The internal bus (SPEC §3): synchronous publish, ordered delivery, undo, failing handlers."""

from __future__ import annotations

import asyncio
import io

import pytest

from app.bus import BusClosed, InProcessBus
from app.events import EVENT_TYPES, REQUIRED_FIELDS, Event, InvalidEvent
from tests.app.support import account, closed, order, position, trade

SAMPLES = {
    "trade:executed": trade("user-1"),
    "order:updated": order("user-1", "order-1"),
    "position:updated": position("user-1", "AAPL"),
    "position:closed": closed("user-1", "AAPL"),
    "account:updated": account("user-1"),
}


async def started_bus() -> InProcessBus:
    bus = InProcessBus()
    await bus.start()
    return bus


async def test_publish_returns_before_any_subscriber_runs() -> None:
    bus = await started_bus()
    seen: list[Event] = []
    bus.subscribe("position:updated", seen.append)
    event = bus.publish("position:updated", position("user-1", "AAPL"))
    assert seen == []  # queued, not delivered inline: a publisher never waits on a subscriber
    assert bus.queue_depth == 1 and bus.events_emitted == 1
    await asyncio.sleep(0)
    assert seen == [event]
    assert bus.queue_depth == 0


async def test_a_slow_subscriber_does_not_delay_the_publisher() -> None:
    bus = await started_bus()
    loop = asyncio.get_running_loop()
    handled = asyncio.Event()

    def slow(_: Event) -> None:
        loop.call_later(0.05, handled.set)  # work deferred by the handler itself

    bus.subscribe("account:updated", slow)
    before = loop.time()
    for i in range(1000):
        bus.publish("account:updated", account("user-1", equity=str(i)))
    assert loop.time() - before < 0.5
    assert bus.events_emitted == 1000
    await asyncio.wait_for(handled.wait(), 2)


async def test_events_are_delivered_in_publish_order_to_every_subscriber() -> None:
    bus = await started_bus()
    first: list[str] = []
    second: list[str] = []
    bus.subscribe("position:updated", lambda e: first.append(e.payload["unrealizedPnl"]))
    bus.subscribe("position:updated", lambda e: second.append(e.payload["unrealizedPnl"]))
    for pnl in ("1", "2", "3"):
        bus.publish("position:updated", position("user-1", "AAPL", pnl=pnl))
    await asyncio.sleep(0)
    assert first == second == ["1", "2", "3"]


async def test_subscribers_only_get_their_event_type() -> None:
    bus = await started_bus()
    seen: list[str] = []
    bus.subscribe("order:updated", lambda e: seen.append(e.type))
    for kind, payload in SAMPLES.items():
        bus.publish(kind, payload)
    await asyncio.sleep(0)
    assert seen == ["order:updated"]


async def test_unsubscribe_stops_delivery_and_is_idempotent() -> None:
    bus = await started_bus()
    seen: list[Event] = []
    unsubscribe = bus.subscribe("account:updated", seen.append)
    assert bus.handler_count("account:updated") == 1
    bus.publish("account:updated", account("user-1"))
    await asyncio.sleep(0)
    unsubscribe()
    unsubscribe()
    assert bus.handler_count("account:updated") == 0
    bus.publish("account:updated", account("user-1"))
    await asyncio.sleep(0)
    assert len(seen) == 1


async def test_unsubscribing_during_delivery_is_safe() -> None:
    bus = await started_bus()
    calls: list[str] = []
    undo: list[object] = []

    def once(_: Event) -> None:
        calls.append("once")
        undo[0]()  # type: ignore[operator]

    undo.append(bus.subscribe("account:updated", once))
    bus.subscribe("account:updated", lambda _: calls.append("other"))
    bus.publish("account:updated", account("user-1"))
    bus.publish("account:updated", account("user-1"))
    await asyncio.sleep(0)
    assert calls == ["once", "other", "other"]


async def test_a_failing_handler_is_logged_at_error_and_the_others_still_run(
    log_lines: io.StringIO,
) -> None:
    bus = await started_bus()
    seen: list[Event] = []

    def broken(_: Event) -> None:
        raise ZeroDivisionError("boom")

    bus.subscribe("position:updated", seen.append)
    bus.subscribe("position:updated", broken)
    bus.subscribe("position:updated", seen.append)
    bus.publish("position:updated", position("user-1", "AAPL"))
    bus.publish("position:updated", position("user-1", "MSFT"))
    await asyncio.sleep(0)
    assert [e.payload["symbol"] for e in seen] == ["AAPL", "AAPL", "MSFT", "MSFT"]
    output = log_lines.getvalue()
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 2
    assert "Handler failed" in errors[0] and "eventType=position:updated" in errors[0]
    assert "userId=user-1" in errors[0]
    assert "ZeroDivisionError: boom" in output  # the traceback follows the line


@pytest.mark.parametrize("kind", EVENT_TYPES)
async def test_a_payload_without_user_id_is_rejected(kind: str) -> None:
    bus = await started_bus()
    seen: list[Event] = []
    bus.subscribe(kind, seen.append)
    payload = {k: v for k, v in SAMPLES[kind].items() if k != "userId"}
    with pytest.raises(InvalidEvent, match="userId"):
        bus.publish(kind, payload)
    with pytest.raises(InvalidEvent, match="userId"):
        bus.publish(kind, {**SAMPLES[kind], "userId": ""})
    await asyncio.sleep(0)
    assert seen == [] and bus.events_emitted == 0


@pytest.mark.parametrize(
    ("kind", "field"),
    [(kind, field) for kind, fields in REQUIRED_FIELDS.items() for field in fields],
)
async def test_every_spec_payload_field_is_required(kind: str, field: str) -> None:
    bus = await started_bus()
    payload = {k: v for k, v in SAMPLES[kind].items() if k != field}
    with pytest.raises(InvalidEvent, match=field):
        bus.publish(kind, payload)


async def test_spec_payloads_are_accepted_and_unknown_types_refused() -> None:
    bus = await started_bus()
    for kind, payload in SAMPLES.items():
        bus.publish(kind, payload)
    assert bus.events_emitted == len(SAMPLES)
    with pytest.raises(InvalidEvent, match="unknown event type"):
        bus.publish("position:exploded", position("user-1", "AAPL"))


async def test_close_delivers_what_is_queued_then_refuses_publishes() -> None:
    bus = await started_bus()
    seen: list[Event] = []
    bus.subscribe("account:updated", seen.append)
    bus.publish("account:updated", account("user-1"))
    await bus.close()
    assert len(seen) == 1 and not bus.running
    with pytest.raises(BusClosed):
        bus.publish("account:updated", account("user-1"))
