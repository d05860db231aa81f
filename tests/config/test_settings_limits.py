"""The API and health limits are settings: environment names, defaults and bounds."""

from __future__ import annotations

import pytest

from config.settings import Settings
from tests.config.refusal import failure

DEFAULTS = {
    "POLL_INTERVAL_MS": 5000,
    "HTTP_MAX_BODY_BYTES": 16 * 1024,
    "DEGRADED_DISCONNECT_RATIO": 0.10,
    "DEGRADED_DISCONNECT_WINDOW_S": 60.0,
    "DEGRADED_MIN_BATCH_EFFICIENCY": 0.5,
    "DEGRADED_MIN_DELIVERIES": 100,
}


@pytest.mark.usefixtures("clean_env")
def test_defaults_are_the_contracts_numbers() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert {name: getattr(settings, name.lower()) for name in DEFAULTS} == DEFAULTS


def test_each_is_read_from_its_variable(clean_env: pytest.MonkeyPatch) -> None:
    values = {
        "POLL_INTERVAL_MS": "2000",
        "HTTP_MAX_BODY_BYTES": "4096",
        "DEGRADED_DISCONNECT_RATIO": "0.25",
        "DEGRADED_DISCONNECT_WINDOW_S": "120",
        "DEGRADED_MIN_BATCH_EFFICIENCY": "0.8",
        "DEGRADED_MIN_DELIVERIES": "1000",
    }
    for name, value in values.items():
        clean_env.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert {name: str(getattr(settings, name.lower())) for name in values} == {
        **values,
        "DEGRADED_DISCONNECT_WINDOW_S": "120.0",
    }


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("POLL_INTERVAL_MS", "999"),  # a poll storm
        ("HTTP_MAX_BODY_BYTES", "100"),  # below any login body
        ("DEGRADED_DISCONNECT_RATIO", "-0.1"),
        ("DEGRADED_DISCONNECT_WINDOW_S", "0"),
        ("DEGRADED_MIN_BATCH_EFFICIENCY", "1.5"),
        ("DEGRADED_MIN_DELIVERIES", "-1"),
    ],
)
def test_an_out_of_range_value_names_the_variable(
    clean_env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    line = failure(clean_env, **{variable: value})
    assert line.startswith(f"invalid configuration: {variable}:")
