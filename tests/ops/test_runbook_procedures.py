"""docs/runbook.md, executed: its curl/jq and grep commands against a real service, and its
health-check, emergency-disable and rollback procedures step by step.

The test plays the host: an env file standing in for /etc/portfolio-stream/portfolio-stream.env
(read like systemd's EnvironmentFile), a listening socket standing in for portfolio-stream.socket,
`systemctl restart` as SIGTERM + start on the same socket, and the runbook's own commands with
`sudo` dropped and the paths pointed at the test's files.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.ops.conftest import BIN_DIR, REPO, Service, cli, service_env, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("jq") is None or shutil.which("curl") is None,
        reason="the runbook's commands need curl and jq",
    ),
]

RUNBOOK = REPO / "docs" / "runbook.md"
ENV_PATH = "/etc/portfolio-stream/portfolio-stream.env"
# Commands that need a real systemd host, a terminal or other machines.
HOST_ONLY = (
    "systemctl",
    "journalctl",
    "top ",
    "ping ",
    "ps ",
    "tail -f",
    "sudoedit",
    "make ",
    "git ",
    "usermod",
    "portfolio-stream users add",
    "cd ",
)


@dataclass
class Step:
    command: str
    expect: str | None = None  # from a following "# Should return: X" comment


@dataclass
class Section:
    title: str
    steps: list[Step] = field(default_factory=list)


def runbook_sections() -> dict[str, Section]:
    """Every ``###`` section's bash commands, in order, continuation lines joined."""
    sections: dict[str, Section] = {}
    current = Section("")
    in_bash = False
    pending = ""
    for raw in RUNBOOK.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") and not in_bash:
            current = sections.setdefault(line.lstrip("#").strip(), Section(line))
            continue
        if line.startswith("```"):
            in_bash = not in_bash and line == "```bash"
            continue
        if not in_bash or not line:
            continue
        if line.startswith("#"):
            match = re.match(r"# Should (?:return|be): (.+)", line)
            if match and current.steps:
                current.steps[-1].expect = match.group(1).strip()
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        command = (pending + line).split("  #")[0].strip()
        pending = ""
        current.steps.append(Step(command))
    return sections


def host_command(command: str, env_file: Path) -> str:
    """A runbook command as this test host runs it: no sudo, the test's env file, and the
    demo user alice where the runbook leaves the user to fill in."""
    command = command.replace("sudo ", "").replace(ENV_PATH, str(env_file))
    return re.sub(r"\b(USERNAME|YOURUSER)\b", "alice", command)


def run(command: str, env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout.strip()
    # grep's exit status 1 means "no line matched", a valid answer (e.g. zero ERROR lines).
    no_match = command.startswith("grep ") and result.returncode == 1 and output in ("", "0")
    assert result.returncode == 0 or no_match, f"{command}\n{output}\n{result.stderr}"
    return output


# Greps that must find lines after start-up, a client session and a test trade.
MUST_MATCH = (
    "Batch flushed",
    "eventBus.emit",
    "Event bus listeners registered",
    "AlpacaStream",
    "Portfolio stream initialized",
    "Client connected",
    "Client disconnected",
    "Broadcast",
)


def read_env_file(path: Path) -> dict[str, str]:
    """systemd EnvironmentFile semantics for simple lines: KEY=value, comments, later wins."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


class Host:
    """The service host of the runbook: env file, socket unit, service, admin shell."""

    def __init__(self, tmp_path: Path, services: list[Service]) -> None:
        self.tmp_path = tmp_path
        self.services = services
        self.logs = tmp_path / "log"
        self.logs.mkdir()
        self.env_file = tmp_path / "portfolio-stream.env"
        base = service_env(tmp_path)
        overrides = {
            "DATABASE_URL": base["DATABASE_URL"],
            "LOG_FILE": str(self.logs / "server.log"),
            "BROKER": "simulated",
            "SIM_DEMO_USERS": "true",
            "SIM_ORDER_INTERVAL_S": "0",
            "BATCH_WINDOW_MS": "100",
            "SHUTDOWN_TIMEOUT_S": "5",
        }
        # The shipped example, with this host's paths appended (later lines win).
        example = (REPO / "systemd" / "portfolio-stream.env.example").read_text()
        self.env_file.write_text(
            example + "\n" + "".join(f"{key}={value}\n" for key, value in overrides.items())
        )
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(4096)
        self.port = self.socket.getsockname()[1]
        self.base_env = {k: v for k, v in base.items() if k not in read_env_file(self.env_file)}
        self.service: Service | None = None
        self.generation = 0

    def service_env(self) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(read_env_file(self.env_file))
        env["PORT"] = str(self.port)  # the runbook keeps PORT equal to ListenStream=
        return env

    def start(self) -> None:
        self.generation += 1
        self.service = Service(
            self.service_env(),
            self.tmp_path / f"stdout-{self.generation}.log",
            listen_sock=self.socket,
        )
        self.services.append(self.service)
        self.service.wait_ready()

    def restart(self) -> None:
        """systemctl restart portfolio-stream: the socket stays, the process is replaced."""
        assert self.service is not None
        assert self.service.stop() == 0
        self.start()

    def shell_env(self, admin_session: str) -> dict[str, str]:
        env = self.service_env()
        env.update(
            BASE=f"http://127.0.0.1:{self.port}",
            ADMIN_SESSION_ID=admin_session,
            PATH=f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}",
        )  # `portfolio-stream`
        return env

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def host(tmp_path: Path, services: list[Service]) -> Iterator[Host]:
    created = Host(tmp_path, services)
    yield created
    created.close()


def test_runbook_commands_and_procedures_against_a_real_service(host: Host) -> None:
    sections = runbook_sections()
    env = host.service_env()
    cli(env, "users", "add", "admin", "--admin", "--password-stdin", stdin="admin-password\n")
    host.start()
    # Conventions: BASE and ADMIN_SESSION_ID as the runbook sets them.
    conventions = sections["Conventions used below"].steps
    assert any("sessions create admin" in step.command for step in conventions)
    admin_session = cli(env, "sessions", "create", "admin")
    shell = host.shell_env(admin_session)
    cwd = host.logs  # the runbook's `cd /var/log/portfolio-stream`

    # Generate traffic the runbook's greps look for: a subscribed client and a test trade.
    asyncio.run(_client_sees_test_trade(host, shell))

    # --- every curl and grep command of the runbook, as written ---
    ran = 0
    for title, section in sections.items():
        for step in section.steps:
            command = host_command(step.command, host.env_file)
            if any(marker in command for marker in HOST_ONLY) or not (
                command.startswith(("curl ", "grep ", "portfolio-stream trade"))
            ):
                continue
            if "sed -i" in command or "tee -a" in command:
                continue  # flag changes are walked through below
            output = run(command, shell, cwd)
            ran += 1
            if command.startswith("grep ") and any(p in command for p in MUST_MATCH):
                assert output not in ("", "0"), f"runbook grep found nothing: {command}"
            if step.expect and title not in ("Emergency Disable", "Rollback"):
                _check_expectation(step.expect, output, command)
    assert ran >= 25

    # --- Health Check ---
    stats = json.loads(run(sections["Health Check"].steps[0].command, shell, cwd))
    for key in (
        "status",
        "enabled",
        "activeConnections",
        "connectionsByUser",
        "totalMessagesDelivered",
        "totalEventsEmitted",
        "totalDisconnects",
        "totalReconnects",
        "performance",
        "uptime",
        "limits",
        "timestamp",
    ):
        assert key in stats, key
    assert stats["enabled"] is True and stats["status"] in ("healthy", "offline")
    assert stats["totalEventsEmitted"] > 0 and stats["totalMessagesDelivered"] > 0

    # --- Emergency Disable, step by step ---
    _walk_flag_procedure(host, sections["Emergency Disable"], shell, cwd)
    shell = host.shell_env(admin_session)
    stats = json.loads(run(sections["Health Check"].steps[0].command, shell, cwd))
    assert stats["status"] == "disabled" and stats["enabled"] is False
    asyncio.run(_clients_are_told_to_poll(host))

    # --- Rollback (the same flag, verified through .enabled) ---
    _walk_flag_procedure(host, sections["Rollback"], shell, cwd)

    # --- Feature Flag Management: enable again without a code change ---
    enable = "ENABLE_REALTIME_PORTFOLIO=true"
    flag_steps = sections["Enable/Disable Without Code Change"].steps
    assert [step.command for step in flag_steps] == [enable, "ENABLE_REALTIME_PORTFOLIO=false"]
    run(
        f"sed -i '/^ENABLE_REALTIME_PORTFOLIO=/d' {host.env_file} && "
        f"echo '{enable}' >> {host.env_file}",
        shell,
        cwd,
    )
    host.restart()
    stats = json.loads(run(sections["Health Check"].steps[0].command, shell, cwd))
    assert stats["enabled"] is True and stats["status"] in ("healthy", "offline")


def _check_expectation(expect: str, output: str, command: str) -> None:
    if expect == '"healthy"':
        # No client is connected at this point of the test: the runbook's "offline" meaning.
        assert output in ('"healthy"', '"offline"'), (command, output)
    elif (expect.startswith('"') and expect.endswith('"')) or expect in ("true", "false"):
        assert output == expect, (command, output)


def _walk_flag_procedure(host: Host, section: Section, shell: dict[str, str], cwd: Path) -> None:
    """Run a section's steps in order: env-file edits, the restart, the verifications."""
    restarted = verified = False
    for step in section.steps:
        command = host_command(step.command, host.env_file)
        if command.startswith("systemctl restart portfolio-stream"):
            host.restart()
            restarted = True
            continue
        if any(marker in command for marker in HOST_ONLY):
            continue
        output = run(command, host.shell_env(shell["ADMIN_SESSION_ID"]), cwd)
        if step.expect:
            assert restarted, "verification before the restart"
            _check_expectation(step.expect, output, command)
            verified = True
    assert restarted and verified, section.title
    assert read_env_file(host.env_file)["ENABLE_REALTIME_PORTFOLIO"] == "false"


async def _client_sees_test_trade(host: Host, shell: dict[str, str]) -> None:
    env = host.service_env()
    token = cli(env, "sessions", "create", "alice")
    base = shell["BASE"]
    async with (
        aiohttp.ClientSession(cookies={"session": token}) as http,
        http.ws_connect(f"{base}/ws/portfolio") as ws,
    ):
        assert (await ws.receive_json(timeout=10))["type"] == "connected"
        await ws.send_json({"type": "subscribe", "channels": ["positions", "orders", "account"]})
        assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
        assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
        # The runbook's test trade (Issue 4, step 3).
        trade = next(
            step.command
            for step in runbook_sections()["Issue 4: No Events Being Emitted"].steps
            if "trade USERNAME AAPL buy 1" in step.command
        )
        await asyncio.to_thread(run, host_command(trade, host.env_file), shell, host.logs)
        while True:
            message = await ws.receive_json(timeout=15)
            if message["type"] == "batch" and any(
                p["symbol"] == "AAPL" for p in message.get("positions", [])
            ):
                break
    log = host.logs / "server.log"
    wait_until(lambda: "Client disconnected" in log.read_text(), 10, "the disconnect line")


async def _clients_are_told_to_poll(host: Host) -> None:
    """Flag off: /api/realtime/config says poll, upgrades get 503, /api/portfolio still works."""
    env = host.service_env()
    token = cli(env, "sessions", "create", "alice")
    base = f"http://127.0.0.1:{host.port}"
    async with aiohttp.ClientSession(cookies={"session": token}) as http:
        config = await (await http.get(f"{base}/api/realtime/config")).json()
        assert config["enabled"] is False and config["pollIntervalMs"] == 5000
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{base}/ws/portfolio")
        assert refused.value.status == 503
        upgrade = await http.get(
            f"{base}/ws/portfolio",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
        assert upgrade.status == 503 and await upgrade.json() == {"status": "disabled"}
        portfolio = await http.get(f"{base}/api/portfolio")
        assert portfolio.status == 200
        body = await portfolio.json()
        # (The simulated broker starts with fresh accounts on every start: no AAPL here.)
        assert {"positions", "orders", "account", "serverTime"} <= set(body)
