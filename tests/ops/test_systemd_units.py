"""The shipped units pass `systemd-analyze verify` and keep the promised settings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ops.conftest import CLI, REPO

UNITS = REPO / "systemd"
TEMPLATE = "portfolio-stream@.service"
# Keys where the instance template may differ from portfolio-stream.service: everything else
# (the sandbox, limits, stop behaviour) is the same.
TEMPLATE_DIFFERS = frozenset({"ExecStart", "EnvironmentFile"})
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze missing (.ci/run installs Debian's systemd)"
)


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section → key → values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (UNITS / name).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def _installable_copy(tmp_path: Path) -> Path:
    """The units as installed, with ExecStart pointing at this checkout's console script."""
    for name in ("portfolio-stream.service", "portfolio-stream.socket", TEMPLATE):
        text = (UNITS / name).read_text(encoding="utf-8")
        text = text.replace("/opt/portfolio-stream/venv/bin/portfolio-stream", CLI)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


@needs_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert ANALYZE is not None
    units = _installable_copy(tmp_path)
    result = subprocess.run(
        [
            ANALYZE,
            "verify",
            "--man=no",
            str(units / "portfolio-stream.socket"),
            str(units / "portfolio-stream.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=units,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


@needs_analyze
def test_instance_template_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert ANALYZE is not None
    units = _installable_copy(tmp_path)
    instance = units / "portfolio-stream@5001.service"
    instance.symlink_to(units / TEMPLATE)
    result = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=units,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_instance_template_takes_port_from_the_instance_and_keeps_the_sandbox() -> None:
    template, single = _unit(TEMPLATE), _unit("portfolio-stream.service")
    service = template["Service"]
    assert service["ExecStart"] == [
        "/usr/bin/env PORT=%i /opt/portfolio-stream/venv/bin/portfolio-stream serve"
    ]
    # The shared file first, then the instance's own (optional) one, which wins.
    assert service["EnvironmentFile"] == [
        "-/etc/portfolio-stream/portfolio-stream.env",
        "-/etc/portfolio-stream/portfolio-stream-%i.env",
    ]
    assert {k: v for k, v in service.items() if k not in TEMPLATE_DIFFERS} == {
        k: v for k, v in single["Service"].items() if k not in TEMPLATE_DIFFERS
    }
    assert "Requires" not in template["Unit"]  # no socket: one port per instance
    assert template["Install"] == {"WantedBy": ["multi-user.target"]}


@needs_analyze
def test_service_sandbox_exposure_is_low(tmp_path: Path) -> None:
    assert ANALYZE is not None
    units = _installable_copy(tmp_path)
    result = subprocess.run(
        [
            ANALYZE,
            "security",
            "--offline=yes",
            "--threshold=20",
            "--no-pager",
            str(units / "portfolio-stream.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=units,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    score = float(
        result.stdout.split("Overall exposure level for portfolio-stream.service:")[1].split()[0]
    )
    assert score <= 2.0, result.stdout


def test_service_unit_settings() -> None:
    unit = _unit("portfolio-stream.service")
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["Type"] == "notify"
    assert service["ExecStart"] == "/opt/portfolio-stream/venv/bin/portfolio-stream serve"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["EnvironmentFile"] == "-/etc/portfolio-stream/portfolio-stream.env"
    assert service["StateDirectory"] == "portfolio-stream"
    assert (
        "DATABASE_URL=sqlite:////var/lib/portfolio-stream/portfolio-stream.db"
        in unit["Service"]["Environment"]
    )
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["WatchdogSec"].endswith("s") and int(service["WatchdogSec"][:-1]) >= 10
    # Above the largest graceful shutdown at the default SHUTDOWN_TIMEOUT_S (10 s), with margin.
    assert int(service["TimeoutStopSec"].removesuffix("s")) >= 10 + 10
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
        "User": "portfolio-stream",
    }.items():
        assert service[key] == value, key
    assert "@system-service" in unit["Service"]["SystemCallFilter"]
    assert unit["Unit"]["Requires"] == ["portfolio-stream.socket"]


def test_socket_unit_settings() -> None:
    socket_unit = {k: v[-1] for k, v in _unit("portfolio-stream.socket")["Socket"].items()}
    assert socket_unit["ListenStream"] == "5000"
    assert int(socket_unit["Backlog"]) >= 1024
    assert socket_unit["NoDelay"] == "yes"
    assert socket_unit["Service"] == "portfolio-stream.service"


def test_env_example_names_only_real_settings() -> None:
    from config.settings import Settings

    fields = {name.upper() for name in Settings.model_fields}
    for raw in (UNITS / "portfolio-stream.env.example").read_text(encoding="utf-8").splitlines():
        line = raw.lstrip("#").strip()
        if "=" in line and line.split("=", 1)[0].isupper() and " " not in line.split("=")[0]:
            assert line.split("=", 1)[0] in fields, line


def test_admin_wrapper_and_logrotate_are_well_formed() -> None:
    sh = shutil.which("sh")
    assert sh is not None
    check = subprocess.run(
        [sh, "-n", str(UNITS / "portfolio-stream-cli")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    logrotate = (UNITS / "portfolio-stream.logrotate").read_text(encoding="utf-8")
    assert "/var/log/portfolio-stream/*.log" in logrotate and "HUP" in logrotate


def test_makefile_install_target_uses_the_shipped_files() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    target = makefile.split("\ninstall-systemd:", 1)[1].split("\n\n", 1)[0]
    for shipped in (
        "portfolio-stream.service",
        "portfolio-stream@.service",
        "portfolio-stream.socket",
        "portfolio-stream.env.example",
        "portfolio-stream.logrotate",
        "portfolio-stream-cli",
        "portfolio-stream.sysusers",
    ):
        assert shipped in target, shipped
    assert "test -e /etc/portfolio-stream/portfolio-stream.env ||" in target  # never overwritten
