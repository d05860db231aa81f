"""`make run`'s first impression: the simulated broker's demo users exist and their logins are
printed after the listener line, except one whose user already had its own password."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ops.conftest import Service, cli, http_status, service_env

pytestmark = pytest.mark.slow


def test_the_start_up_log_prints_the_demo_logins_that_work(
    tmp_path: Path, services: list[Service]
) -> None:
    env = service_env(tmp_path, SIM_DEMO_USERS="true", SIM_TICK_INTERVAL_MS="60000")
    cli(env, "users", "add", "alice", "--password-stdin", stdin="her own password\n")
    service = Service(env, tmp_path / "server.log")
    services.append(service)
    service.wait_ready()
    assert http_status(f"{service.base_url}/healthz") == 200
    assert service.stop() == 0

    log = service.log()
    port = env["PORT"]
    listening = log.index(f"INFO [STARTUP] Listening on http://127.0.0.1:{port}")
    admin, bob = (
        log.index(
            f"INFO [STARTUP] Demo login: {name} / {name}-demo at http://localhost:{port}/login"
        )
        for name in ("admin", "bob")
    )
    assert listening < admin < bob
    assert "Demo login: alice" not in log
    users = cli(env, "users", "list").splitlines()
    assert sorted(line.split("\t")[1:] for line in users) == [
        ["admin", "admin"],
        ["alice", "user"],
        ["bob", "user"],
    ]
