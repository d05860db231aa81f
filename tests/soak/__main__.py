"""``python -m tests.soak``: run the soak scenarios, write their figures as JSON, print a table.

Bounded in count and time and on loopback only: at most ``MAX_CLIENTS`` clients and
``MAX_SECONDS`` of held load per scenario. Exits 1 when any promise did not hold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.soak.scenarios import SCENARIOS, Result, Scale, run

MAX_CLIENTS = 5000
MAX_SECONDS = 600
MAX_KILLS = 500
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memoryGiB": round(memory_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
    }


def table(results: list[Result]) -> str:
    lines = []
    for result in results:
        lines.append(f"== {result.name} ({result.seconds}s)")
        for key, value in result.figures.items():
            lines.append(f"   {key:<44} {json.dumps(value)[:100]}")
        for promise, held in result.promises.items():
            lines.append(f"   [{'held' if held else 'BROKEN'}] {promise}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000, help=f"at most {MAX_CLIENTS}")
    parser.add_argument("--seconds", type=float, default=60, help="held load per scenario")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma list of scenarios")
    parser.add_argument(
        "--kills", type=int, default=100, help=f"failover: holder SIGKILLs, at most {MAX_KILLS}"
    )
    args = parser.parse_args(argv)
    clients = max(10, min(args.clients, MAX_CLIENTS))
    seconds = max(5.0, min(args.seconds, MAX_SECONDS))
    kills = max(1, min(args.kills, MAX_KILLS))
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    RESULTS.mkdir(exist_ok=True)
    started = time.time()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        for name in names:
            scenario_dir = Path(workdir) / name
            scenario_dir.mkdir()
            print(f"soak: {name} ({clients} clients, {seconds:.0f}s)...", flush=True)
            results.append(run(name, Scale(clients, seconds, scenario_dir, kills)))
    document = {
        "startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "scale": {"clients": clients, "seconds": seconds, "kills": kills},
        "machine": machine(),
        "scenarios": [
            {"name": r.name, "seconds": r.seconds, "figures": r.figures, "promises": r.promises}
            for r in results
        ],
    }
    out = RESULTS / f"soak-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(started))}.json"
    out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(table(results))
    print(f"figures written to {out}")
    broken = [p for r in results for p, held in r.promises.items() if not held]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
