"""`GET /metrics` has what the alerts and dashboards need; docs/alerts.yml is valid and fires."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no stubs in the test extra
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ClientFactory, login, publish
from tests.ops.conftest import REPO

ALERTS = REPO / "docs" / "alerts.yml"
ALERT_TESTS = REPO / "tests" / "ops" / "alerts_test.yml"

# The runbook's four alerts and their severities.
RUNBOOK_ALERTS = {
    "WebSocketServiceDown": "critical",
    "WebSocketHighDisconnectRate": "warning",
    "WebSocketLowBatchEfficiency": "info",
    "WebSocketConnectionCapacity": "warning",
}

# Metric families /metrics must expose (names as the text format shows them).
REQUIRED = {
    "websocket_active_connections": "gauge",
    "websocket_messages_delivered": "counter",
    "websocket_batch_messages": "counter",
    "websocket_event_deliveries": "counter",
    "portfolio_events_emitted": "counter",
    "websocket_disconnects": "counter",
    "websocket_reconnects": "counter",
    "websocket_batch_efficiency": "gauge",
    "websocket_connection_duration_seconds": "histogram",
    "websocket_delivery_latency_seconds": "histogram",
    "alpaca_stream_up": "gauge",
    "portfolio_bus_queue_depth": "gauge",
    "websocket_connections_limit": "gauge",
    "portfolio_draining": "gauge",
    "portfolio_realtime_enabled": "gauge",
}


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], name: str, suffix: str = "", **labels: str) -> float:
    for sample in families[name].samples:
        if sample.name == name + suffix and all(
            sample.labels.get(k) == v for k, v in labels.items()
        ):
            return float(sample.value)
    raise AssertionError(f"no sample {name}{suffix} {labels}")


async def test_metrics_exposes_every_family_and_follows_the_stream(
    app_client: ClientFactory,
) -> None:
    client = await app_client(
        batch_window_ms=20, max_total_connections=40, max_connections_per_user=4
    )
    token = await login(client, "alice")
    ws = await client.ws_connect("/ws/portfolio", headers={"Cookie": f"session={token}"})
    assert (await ws.receive_json())["type"] == "connected"
    await ws.send_json({"type": "subscribe", "channels": ["positions"]})
    assert (await ws.receive_json())["type"] == "subscribed"
    assert (await ws.receive_json())["type"] == "snapshot"
    user_id = (await (await client.get("/api/auth/me")).json())["user"]["userId"]
    publish(
        client,
        "position:updated",
        {
            "userId": user_id,
            "symbol": "AAPL",
            "qty": "1",
            "side": "long",
            "avgEntryPrice": "100",
            "currentPrice": "101",
            "marketValue": "101",
            "costBasis": "100",
            "unrealizedPnl": "1.00",
            "unrealizedPnlPercent": "1.00",
            "updatedAt": "2026-01-04T10:30:00.000Z",
        },
    )
    assert (await ws.receive_json())["type"] == "batch"

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = _families(await response.text())
    for name, kind in REQUIRED.items():
        assert name in families, name
        assert families[name].type == kind, (name, families[name].type)
    assert _value(families, "websocket_active_connections") == 1
    assert _value(families, "websocket_connections_limit", scope="total") == 40
    assert _value(families, "websocket_connections_limit", scope="user") == 4
    assert _value(families, "portfolio_events_emitted", "_total") >= 1
    assert _value(families, "websocket_messages_delivered", "_total") == 2  # snapshot + batch
    assert _value(families, "websocket_batch_messages", "_total") == 1
    assert _value(families, "websocket_delivery_latency_seconds", "_count") == 1
    # Every close code is exported from the start, so rate() has a zero to start from.
    assert _value(families, "websocket_disconnects", "_total", code="1001") == 0

    await ws.close()
    for _ in range(100):
        families = _families(await (await client.get("/metrics")).text())
        if _value(families, "websocket_active_connections") == 0:
            break
        await asyncio.sleep(0.01)
    assert _value(families, "websocket_disconnects", "_total", code="1000") == 1
    assert _value(families, "websocket_connection_duration_seconds", "_count") == 1


async def test_metrics_bearer_token(app_client: ClientFactory) -> None:
    client = await app_client(metrics_token="s3cret-token")
    assert (await client.get("/metrics")).status == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    right = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert right.status == 200
    assert "s3cret-token" not in await right.text()


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alerts_file_has_the_runbook_alerts() -> None:
    rules = {rule["alert"]: rule for rule in _rules()}
    for name, severity in RUNBOOK_ALERTS.items():
        assert name in rules, name
        assert rules[name]["labels"]["severity"] == severity
        assert {"summary", "description", "runbook"} <= set(rules[name]["annotations"])
    assert rules["WebSocketServiceDown"]["for"] == "5m"
    assert rules["WebSocketHighDisconnectRate"]["for"] == "5m"
    assert rules["WebSocketLowBatchEfficiency"]["for"] == "10m"
    # The runbook's own example expression survives as the core of alert 1.
    assert "websocket_active_connections == 0" in rules["WebSocketServiceDown"]["expr"]


def test_alerts_use_only_metrics_the_service_exports() -> None:
    known = set(REQUIRED) | {"up"}
    suffixes = ("_total", "_bucket", "_count", "_sum")
    functions = {
        "sum",
        "rate",
        "increase",
        "hour",
        "minute",
        "day_of_week",
        "on",
        "ignoring",
        "by",
        "and",
        "or",
        "humanizePercentage",
        "printf",
    }
    for rule in _rules():
        for name in set(re.findall(r"\b([a-z_][a-z0-9_]*)\b\s*(?:\{|\[|\)|\s|$)", rule["expr"])):
            if name in functions or name in ("scope", "instance", "job"):
                continue
            base = next((name.removesuffix(s) for s in suffixes if name.endswith(s)), name)
            assert base in known, f"{rule['alert']}: unknown metric {name}"


def test_runbook_anchors_in_alerts_exist() -> None:
    runbook = (REPO / "docs" / "runbook.md").read_text(encoding="utf-8")
    anchors = {
        _anchor(line.lstrip("#").strip()) for line in runbook.splitlines() if line.startswith("#")
    }
    for rule in _rules():
        target = rule["annotations"]["runbook"]
        assert target.startswith("docs/runbook.md#")
        assert target.split("#", 1)[1] in anchors, target


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.lower())
    return text.replace(" ", "-")


promtool = shutil.which("promtool")


@pytest.mark.skipif(promtool is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    assert promtool is not None
    check = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
