"""The benchmark harness still runs end to end (a tiny pass; `make bench` is the real thing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = (sys.executable, "-m", "tests.bench", "--tiny", "--runs", "1")
SINGLE_NODE = ("capacity", "fanout", "latency", "ingest")


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_tiny_bench_run_measures_every_scenario(tmp_path: Path) -> None:
    """Servers start, connections are held, batches arrive and every single-node scenario
    reports."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--tiny", "--runs", "1", "--results", str(tmp_path)]
        + [arg for name in SINGLE_NODE for arg in ("--scenario", name)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== targets" in done.stdout
    result = json.loads((tmp_path / "latest.json").read_text())
    summary = result["summary"]
    capacity, fanout = summary["capacity"], summary["fanout"]
    assert capacity["service.held"]["median"] == capacity["service.attempted"]["median"]
    assert capacity["bare.held"]["median"] == capacity["service.attempted"]["median"]
    assert fanout["service.connections"]["median"] == 40
    assert fanout["service.deliveriesPerS"]["median"] > 0
    assert fanout["service.clientErrors"]["median"] == 0
    # Window 200 ms: nothing arrives before the window, nothing long after it.
    assert 150 <= fanout["service.latencyP50Ms"]["median"] < 2000
    assert summary["latency"]["service.deliveriesPerS"]["median"] > 0
    assert summary["ingest"]["eventsPerCoreS"]["median"] > 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_tiny_cluster_run_reports_every_configuration(tmp_path: Path) -> None:
    """One node without Redis, one and two on a redis-server of the bench's own: each holds
    its connections and delivers, the node that does not publish included, and the scenario
    reports the hop and the ratio."""
    done = subprocess.run(
        [*TINY, "--scenario", "cluster", "--results", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=115,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== cluster" in done.stdout
    cluster = json.loads((tmp_path / "latest.json").read_text())["summary"]["cluster"]

    def median(key: str) -> float:
        value: float = cluster[key]["median"]
        return value

    for config in ("inproc", "one", "two"):
        assert median(f"{config}.connections") == 20
        assert median(f"{config}.serverSlotsHeld") == 20
        assert median(f"{config}.clientErrors") == 0
        assert median(f"{config}.messagesOutPerS") > 0
        assert median(f"{config}.latencyP99Ms") > 0
    assert median("two.nodeA.connections") == median("two.nodeB.connections") == 10
    # Node b publishes nothing: what its tabs receive came through Redis.
    assert median("two.nodeB.messagesOutPerS") > 0
    for key in ("redisHopP50AddedMs", "redisHopP99AddedMs", "twoOverOneMessages"):
        assert key in cluster
