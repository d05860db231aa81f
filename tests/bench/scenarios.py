"""The five scenarios and their baselines; each returns one run's flat metrics.

capacity  ramp to N connections (or the first failure) on the service, then on bare aiohttp
fanout    N connections, R events/s, batch window W; then the python-socketio build, same job
latency   BATCH_WINDOW_MS=0, R events/s
ingest    the bus + batcher alone, in process, no sockets (see ingest.py)
cluster   one node on Redis, two nodes on one Redis, one node without (see cluster.py)
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.bench.db import BenchUsers
from tests.bench.procs import ClientGroup, ServerProcess, child_env, machine_busy_s
from tests.bench.stats import percentile


@dataclass
class Options:
    workdir: Path
    runs: int = 3
    client_procs: int = 4
    capacity_target: int = 19_000
    capacity_users: int = 4_000
    fanout_connections: int = 10_000
    fanout_users: int = 5_000
    fanout_rate: float = 10_000
    fanout_window_ms: int = 1_000
    latency_connections: int = 1_000
    latency_users: int = 500
    latency_rate: float = 1_000
    # cluster: the latency scenario's load (window 0, so the hop is not hidden in a window),
    # which one node with Redis, a second node, redis-server and the load clients can carry
    # on 2 cores; 10,000 events/s is past what one node with Redis can write (performance.md).
    cluster_connections: int = 1_000
    cluster_users: int = 500
    cluster_rate: float = 1_000
    cluster_window_ms: int = 0
    cluster_configs: tuple[str, ...] = ("inproc", "one", "two")
    ingest_users: int = 300
    ingest_seconds: float = 3.0
    warmup_s: float = 3.0
    measure_s: float = 10.0
    settle_s: float = 2.0
    ramp_timeout_s: float = 300.0
    baselines: bool = True
    profile: bool = False
    tiny: bool = False
    keep_logs: bool = False
    server_env: dict[str, str] = field(default_factory=dict)
    samples: dict[str, array[float]] = field(default_factory=dict)

    def users_needed(self) -> int:
        return max(self.capacity_users, self.fanout_users, self.latency_users, self.cluster_users)


def log(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def user_ids_file(opts: Options, users: BenchUsers, connected: int) -> Path:
    """The users the event source draws from: exactly the ones the scenario connects."""
    path = opts.workdir / f"user-ids-{connected}.txt"
    path.write_text("\n".join(users.user_ids()[:connected]) + "\n")
    return path


def service(
    opts: Options,
    users: BenchUsers,
    name: str,
    *,
    connected: int,
    window_ms: int,
    max_total: int,
    per_user: int,
) -> ServerProcess:
    ids = user_ids_file(opts, users, connected)
    env = {
        "DATABASE_URL": f"sqlite:///{users.path}",
        "LOG_FILE": str(opts.workdir / f"{name}.log"),
        "BATCH_WINDOW_MS": str(window_ms),
        "MAX_TOTAL_CONNECTIONS": str(max_total),
        "MAX_CONNECTIONS_PER_USER": str(per_user),
        "BENCH_USER_IDS_FILE": str(ids),
        **opts.server_env,
    }
    if opts.profile and name.startswith("fanout"):
        env["BENCH_PROFILE"] = str(opts.workdir / "profile-fanout.txt")
    return ServerProcess("tests.bench.server_main", env, opts.workdir, name)


def peer(opts: Options, users: BenchUsers, module: str, name: str, connected: int) -> ServerProcess:
    ids = user_ids_file(opts, users, connected)
    return ServerProcess(
        module,
        {"BENCH_USER_IDS_FILE": str(ids)},
        opts.workdir,
        name,
        with_control=module != "tests.bench.bare_server",
    )


async def admin_stats(server: ServerProcess, users: BenchUsers) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.port}/api/admin/websocket-stats"
    async with (
        aiohttp.ClientSession(cookies={"session": users.admin_token}) as http,
        http.get(url, timeout=aiohttp.ClientTimeout(total=30)) as response,
    ):
        document: dict[str, Any] = await response.json()
        return document


def finish_log(opts: Options, name: str) -> int:
    """Size of the service's LOG_FILE (then removed unless --keep-logs)."""
    path = opts.workdir / f"{name}.log"
    if not path.exists():
        return 0
    size = path.stat().st_size
    if not opts.keep_logs:
        path.unlink()
    return size


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# capacity


async def hold(
    opts: Options, server: ServerProcess, protocol: str, conns: list[tuple[str, str]]
) -> tuple[dict[str, Any], ClientGroup]:
    """Start the server, ramp the connections, settle; CPU and RSS before and after."""
    await server.start()
    await asyncio.sleep(opts.settle_s)  # let start-up allocations settle before the baseline
    rss0, cpu0 = server.rss_kib(), server.cpu_s()
    busy0, self0, wall0 = machine_busy_s(), time.process_time(), time.monotonic()
    procs = max(1, min(opts.client_procs, math.ceil(len(conns) / 1000)))
    group = ClientGroup(
        protocol,
        server,
        conns,
        procs,
        opts.workdir,
        stop_on_failure=True,
        max_seconds=opts.ramp_timeout_s + 600,
    )
    await group.start()
    try:
        ready = await group.wait_ready(opts.ramp_timeout_s)
    except BaseException:
        await group.close()
        raise
    await asyncio.sleep(opts.settle_s)
    held = ready["ready"]
    rss1, cpu1 = server.rss_kib(), server.cpu_s()
    busy1, self1, wall1 = machine_busy_s(), time.process_time(), time.monotonic()
    clients = group.cpu_s()
    accept = sorted(ready["acceptS"])
    result = {
        "attempted": len(conns),
        "held": held,
        "failures": sum(ready["failures"].values()),
        "failureReasons": ready["failures"],
        "rampS": round(ready["rampS"], 3),
        "acceptPerS": round(held / ready["rampS"], 1) if ready["rampS"] else 0.0,
        "acceptP50Ms": ms(percentile(accept, 0.50)),
        "acceptP99Ms": ms(percentile(accept, 0.99)),
        "acceptMaxMs": ms(accept[-1]) if accept else 0.0,
        "serverCpuPerAcceptMs": round((cpu1 - cpu0) / held * 1000, 3) if held else 0.0,
        "rssBeforeMiB": round(rss0 / 1024, 1),
        "rssHeldMiB": round(rss1 / 1024, 1),
        "rssPerConnKiB": round((rss1 - rss0) / held, 2) if held else 0.0,
        "serverFds": server.fds(),
        "foreignCpuCores": round(
            max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - clients - (self1 - self0)) / (wall1 - wall0),
            2,
        ),
    }
    return result, group


async def capacity(opts: Options, users: BenchUsers) -> dict[str, Any]:
    target, n_users = opts.capacity_target, min(opts.capacity_users, len(users.sessions))
    conns = users.connections(target, n_users)
    per_user = math.ceil(target / n_users)
    server = service(
        opts,
        users,
        "capacity",
        connected=n_users,
        window_ms=1000,
        max_total=target,
        per_user=per_user,
    )
    log(f"capacity: service, {target} connections over {n_users} users")
    try:
        ours, group = await hold(opts, server, "portfolio", conns)
        try:
            stats = await admin_stats(server, users)
            ours["serverActive"] = stats["activeConnections"]
        except (aiohttp.ClientError, TimeoutError) as exc:
            # At the open-file limit the server cannot accept even the stats request.
            ours["serverActive"] = -1
            ours["statsError"] = f"{type(exc).__name__}: {exc}"
        await group.close()
    finally:
        await server.stop()
    ours["logBytes"] = finish_log(opts, "capacity")
    metrics = {f"service.{k}": v for k, v in ours.items()}
    if opts.baselines:
        bare = peer(opts, users, "tests.bench.bare_server", "capacity-bare", n_users)
        log(f"capacity: bare aiohttp floor, {target} connections")
        try:
            floor, group = await hold(opts, bare, "bare", conns)
            await group.close()
        finally:
            await bare.stop()
        metrics.update({f"bare.{k}": v for k, v in floor.items()})
        if floor["rssPerConnKiB"] > 0:
            metrics["rssPerConnVsBare"] = round(ours["rssPerConnKiB"] / floor["rssPerConnKiB"], 3)
    return metrics


# fanout / latency


async def stream(
    opts: Options,
    server: ServerProcess,
    protocol: str,
    conns: list[tuple[str, str]],
    rate: float,
    users: BenchUsers | None,
    label: str,
) -> dict[str, Any]:
    """Hold ``conns``, run the source at ``rate``, measure a window after a warm-up."""
    result, group = await hold(opts, server, protocol, conns)
    try:
        seconds = opts.warmup_s + opts.measure_s + 2
        await server.control(cmd="start", rate=rate, seconds=seconds)
        await asyncio.sleep(opts.warmup_s)
        await group.reset()
        source0 = await server.control(cmd="stats")
        stats0 = await admin_stats(server, users) if users else None
        cpu0, client0, t0 = server.cpu_s(), group.cpu_s(), time.monotonic()
        wait0 = server.runqueue_wait_s()
        busy0, self0 = machine_busy_s(), time.process_time()
        await asyncio.sleep(opts.measure_s)
        cpu1, client1, t1 = server.cpu_s(), group.cpu_s(), time.monotonic()
        wait1 = server.runqueue_wait_s()
        busy1, self1 = machine_busy_s(), time.process_time()
        source1 = await server.control(cmd="stats")
        stats1 = await admin_stats(server, users) if users else None
        report = await group.report()
        await server.control(cmd="stop")
        rss_load = server.rss_kib()
    finally:
        await group.close()
    elapsed = t1 - t0
    cpu = cpu1 - cpu0
    published = source1["published"] - source0["published"]
    batch = sorted(report["batchLatency"])
    entries = sorted(report["entryLatency"])
    opts.samples[label] = report["batchLatency"]
    deliveries, messages = report["events"], report["messages"]
    metrics: dict[str, Any] = {
        "connections": result["held"],
        "rssPerConnKiB": result["rssPerConnKiB"],
        "rssUnderLoadMiB": round(rss_load / 1024, 1),
        "eventsInPerS": round(published / elapsed, 1),
        "messagesOutPerS": round(messages / elapsed, 1),
        "deliveriesPerS": round(deliveries / elapsed, 1),
        "batchEfficiency": round(1 - messages / deliveries, 4) if deliveries else 0.0,
        "latencyP50Ms": ms(percentile(batch, 0.50)),
        "latencyP90Ms": ms(percentile(batch, 0.90)),
        "latencyP99Ms": ms(percentile(batch, 0.99)),
        "latencyMaxMs": ms(batch[-1]) if batch else 0.0,
        "entryLatencyP50Ms": ms(percentile(entries, 0.50)),
        "entryLatencyP99Ms": ms(percentile(entries, 0.99)),
        "serverCpuUtil": round(cpu / elapsed, 3),
        "serverCpuPerDeliveryUs": round(cpu / deliveries * 1e6, 3) if deliveries else 0.0,
        "serverCpuPerEventUs": round(cpu / published * 1e6, 3) if published else 0.0,
        "serverCpuPerMessageUs": round(cpu / messages * 1e6, 3) if messages else 0.0,
        "clientCpuUtil": round((client1 - client0) / elapsed, 3),
        # Share of the window the server's loop was ready to run but had no CPU.
        "serverRunqueueWaitShare": round((wait1 - wait0) / elapsed, 3),
        # CPU used by everything else on the machine meanwhile (other jobs compete for the 2
        # cores: a figure far above 0 means the run was disturbed).
        "foreignCpuCores": round(
            max(0.0, (busy1 - busy0) - cpu - (client1 - client0) - (self1 - self0)) / elapsed, 2
        ),
        "clientErrors": report["errors"],
        "clientDropped": report["dropped"],
        "connectFailures": result["failures"],
        "closeCodes": report["closeCodes"],
    }
    gc_s = [b - a for a, b in zip(source0["gcSeconds"], source1["gcSeconds"], strict=True)]
    gc_n = [b - a for a, b in zip(source0["gcCount"], source1["gcCount"], strict=True)]
    metrics["serverGcShare"] = round(sum(gc_s) / elapsed, 3)
    metrics["serverGcFullCollections"] = gc_n[2]
    metrics["serverGcFullS"] = round(gc_s[2], 3)
    metrics["serverGcLongestMs"] = ms(source1["gcLongestS"])
    if stats0 is not None and stats1 is not None:
        delivered = stats1["totalMessagesDelivered"] - stats0["totalMessagesDelivered"]
        metrics["serverMessagesPerS"] = round(delivered / elapsed, 1)
        metrics["serverBatchEfficiency"] = stats1["performance"]["batchEfficiencyRaw"]
    return metrics


async def fanout(opts: Options, users: BenchUsers) -> dict[str, Any]:
    n, u = opts.fanout_connections, min(opts.fanout_users, len(users.sessions))
    conns = users.connections(n, u)
    server = service(
        opts,
        users,
        "fanout",
        connected=u,
        window_ms=opts.fanout_window_ms,
        max_total=n,
        per_user=math.ceil(n / u),
    )
    log(
        f"fanout: service, {n} connections, {u} users, {opts.fanout_rate:g} events/s, "
        f"window {opts.fanout_window_ms} ms"
    )
    try:
        ours = await stream(
            opts, server, "portfolio", conns, opts.fanout_rate, users, "fanout.service"
        )
    finally:
        await server.stop()
    ours["logBytes"] = finish_log(opts, "fanout")
    ours["windowMs"] = opts.fanout_window_ms
    metrics = {f"service.{k}": v for k, v in ours.items()}
    if opts.baselines and sio_available():
        sio = peer(opts, users, "tests.bench.sio_server", "fanout-sio", u)
        log("fanout: python-socketio build, same job")
        try:
            theirs = await stream(
                opts, sio, "sio", conns, opts.fanout_rate, None, "fanout.socketio"
            )
        finally:
            await sio.stop()
        metrics.update({f"socketio.{k}": v for k, v in theirs.items()})
        if ours["serverCpuPerDeliveryUs"]:
            metrics["cpuPerDeliverySocketioOverService"] = round(
                theirs["serverCpuPerDeliveryUs"] / ours["serverCpuPerDeliveryUs"], 2
            )
        if ours["rssPerConnKiB"]:
            metrics["rssPerConnSocketioOverService"] = round(
                theirs["rssPerConnKiB"] / ours["rssPerConnKiB"], 2
            )
    elif opts.baselines:
        log("fanout: python-socketio is not installed (pip install -e '.[bench]'); skipped")
    return metrics


async def latency(opts: Options, users: BenchUsers) -> dict[str, Any]:
    n, u = opts.latency_connections, min(opts.latency_users, len(users.sessions))
    conns = users.connections(n, u)
    server = service(
        opts, users, "latency", connected=u, window_ms=0, max_total=n, per_user=math.ceil(n / u)
    )
    log(
        f"latency: service, {n} connections, {u} users, {opts.latency_rate:g} events/s, window 0 ms"
    )
    try:
        ours = await stream(
            opts, server, "portfolio", conns, opts.latency_rate, users, "latency.service"
        )
    finally:
        await server.stop()
    ours["logBytes"] = finish_log(opts, "latency")
    return {f"service.{k}": v for k, v in ours.items()}


async def ingest(opts: Options, users: BenchUsers) -> dict[str, Any]:
    out = opts.workdir / "ingest.json"
    out.unlink(missing_ok=True)
    args = [
        sys.executable,
        "-m",
        "tests.bench.ingest",
        "--users",
        str(opts.ingest_users),
        "--seconds",
        str(opts.ingest_seconds),
        "--out",
        str(out),
        "--workdir",
        str(opts.workdir),
    ]
    if opts.profile:
        args += ["--profile", str(opts.workdir / "profile-ingest.txt")]
    log(f"ingest: bus + batcher in process, {opts.ingest_users} users, {opts.ingest_seconds:g} s")
    proc = await asyncio.create_subprocess_exec(
        *args,
        env=child_env({}),
        cwd=opts.workdir,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), opts.ingest_seconds * 4 + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"ingest failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def sio_available() -> bool:
    try:
        import socketio  # noqa: F401
    except ImportError:
        return False
    return True


async def cluster(opts: Options, users: BenchUsers) -> dict[str, Any]:
    from tests.bench.cluster import cluster as run

    return await run(opts, users)


SCENARIOS = {
    "capacity": capacity,
    "fanout": fanout,
    "latency": latency,
    "ingest": ingest,
    "cluster": cluster,
}
