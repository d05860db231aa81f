"""Output: the stdout table, the JSON file, the latency plot, the machine description."""

from __future__ import annotations

import os
import platform
import sys
from array import array
from importlib import metadata
from pathlib import Path
from typing import Any

# (scenario, metric, label, unit, target description, predicate on the median)
TARGETS: list[tuple[str, str, str, str, str, Any]] = [
    ("capacity", "service.held", "connections held", "", ">= 19000", lambda v, s: v >= 19_000),
    (
        "capacity",
        "rssPerConnVsBare",
        "RSS/conn vs bare aiohttp",
        "x",
        "<= 1.15",
        lambda v, s: v <= 1.15,
    ),
    (
        "fanout",
        "service.latencyP99Ms",
        "fanout p99",
        "ms",
        "<= window + 25",
        lambda v, s: v <= s["service.windowMs"]["median"] + 25,
    ),
    (
        "latency",
        "service.latencyP99Ms",
        "latency p99 (window 0)",
        "ms",
        "<= 5",
        lambda v, s: v <= 5,
    ),
    (
        "ingest",
        "eventsPerCoreS",
        "ingest events/s per core",
        "",
        ">= 200000",
        lambda v, s: v >= 200_000,
    ),
    (
        "cluster",
        "redisHopP99AddedMs",
        "p99 the Redis hop adds",
        "ms",
        "<= 5 at 10,000/s",
        lambda v, s: v <= 5 and s["one.eventsInPerS"]["median"] >= 9_900,
    ),
    (
        "cluster",
        "twoOverOneMessages",
        "messages/s two nodes ÷ one",
        "x",
        ">= 1.7, same p99",
        lambda v, s: (
            v >= 1.7 and s["two.latencyP99Ms"]["median"] <= s["one.latencyP99Ms"]["median"]
        ),
    ),
    (
        "fanout",
        "cpuPerDeliverySocketioOverService",
        "CPU/update socketio ÷ service",
        "x",
        ">= 5",
        lambda v, s: v >= 5,
    ),
]

ROWS: dict[str, list[tuple[str, str]]] = {
    "capacity": [
        ("service.held", "connections held"),
        ("service.serverActive", "server-reported active"),
        ("service.failures", "failed attempts"),
        ("service.acceptPerS", "accepts/s"),
        ("service.acceptP50Ms", "accept p50 ms"),
        ("service.acceptP99Ms", "accept p99 ms"),
        ("service.serverCpuPerAcceptMs", "server CPU/accept ms"),
        ("service.rssPerConnKiB", "RSS/conn KiB"),
        ("service.rssHeldMiB", "RSS held MiB"),
        ("service.serverFds", "server open fds"),
        ("service.foreignCpuCores", "other load on the machine (cores)"),
        ("bare.held", "bare: connections held"),
        ("bare.rssPerConnKiB", "bare: RSS/conn KiB"),
        ("rssPerConnVsBare", "RSS/conn ratio vs bare"),
    ],
    "fanout": [
        ("service.connections", "connections"),
        ("service.eventsInPerS", "events/s in"),
        ("service.messagesOutPerS", "messages/s out"),
        ("service.deliveriesPerS", "event deliveries/s"),
        ("service.batchEfficiency", "batch efficiency"),
        ("service.latencyP50Ms", "p50 ms"),
        ("service.latencyP90Ms", "p90 ms"),
        ("service.latencyP99Ms", "p99 ms"),
        ("service.latencyMaxMs", "max ms"),
        ("service.serverCpuUtil", "server CPU (cores)"),
        ("service.serverCpuPerDeliveryUs", "server CPU/delivery µs"),
        ("service.serverCpuPerEventUs", "server CPU/event in µs"),
        ("service.serverGcShare", "server time in GC (share of wall)"),
        ("service.serverRunqueueWaitShare", "server waiting for a CPU (share)"),
        ("service.serverGcFullCollections", "full GC collections"),
        ("service.serverGcLongestMs", "longest GC pause ms (whole run)"),
        ("service.rssPerConnKiB", "RSS/conn KiB (idle)"),
        ("service.clientCpuUtil", "load client CPU (cores)"),
        ("service.foreignCpuCores", "other load on the machine (cores)"),
        ("service.clientErrors", "client errors"),
        ("service.clientDropped", "dropped"),
        ("socketio.eventsInPerS", "socketio: events/s in"),
        ("socketio.deliveriesPerS", "socketio: deliveries/s"),
        ("socketio.latencyP50Ms", "socketio: p50 ms"),
        ("socketio.latencyP99Ms", "socketio: p99 ms"),
        ("socketio.serverCpuUtil", "socketio: server CPU (cores)"),
        ("socketio.serverCpuPerDeliveryUs", "socketio: CPU/delivery µs"),
        ("socketio.rssPerConnKiB", "socketio: RSS/conn KiB"),
        ("socketio.serverGcShare", "socketio: time in GC (share)"),
        ("socketio.foreignCpuCores", "socketio: other load (cores)"),
        ("cpuPerDeliverySocketioOverService", "CPU/delivery ratio socketio÷service"),
        ("rssPerConnSocketioOverService", "RSS/conn ratio socketio÷service"),
    ],
    "latency": [
        ("service.connections", "connections"),
        ("service.eventsInPerS", "events/s in"),
        ("service.messagesOutPerS", "messages/s out"),
        ("service.latencyP50Ms", "p50 ms"),
        ("service.latencyP90Ms", "p90 ms"),
        ("service.latencyP99Ms", "p99 ms"),
        ("service.latencyMaxMs", "max ms"),
        ("service.serverCpuUtil", "server CPU (cores)"),
        ("service.serverCpuPerDeliveryUs", "server CPU/delivery µs"),
        ("service.serverGcLongestMs", "longest GC pause ms (whole run)"),
        ("service.serverRunqueueWaitShare", "server waiting for a CPU (share)"),
        ("service.clientCpuUtil", "load client CPU (cores)"),
        ("service.foreignCpuCores", "other load on the machine (cores)"),
        ("service.clientErrors", "client errors"),
    ],
    "cluster": [
        ("windowMs", "batch window ms"),
        *(
            row
            for prefix, title in (
                ("inproc", "1 node, no Redis"),
                ("one", "1 node, Redis"),
                ("two", "2 nodes, Redis"),
            )
            for row in (
                (f"{prefix}.connections", f"{title}: connections"),
                (f"{prefix}.eventsInPerS", f"{title}: events/s in"),
                (f"{prefix}.messagesOutPerS", f"{title}: messages/s out"),
                (f"{prefix}.deliveredShare", f"{title}: delivered share"),
                (f"{prefix}.latencyP50Ms", f"{title}: p50 ms"),
                (f"{prefix}.latencyP99Ms", f"{title}: p99 ms"),
                (f"{prefix}.latencyMaxMs", f"{title}: max ms"),
                (f"{prefix}.serverCpuUtil", f"{title}: node CPU (cores)"),
                (f"{prefix}.nodeA.cpuUtil", f"{title}: node a CPU (cores)"),
                (f"{prefix}.nodeB.cpuUtil", f"{title}: node b CPU (cores)"),
                (f"{prefix}.nodeB.messagesOutPerS", f"{title}: node b messages/s"),
                (f"{prefix}.redisCpuUtil", f"{title}: redis-server CPU (cores)"),
                (f"{prefix}.cpuPerDeliveryUs", f"{title}: CPU/delivery µs"),
                (f"{prefix}.clientCpuUtil", f"{title}: load client CPU (cores)"),
                (f"{prefix}.foreignCpuCores", f"{title}: other load (cores)"),
                (f"{prefix}.clientErrors", f"{title}: client errors"),
                (f"{prefix}.clientDropped", f"{title}: dropped"),
            )
        ),
        ("redisHopP50AddedMs", "p50 the Redis hop adds ms"),
        ("redisHopP99AddedMs", "p99 the Redis hop adds ms"),
        ("twoOverOneMessages", "messages/s two nodes ÷ one"),
        ("twoMinusOneP99Ms", "p99 two nodes − one ms"),
    ],
    "ingest": [
        ("eventsPerCoreS", "events/s per core"),
        ("cpuPerEventUs", "CPU/event µs"),
        ("users", "users"),
        ("events", "events"),
    ],
}


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    import resource
    import subprocess

    try:
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
            check=False,
        ).stdout.strip()
    except OSError:
        revision = "unknown"

    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ramGiB": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "python-socketio": version("python-socketio"),
        "orjson": version("orjson"),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "revision": revision or "unknown",
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(summary: dict[str, dict[str, Any]], runs: int) -> str:
    lines = [f"portfolio-stream bench — median of {runs} run(s) [min – max]", ""]
    for scenario, rows in ROWS.items():
        metrics = summary.get(scenario)
        if not metrics:
            continue
        lines.append(f"== {scenario}")
        for key, label in rows:
            cell = metrics.get(key)
            if cell is None:
                continue
            if isinstance(cell, dict) and "median" in cell:
                text = f"{_fmt(cell['median']):>12}  [{_fmt(cell['min'])} – {_fmt(cell['max'])}]"
            else:
                text = f"{_fmt(cell):>12}"
            lines.append(f"  {label:<38} {text}")
        lines.append("")
    disturbed = [
        f"{scenario} {key.split('.')[0]}: {cell['max']:.2f}"
        for scenario, metrics in summary.items()
        for key, cell in metrics.items()
        if key.endswith("foreignCpuCores") and isinstance(cell, dict) and cell["max"] > 0.25
    ]
    if disturbed:
        lines.append(
            "!! other processes used CPU during these measurements (cores, worst run): "
            + "; ".join(disturbed)
        )
        lines.append("!! the machine has 2 cores: latency and throughput figures are disturbed")
        lines.append("")
    lines.append("== targets")
    for scenario, key, label, unit, goal, met in TARGETS:
        cell = summary.get(scenario, {}).get(key)
        if not isinstance(cell, dict) or "median" not in cell:
            lines.append(f"  {label:<38} {'not measured':>12}  target {goal}")
            continue
        try:
            ok = bool(met(cell["median"], summary[scenario]))
        except (KeyError, TypeError):
            ok = False
        verdict = "MET" if ok else "NOT MET"
        lines.append(
            f"  {label:<38} {_fmt(cell['median']) + unit:>12}  target {goal:<16} {verdict}"
        )
    return "\n".join(lines)


def verdicts(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario, key, label, _unit, goal, met in TARGETS:
        cell = summary.get(scenario, {}).get(key)
        if isinstance(cell, dict) and "median" in cell:
            try:
                ok: bool | None = bool(met(cell["median"], summary[scenario]))
            except (KeyError, TypeError):
                ok = None
            out[label] = {"median": cell["median"], "target": goal, "met": ok}
    return out


def plot(samples: dict[str, array[float]], path: Path) -> Path | None:
    """CDFs of per-batch latency (oldest entry of each received batch), one panel per window."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [
        ("fanout", "fanout, last run"),
        ("latency", "latency (window 0), last run"),
        ("cluster", "cluster, last run"),
    ]
    present = [(k, t) for k, t in panels if any(n.startswith(k) for n in samples)]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(6.5 * len(present), 4.2), squeeze=False)
    for ax, (prefix, title) in zip(axes[0], present, strict=True):
        for name, values in samples.items():
            if not name.startswith(prefix) or not values:
                continue
            ordered = sorted(v * 1000 for v in values)
            step = max(1, len(ordered) // 4000)
            xs = [*ordered[::step], ordered[-1]]
            ys = [*(i * step / len(ordered) for i in range(len(xs) - 1)), 1.0]
            ax.plot(xs, ys, label=f"{name.split('.', 1)[1]} (n={len(ordered):,})")
        ax.set_xscale("log")
        ax.set_xlabel("event creation → client receipt (ms, log)")
        ax.set_ylabel("fraction of batches")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
