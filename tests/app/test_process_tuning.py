"""Process tuning: GC thresholds as a setting, timed collections, the open-file check."""

from __future__ import annotations

import gc
import resource
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.metrics import Metrics
from app.process_tuning import FileLimitTooLow, ensure_file_limit, timed_gc
from tests.conftest import make_settings


def test_gc_thresholds_parse_from_one_variable(tmp_path: Path) -> None:
    assert make_settings(tmp_path).gc_thresholds == (100_000, 50, 1_000)
    assert make_settings(tmp_path, gc_thresholds="700,10,10").gc_thresholds == (700, 10, 10)
    with pytest.raises(ValidationError, match="three comma-separated"):
        make_settings(tmp_path, gc_thresholds="700,10")
    with pytest.raises(ValidationError, match="positive"):
        make_settings(tmp_path, gc_thresholds="0,10,10")


def test_each_collection_is_timed_while_the_block_runs() -> None:
    pauses: list[tuple[int, float]] = []
    with timed_gc(lambda generation, seconds: pauses.append((generation, seconds))):
        gc.collect(1)
    count = len(pauses)
    gc.collect()
    assert count >= 1
    assert len(pauses) == count  # the callback is gone after the block
    assert all(generation in (0, 1, 2) and seconds >= 0 for generation, seconds in pauses)


def test_gc_pauses_are_exported_as_a_histogram() -> None:
    metrics = Metrics()
    metrics.observe_gc_pause(2, 0.003)
    text = metrics.render().decode()
    assert 'python_gc_pause_seconds_count{generation="2"} 1.0' in text


def test_the_file_limit_check_names_the_setting(tmp_path: Path) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert ensure_file_limit(make_settings(tmp_path, max_total_connections=100)) >= soft
    too_many = make_settings(tmp_path, max_total_connections=10_000_000)
    with pytest.raises(FileLimitTooLow, match="MAX_TOTAL_CONNECTIONS=10000000"):
        ensure_file_limit(too_many)
