"""The benchmark harness still runs end to end (a tiny pass; `make bench` is the real thing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_tiny_bench_run_measures_every_scenario(tmp_path: Path) -> None:
    """Servers start, connections are held, batches arrive and every scenario reports."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--tiny", "--runs", "1", "--results", str(tmp_path)],
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
