"""The scale-out settings: environment names, defaults, and what is refused at start."""

from __future__ import annotations

import pytest

from config.settings import Settings
from tests.config.refusal import failure

DEFAULTS = {
    "REDIS_URL": None,
    "NODE_ID": None,
    "REDIS_TIMEOUT_S": 2.0,
    "REDIS_BACKOFF_INITIAL_S": 0.25,
    "REDIS_BACKOFF_MAX_S": 10.0,
    "REDIS_UNSUBSCRIBE_DELAY_S": 5.0,
    "REDIS_PROBE_INTERVAL_S": 5.0,
    "CLUSTER_ENTRY_TTL_S": 30.0,
    "CLUSTER_NODE_REPORT_INTERVAL_S": 3.0,
}


@pytest.mark.usefixtures("clean_env")
def test_defaults() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert {name: getattr(settings, name.lower()) for name in DEFAULTS} == DEFAULTS


def test_each_is_read_from_its_variable(clean_env: pytest.MonkeyPatch) -> None:
    values = {
        "REDIS_URL": "redis://:secret@10.0.0.5:6380/2",
        "NODE_ID": "edge-1:5001",
        "REDIS_TIMEOUT_S": "0.5",
        "REDIS_BACKOFF_INITIAL_S": "0.1",
        "REDIS_BACKOFF_MAX_S": "3",
        "REDIS_UNSUBSCRIBE_DELAY_S": "0",
        "REDIS_PROBE_INTERVAL_S": "1.5",
        "CLUSTER_ENTRY_TTL_S": "45",
        "CLUSTER_NODE_REPORT_INTERVAL_S": "1",
    }
    for name, value in values.items():
        clean_env.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.redis_url == values["REDIS_URL"] and settings.node_id == "edge-1:5001"
    assert (settings.redis_timeout_s, settings.redis_unsubscribe_delay_s) == (0.5, 0.0)
    assert (settings.cluster_entry_ttl_s, settings.cluster_node_report_interval_s) == (45.0, 1.0)


def test_empty_values_mean_unset(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", "")
    clean_env.setenv("NODE_ID", "")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.redis_url, settings.node_id) == (None, None)


def test_a_redis_url_of_another_scheme_is_refused_without_its_password(
    clean_env: pytest.MonkeyPatch,
) -> None:
    line = failure(clean_env, REDIS_URL="http://user:hunter2@cache:6379")
    assert line.startswith("invalid configuration: REDIS_URL: must start with redis://")
    assert "hunter2" not in line


def test_slots_must_outlive_the_heartbeat_that_refreshes_them(
    clean_env: pytest.MonkeyPatch,
) -> None:
    line = failure(
        clean_env,
        REDIS_URL="redis://127.0.0.1:6379/0",
        CLUSTER_ENTRY_TTL_S="10",
        HEARTBEAT_INTERVAL_MS="15000",
        HEARTBEAT_TIMEOUT_MS="30000",
    )
    assert "CLUSTER_ENTRY_TTL_S must exceed HEARTBEAT_INTERVAL_MS" in line


@pytest.mark.usefixtures("clean_env")
def test_without_redis_the_slot_lifetime_is_not_checked() -> None:
    settings = Settings(_env_file=None, cluster_entry_ttl_s=5)  # type: ignore[call-arg]
    assert settings.redis_url is None and settings.cluster_entry_ttl_s == 5


@pytest.mark.parametrize("node_id", ["has space", "new\nline", "x" * 101])
def test_a_node_id_redis_cannot_name_a_client_by_is_refused(
    clean_env: pytest.MonkeyPatch, node_id: str
) -> None:
    assert failure(clean_env, NODE_ID=node_id).startswith("invalid configuration: NODE_ID:")
