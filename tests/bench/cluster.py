"""The ``cluster`` scenario: the same load served three ways, to price the Redis hop and see
what a second node buys on this machine.

* ``inproc`` — one node without REDIS_URL (the in-process bus): the baseline;
* ``one``    — one node with REDIS_URL on a redis-server the bench starts on a free port;
* ``two``    — two nodes (NODE_ID bench-a, bench-b) on one such Redis, the connections split
  evenly between them after a seeded shuffle, so a user's tabs land on either node as behind a
  load balancer without stickiness.

The event source runs in node ``a`` only (as the one consumer of the broker accounts would):
with Redis each event goes through ``a``'s bus into the shared state and comes back as a change
notice to every node holding a connection of that user, so the tabs on ``b`` are served across
the hop. Latency is emit → receipt exactly as in the ``latency`` scenario (``benchTs`` set in
``a`` when the event is made, compared with the receiving load client's clock; one machine,
one clock). CPU is sampled from /proc for each node, the redis-server and the load clients.

Each configuration starts from fresh processes and a fresh Redis, so none inherits another's
subscriptions, state or heap.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from tests.bench.db import BenchUsers
from tests.bench.procs import ClientGroup, ServerProcess, machine_busy_s, proc_cpu_s
from tests.bench.scenarios import Options, admin_stats, finish_log, log, ms, user_ids_file
from tests.bench.stats import percentile
from tests.cluster.redis_server import REDIS_SERVER, RedisServer

# The configurations, in the order they run: (label, nodes, with Redis).
CONFIGS: tuple[tuple[str, int, bool], ...] = (
    ("inproc", 1, False),
    ("one", 1, True),
    ("two", 2, True),
)
SPLIT_SEED = 11
REDIS_PRESENT = Path(REDIS_SERVER).exists()


@dataclass
class Node:
    server: ServerProcess
    conns: list[tuple[str, str]]
    group: ClientGroup | None = None


def split(conns: list[tuple[str, str]], count: int) -> list[list[tuple[str, str]]]:
    """``count`` equal shares of a seeded shuffle of ``conns`` (no stickiness per user)."""
    if count == 1:
        return [list(conns)]
    shuffled = list(conns)
    random.Random(SPLIT_SEED).shuffle(shuffled)
    return [shuffled[i::count] for i in range(count)]


def node_process(
    opts: Options,
    users: BenchUsers,
    name: str,
    *,
    connected: int,
    max_total: int,
    per_user: int,
    redis_url: str | None,
    node_id: str,
) -> ServerProcess:
    env = {
        "DATABASE_URL": f"sqlite:///{users.path}",
        "LOG_FILE": str(opts.workdir / f"{name}.log"),
        "BATCH_WINDOW_MS": str(opts.cluster_window_ms),
        # Cluster-wide with Redis: the whole scenario's connections, whichever node holds them.
        "MAX_TOTAL_CONNECTIONS": str(max_total),
        "MAX_CONNECTIONS_PER_USER": str(per_user),
        "BENCH_USER_IDS_FILE": str(user_ids_file(opts, users, connected)),
        **opts.server_env,
    }
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
        env["NODE_ID"] = node_id
    return ServerProcess("tests.bench.server_main", env, opts.workdir, name)


def merged(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            total[key] = total.get(key, 0) + value
    return total


async def redis_pid(url: str) -> int:
    client = Redis.from_url(url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return int(info["process_id"])


def cpu_or_zero(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        return proc_cpu_s(pid)
    except OSError:
        return 0.0


async def measure(
    opts: Options, users: BenchUsers, label: str, count: int, with_redis: bool
) -> dict[str, Any]:
    """One configuration: start Redis and the nodes, hold the connections, run the source in
    node ``a``, measure a window after the warm-up, tear everything down."""
    n, u = opts.cluster_connections, min(opts.cluster_users, len(users.sessions))
    conns = users.connections(n, u)
    redis: RedisServer | None = None
    redis_cpu_pid: int | None = None
    nodes: list[Node] = []
    try:
        if with_redis:
            redis = RedisServer(opts.workdir / f"redis-cluster-{label}")
            await asyncio.to_thread(redis.start)
            redis_cpu_pid = await redis_pid(redis.url)
        for index, share in enumerate(split(conns, count)):
            node_id = f"bench-{chr(ord('a') + index)}"
            server = node_process(
                opts,
                users,
                f"cluster-{label}-{node_id}",
                connected=u,
                max_total=n,
                per_user=math.ceil(n / u),
                redis_url=redis.url if redis else None,
                node_id=node_id,
            )
            nodes.append(Node(server, share))
        for node in nodes:
            await node.server.start()
        procs = max(1, opts.client_procs // count)
        for node in nodes:
            node.group = ClientGroup(
                "portfolio",
                node.server,
                node.conns,
                max(1, min(procs, math.ceil(len(node.conns) / 500))),
                opts.workdir,
                max_seconds=opts.ramp_timeout_s + 600,
            )
            await node.group.start()
        readies = [await node.group.wait_ready(opts.ramp_timeout_s) for node in nodes if node.group]
        await asyncio.sleep(opts.settle_s)
        return await run_load(opts, users, label, nodes, readies, redis_cpu_pid)
    finally:
        for node in nodes:
            if node.group is not None:
                await node.group.close()
        for node in nodes:
            await node.server.stop()
        if redis is not None:
            await asyncio.to_thread(redis.stop)


async def run_load(
    opts: Options,
    users: BenchUsers,
    label: str,
    nodes: list[Node],
    readies: list[dict[str, Any]],
    redis_cpu_pid: int | None,
) -> dict[str, Any]:
    source = nodes[0].server
    groups = [node.group for node in nodes if node.group is not None]
    seconds = opts.warmup_s + opts.measure_s + 2
    await source.control(cmd="start", rate=opts.cluster_rate, seconds=seconds)
    await asyncio.sleep(opts.warmup_s)
    for group in groups:
        await group.reset()
    source0 = await source.control(cmd="stats")
    cpu0 = [node.server.cpu_s() for node in nodes]
    wait0 = [node.server.runqueue_wait_s() for node in nodes]
    redis0 = cpu_or_zero(redis_cpu_pid)
    client0 = sum(group.cpu_s() for group in groups)
    busy0, self0, t0 = machine_busy_s(), time.process_time(), time.monotonic()
    await asyncio.sleep(opts.measure_s)
    cpu1 = [node.server.cpu_s() for node in nodes]
    wait1 = [node.server.runqueue_wait_s() for node in nodes]
    redis1 = cpu_or_zero(redis_cpu_pid)
    client1 = sum(group.cpu_s() for group in groups)
    busy1, self1, t1 = machine_busy_s(), time.process_time(), time.monotonic()
    source1 = await source.control(cmd="stats")
    reports = [await group.report() for group in groups]
    await source.control(cmd="stop")
    try:
        stats = await admin_stats(source, users)
    except (aiohttp.ClientError, TimeoutError):
        stats = {}
    elapsed = t1 - t0
    published = source1["published"] - source0["published"]
    batch: array[float] = array("d")
    entries: array[float] = array("d")
    for report in reports:
        batch.extend(report["batchLatency"])
        entries.extend(report["entryLatency"])
    opts.samples[f"cluster.{label}"] = batch
    ordered, ordered_entries = sorted(batch), sorted(entries)
    messages = sum(r["messages"] for r in reports)
    deliveries = sum(r["events"] for r in reports)
    n, u = opts.cluster_connections, min(opts.cluster_users, len(users.sessions))
    server_cpu = [(b - a) / elapsed for a, b in zip(cpu0, cpu1, strict=True)]
    redis_cpu = (redis1 - redis0) / elapsed
    client_cpu = (client1 - client0) / elapsed
    ours = sum(b - a for a, b in zip(cpu0, cpu1, strict=True)) + (redis1 - redis0)
    metrics: dict[str, Any] = {
        "nodes": len(nodes),
        "connections": sum(r["ready"] for r in readies),
        "connectFailures": sum(sum(r["failures"].values()) for r in readies),
        "failureReasons": merged([r["failures"] for r in readies]),
        "closeCodes": merged([r["closeCodes"] for r in reports]),
        # Cluster-wide with Redis (node a's answer): the admission slots by user are exact; the
        # active count sums the nodes' last reports, which lag by up to the report interval.
        "serverActive": stats.get("activeConnections", -1),
        "serverSlotsHeld": sum(stats.get("connectionsByUser", {}).values()),
        "eventsInPerS": round(published / elapsed, 1),
        "messagesOutPerS": round(messages / elapsed, 1),
        "deliveriesPerS": round(deliveries / elapsed, 1),
        # Deliveries received ÷ deliveries the events in called for (each event reaches every
        # tab of its user): below 1 the configuration did not keep up with the load.
        "deliveredShare": round(deliveries / (published * n / u), 4) if published else 0.0,
        "latencyP50Ms": ms(percentile(ordered, 0.50)),
        "latencyP90Ms": ms(percentile(ordered, 0.90)),
        "latencyP99Ms": ms(percentile(ordered, 0.99)),
        "latencyMaxMs": ms(ordered[-1]) if ordered else 0.0,
        "entryLatencyP99Ms": ms(percentile(ordered_entries, 0.99)),
        "serverCpuUtil": round(sum(server_cpu), 3),
        "redisCpuUtil": round(redis_cpu, 3),
        "clientCpuUtil": round(client_cpu, 3),
        "cpuPerDeliveryUs": round(ours / deliveries * 1e6, 3) if deliveries else 0.0,
        "foreignCpuCores": round(
            max(0.0, (busy1 - busy0) - ours - (client1 - client0) - (self1 - self0)) / elapsed, 2
        ),
        "clientErrors": sum(r["errors"] for r in reports),
        "clientDropped": sum(r["dropped"] for r in reports),
    }
    for node, report, cpu, a, b in zip(nodes, reports, server_cpu, wait0, wait1, strict=True):
        key = node.server.name.rsplit("-", 1)[1]  # a, b
        metrics[f"node{key.upper()}.connections"] = report["ready"]
        metrics[f"node{key.upper()}.messagesOutPerS"] = round(report["messages"] / elapsed, 1)
        metrics[f"node{key.upper()}.cpuUtil"] = round(cpu, 3)
        metrics[f"node{key.upper()}.runqueueWaitShare"] = round((b - a) / elapsed, 3)
    for node in nodes:
        finish_log(opts, node.server.name)
    return metrics


async def cluster(opts: Options, users: BenchUsers) -> dict[str, Any]:
    n, u = opts.cluster_connections, min(opts.cluster_users, len(users.sessions))
    configs = [c for c in CONFIGS if c[0] in opts.cluster_configs]
    if not opts.baselines:
        configs = [c for c in configs if c[2]]
    metrics: dict[str, Any] = {"windowMs": opts.cluster_window_ms}
    if not REDIS_PRESENT:
        log(f"cluster: {REDIS_SERVER} is not installed (apt-get install redis-server); skipped")
        return metrics
    for label, count, with_redis in configs:
        log(
            f"cluster {label}: {count} node(s), {'Redis' if with_redis else 'in-process bus'}, "
            f"{n} connections, {u} users, {opts.cluster_rate:g} events/s, "
            f"window {opts.cluster_window_ms} ms"
        )
        result = await measure(opts, users, label, count, with_redis)
        metrics.update({f"{label}.{k}": v for k, v in result.items()})
    one, two = metrics.get("one.latencyP99Ms"), metrics.get("two.latencyP99Ms")
    base = metrics.get("inproc.latencyP99Ms")
    if one is not None and base is not None:
        metrics["redisHopP99AddedMs"] = round(one - base, 3)
        metrics["redisHopP50AddedMs"] = round(
            metrics["one.latencyP50Ms"] - metrics["inproc.latencyP50Ms"], 3
        )
    if one is not None and two is not None and metrics["one.messagesOutPerS"]:
        metrics["twoOverOneMessages"] = round(
            metrics["two.messagesOutPerS"] / metrics["one.messagesOutPerS"], 3
        )
        metrics["twoMinusOneP99Ms"] = round(two - one, 3)
    return metrics
