"""A node's Redis-backed parts built from Settings, as the app will hold them."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from app.cluster.admission import Slot
from app.cluster.keys import NODES_INDEX, conn_node_key
from app.cluster.node import ClusterNode
from app.cluster.registry import NodeFigures
from app.events import POSITION_UPDATED
from tests.cluster.redis_server import RedisServer
from tests.cluster.support import Recorder, cluster_settings, event, eventually, position


def build(url: str, node_id: str, recorder: Recorder) -> ClusterNode:
    return ClusterNode(
        cluster_settings(url, node_id=node_id, cluster_node_report_interval_s=0.05),
        on_event=recorder.on_event,
        on_resync=recorder.on_resync,
    )


async def test_one_node_writes_and_another_delivers(redis_url: str, redis: Redis) -> None:
    writer_events, reader_events = Recorder(), Recorder()
    writer, reader = build(redis_url, "w", writer_events), build(redis_url, "r", reader_events)
    await writer.start()
    await reader.start()
    try:
        assert await reader.subscriber.acquire("user-1", timeout_s=2)
        state = await reader.state.read("user-1")
        reader.subscriber.set_position("user-1", state.epoch, state.offset)

        await writer.state.apply(event(POSITION_UPDATED, position("user-1", "AAPL")), epoch=1)

        await reader_events.wait(lambda: len(reader_events.events) == 1)
        assert writer_events.events == []  # the writer holds no connection of user-1
    finally:
        await writer.close()
        await reader.close()


async def test_close_gives_back_the_nodes_slots_and_row(redis_url: str, redis: Redis) -> None:
    node = build(redis_url, "n1", Recorder())
    await node.start()
    assert (await node.admission.admit(Slot("conn_1", "user-1"))).admitted
    node.start_reports(lambda rtt: NodeFigures("n1", 1, 1, 0, 1.0, None, None))
    await eventually(lambda: has_row(redis), what="a stats row")

    await node.close()

    assert await redis.exists(conn_node_key("n1"), NODES_INDEX) == 0


async def has_row(redis: Redis) -> bool:
    return int(await redis.zcard(NODES_INDEX)) == 1


async def test_a_restart_under_the_same_name_frees_what_the_last_run_held(
    redis_url: str, redis: Redis
) -> None:
    crashed = build(redis_url, "n1", Recorder())
    await crashed.admission.admit(Slot("conn_1", "user-1"))  # and then it was SIGKILLed
    await crashed.redis.aclose()

    restarted = build(redis_url, "n1", Recorder())
    await restarted.start()
    try:
        assert await restarted.admission.census() == {}
    finally:
        await restarted.close()


async def test_a_node_starts_and_closes_while_redis_is_away(redis_server: RedisServer) -> None:
    redis_server.stop()
    recorder = Recorder()
    node = build(redis_server.url, "n1", recorder)

    await node.start()
    assert not await node.subscriber.acquire("user-1", timeout_s=0.1)
    redis_server.start()
    await recorder.wait(lambda: recorder.resyncs == ["user-1"])

    await node.close()


async def test_a_node_closes_promptly_when_redis_went_away(redis_server: RedisServer) -> None:
    node = build(redis_server.url, "n1", Recorder())
    await node.start()
    await eventually(lambda: node.subscriber.status.connected, what="connected")
    redis_server.stop()

    async with asyncio.timeout(5):
        await node.close()
