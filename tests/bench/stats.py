"""Small statistics helpers (pure Python, so the smoke test needs no numpy)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median of the runs with min and max beside it."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric across runs: numbers become {median, min, max}; others keep the last value."""
    summary: dict[str, Any] = {}
    keys = [k for run in runs for k in run]
    for key in dict.fromkeys(keys):
        values = [run[key] for run in runs if key in run]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        summary[key] = spread(numbers) if len(numbers) == len(values) else values[-1]
    return summary
