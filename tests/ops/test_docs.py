"""The operator docs stay true to the code: every variable, error code and close code."""

from __future__ import annotations

import re

from app.protocol import CloseCode, CloseReason, ErrorCode
from config.settings import Settings
from tests.ops.conftest import REPO

DOCS = REPO / "docs"
SETTINGS = {name.upper() for name in Settings.model_fields}
# Upper-case names in the docs that are not Settings: systemd's, shell variables, placeholders.
NOT_SETTINGS = {
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "ADMIN_SESSION_ID",
    "BASE",
    "USERNAME",
    "YOURUSER",
    "MESSAGE",
    "STATUS",
    "READY",
    "STOPPING",
    "WATCHDOG",
    "MAINPID",
    "HTTP",
    "JSON",
    "REST",
    "HTTPS",
    "UTC",
    "ERROR",
    "INFO",
    "DEBUG",
    "WARNING",
    "SIGTERM",
    "SIGHUP",
    "SIGINT",
    "SIGKILL",
    "SIGABRT",
    "ISO",
    "RSS",
    "CPU",
    "NYSE",
    "TOML",
    "PATH",
    "USER",
}


def _text(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def test_configuration_documents_every_setting() -> None:
    rows = set(re.findall(r"^\| `([A-Z_]+)` \|", _text("configuration.md"), re.M))
    documented = rows - NOT_SETTINGS
    assert SETTINGS - documented == set(), "undocumented settings"
    assert documented - SETTINGS == set(), "documented settings that do not exist"


def test_docs_name_only_real_variables() -> None:
    for name in ("runbook.md", "configuration.md", "logging.md", "websocket-api.md"):
        for variable in set(re.findall(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b", _text(name))):
            assert variable in SETTINGS or variable in NOT_SETTINGS, f"{name}: {variable}"


def test_websocket_api_lists_every_error_and_close_code() -> None:
    text = _text("websocket-api.md")
    for code in ErrorCode:
        assert f"`{code.value}`" in text, code
    for name, value in vars(CloseCode).items():
        if name.isupper():
            assert f"| {value} |" in text, name
    for name, reason in vars(CloseReason).items():
        if name.isupper() and name != "HEARTBEAT":
            assert reason in text, name


def test_runbook_keeps_the_seed_sections() -> None:
    headings = set(re.findall(r"^#{2,3} (.+)$", _text("runbook.md"), re.M))
    for section in (
        "Overview",
        "Monitoring",
        "Health Check",
        "Health Status Meanings",
        "Key Metrics to Monitor",
        "Logs",
        "Server Logs",
        "Client Logs (Browser Console)",
        "Common Issues",
        "Issue 1: High Disconnect Rate",
        "Issue 2: Low Batch Efficiency (<50%)",
        "Issue 3: Connection Limit Reached",
        "Issue 4: No Events Being Emitted",
        "Issue 5: Memory Leak",
        "Operational Procedures",
        "Graceful Shutdown",
        "Emergency Disable",
        "Increase Connection Limits",
        "Performance Tuning",
        "Batch Window Adjustment",
        "Heartbeat Interval Adjustment",
        "Alerting",
        "Recommended Alerts",
        "Alert Configuration Examples",
        "Troubleshooting Playbook",
        "Deployment Procedures",
        "Initial Deployment",
        "Rolling Restart (Zero Downtime)",
        "Rollback",
        "Maintenance",
        "Daily Checks",
        "Weekly Reviews",
        "Feature Flag Management",
        "Capacity Planning",
        "Emergency Contacts",
        "Related Documentation",
        "Zero-Downtime Restart",
        "Metrics (Prometheus)",
    ):
        assert section in headings, section
    runbook = _text("runbook.md")
    assert "pm2" not in runbook and "portfolio-stream.ts" not in runbook
    assert "requires code change" not in runbook.lower()
