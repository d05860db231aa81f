"""LOG_FILE survives logrotate: after a real rename and a real SIGHUP, lines go to a new file."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.ops.conftest import Service, service_env, wait_until

pytestmark = pytest.mark.slow


def _failed_login(base_url: str, username: str) -> None:
    """Something that logs one line we can look for (`[Auth] Login failed`)."""
    request = urllib.request.Request(  # noqa: S310 - loopback http
        f"{base_url}/api/auth/login",
        method="POST",
        data=json.dumps({"username": username, "password": "wrong"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(request, timeout=5).close()  # noqa: S310
    assert failure.value.code == 401
    failure.value.close()


def test_rename_then_sighup_reopens_log_file(tmp_path: Path, services: list[Service]) -> None:
    log_file = tmp_path / "logs" / "server.log"
    env = service_env(tmp_path, LOG_FILE=log_file)
    service = Service(env, tmp_path / "stdout.log")
    services.append(service)
    service.wait_ready()
    assert "[STARTUP] Portfolio stream initialized on /ws/portfolio" in log_file.read_text()

    rotated = log_file.with_name("server.log.1")
    os.rename(log_file, rotated)  # logrotate's default: rename, then signal
    service.signal(signal.SIGHUP)
    wait_until(
        lambda: log_file.exists() and "SIGHUP received" in log_file.read_text(),
        timeout=10,
        what="a new server.log after SIGHUP",
    )

    _failed_login(service.base_url, "after-rotation")
    wait_until(
        lambda: "username=after-rotation" in log_file.read_text(),
        timeout=10,
        what="new lines in the new server.log",
    )
    assert "username=after-rotation" not in rotated.read_text()
    assert "[STARTUP] Portfolio stream initialized" in rotated.read_text()
    assert "[STARTUP]" not in log_file.read_text()

    assert service.stop() == 0
    assert "Shutdown complete: all connections closed" in log_file.read_text()
    # stdout (the journal) got everything, across the rotation.
    stdout = service.log()
    assert "username=after-rotation" in stdout and "[STARTUP] Portfolio stream" in stdout


def test_json_log_lines_carry_message_and_fields(tmp_path: Path, services: list[Service]) -> None:
    log_file = tmp_path / "server.log"
    env = service_env(tmp_path, LOG_FILE=log_file, LOG_FORMAT="json")
    service = Service(env, tmp_path / "stdout.log")
    services.append(service)
    service.wait_ready()
    _failed_login(service.base_url, "json-user")
    wait_until(lambda: "json-user" in log_file.read_text(), timeout=10, what="the login line")
    assert service.stop() == 0

    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert all({"timestamp", "level", "message"} <= set(r) for r in records)
    failed = next(r for r in records if r["message"].startswith("[Auth] Login failed"))
    assert failed["level"] == "WARNING"
    assert failed["username"] == "json-user"
    assert failed["message"].startswith("[Auth] Login failed: username=json-user")
    assert failed["timestamp"].endswith("Z") and len(failed["timestamp"]) == 24
    listeners = next(r for r in records if "Event bus listeners registered" in r["message"])
    assert listeners["level"] == "INFO"
