"""``python -m tests.bench``: run the scenarios, print the table, write JSON and a plot.

    make bench                                              # every scenario, 3 runs
    python -m tests.bench --scenario fanout --runs 1 --quick   # development loop
    python -m tests.bench --tiny                            # seconds-long smoke run

Each scenario runs ``--runs`` times; every figure is the median with min and max beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.db import create_users
from tests.bench.report import machine, plot, table, verdicts
from tests.bench.scenarios import SCENARIOS, Options, log
from tests.bench.stats import summarise

RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable; default: all)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="shorter warm-up and measurement windows (development)"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a few dozen connections for a few seconds (the smoke test)",
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip the bare-aiohttp and python-socketio runs"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="pyinstrument the fanout server and the ingest run (slower!)",
    )
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--connections", type=int, help="fanout and cluster connections")
    parser.add_argument("--users", type=int, help="fanout and cluster users")
    parser.add_argument("--rate", type=float, help="fanout and cluster events/s")
    parser.add_argument("--window-ms", type=int, help="fanout and cluster batch window")
    parser.add_argument(
        "--cluster-config",
        action="append",
        choices=["inproc", "one", "two"],
        help="cluster: run only this configuration (repeatable; default: all three)",
    )
    parser.add_argument("--capacity-target", type=int)
    parser.add_argument("--measure-s", type=float)
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the service under test (experiments)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the servers' LOG_FILEs and the work directory",
    )
    return parser.parse_args(argv)


def options(args: argparse.Namespace, workdir: Path) -> Options:
    opts = Options(
        workdir=workdir,
        runs=args.runs,
        client_procs=args.client_procs,
        baselines=not args.no_baselines,
        profile=args.profile,
        keep_logs=args.keep_logs,
        server_env=dict(item.split("=", 1) for item in args.server_env),
    )
    if args.cluster_config:
        opts.cluster_configs = tuple(args.cluster_config)
    if args.quick:
        opts.warmup_s, opts.measure_s, opts.settle_s = 2.0, 4.0, 1.0
    if args.tiny:
        opts.tiny = True
        opts.capacity_target, opts.capacity_users = 60, 20
        opts.fanout_connections, opts.fanout_users = 40, 20
        opts.fanout_rate, opts.fanout_window_ms = 400, 200
        opts.latency_connections, opts.latency_users, opts.latency_rate = 20, 10, 200
        opts.ingest_users, opts.ingest_seconds = 20, 0.5
        opts.cluster_connections, opts.cluster_users, opts.cluster_rate = 20, 10, 200
        opts.warmup_s, opts.measure_s, opts.settle_s = 0.5, 1.0, 0.3
        opts.client_procs = min(opts.client_procs, 2)
        opts.ramp_timeout_s = 30
    for name, attrs in (
        ("connections", ("fanout_connections", "cluster_connections")),
        ("users", ("fanout_users", "cluster_users")),
        ("rate", ("fanout_rate", "cluster_rate")),
        ("window_ms", ("fanout_window_ms", "cluster_window_ms")),
        ("capacity_target", ("capacity_target",)),
        ("measure_s", ("measure_s",)),
    ):
        value = getattr(args, name)
        if value is not None:
            for attr in attrs:
                setattr(opts, attr, value)
    return opts


def keep_profiles(workdir: Path, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    for profile in workdir.glob("profile-*.txt"):
        target = results / f"{profile.stem}-{time.strftime('%Y%m%dT%H%M%SZ')}.txt"
        shutil.copyfile(profile, target)
        log(f"profile: {target}")


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    names = args.scenario or list(SCENARIOS)
    workdir = Path(tempfile.mkdtemp(prefix="portfolio-stream-bench-"))
    opts = options(args, workdir)
    started = time.time()
    try:
        log(f"creating {opts.users_needed()} users with session cookies in {workdir}")
        users = await create_users(workdir / "bench.db", opts.users_needed())
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for index in range(opts.runs):
            for name in names:
                log(f"run {index + 1}/{opts.runs}")
                runs[name].append(await SCENARIOS[name](opts, users))
    finally:
        keep_profiles(workdir, args.results)
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"work directory kept: {workdir}")
    summary = {name: summarise(results) for name, results in runs.items()}
    return {
        "startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "durationS": round(time.time() - started, 1),
        "machine": machine(),
        "options": {k: v for k, v in vars(opts).items() if k != "samples"},
        "runs": runs,
        "summary": summary,
        "targets": verdicts(summary),
        "_samples": opts.samples,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.runs < 1:
        print("--runs must be at least 1", file=sys.stderr)
        return 2
    result = asyncio.run(run_all(args))
    samples = result.pop("_samples")
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    json_path = args.results / f"bench-{stamp}.json"
    png = plot(samples, args.results / f"latency-{stamp}.png")
    result["plot"] = str(png) if png else None
    json_path.write_text(json.dumps(result, indent=2, default=str))
    (args.results / "latest.json").write_text(json_path.read_text())
    print(table(result["summary"], args.runs))
    print(
        f"\nmachine: {result['machine']['nproc']} cores, {result['machine']['cpu']}, "
        f"{result['machine']['ramGiB']} GiB, Python {result['machine']['python']}, "
        f"aiohttp {result['machine']['aiohttp']}"
    )
    print(f"json: {json_path}")
    if png:
        print(f"plot: {png}")
    return 0
