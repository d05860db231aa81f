"""Settings (SPEC §2): defaults, parsing, validation, secrets and the `.env` file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from config.settings import (
    ALPACA_DATA_STREAM_BASE,
    ALPACA_LIVE_API_URL,
    ALPACA_PAPER_API_URL,
    ALPACA_PAPER_STREAM_URL,
    Settings,
)
from tests.config.refusal import failure

CLI = str(Path(sys.executable).with_name("portfolio-stream"))

# SPEC §2's table, variable by variable, with the defaults it promises.
SPEC_DEFAULTS: dict[str, Any] = {
    "ENABLE_REALTIME_PORTFOLIO": True,
    "HOST": "0.0.0.0",
    "PORT": 5000,
    "BATCH_WINDOW_MS": 1000,
    "HEARTBEAT_INTERVAL_MS": 15000,
    "HEARTBEAT_TIMEOUT_MS": 30000,
    "MAX_CONNECTIONS_PER_USER": 5,
    "MAX_TOTAL_CONNECTIONS": 100,
    "BROKER": "auto",
    "ALPACA_API_KEY": None,
    "ALPACA_SECRET_KEY": None,
    "ALPACA_PAPER": True,
    "ALPACA_USERNAME": None,
    "ACCOUNTS_FILE": None,
    # None means "Alpaca's": the bridge resolves paper/live endpoints from ALPACA_PAPER.
    "ALPACA_API_URL": None,
    "ALPACA_STREAM_URL": None,
    "ALPACA_DATA_STREAM_URL": None,
    "ALPACA_DATA_FEED": "iex",
    "DATABASE_URL": "sqlite:///./data/portfolio-stream.db",
    "REDIS_URL": None,
    "ALLOWED_ORIGINS": [],
    "LOG_FORMAT": "text",
    "LOG_LEVEL": "INFO",
    "LOG_FILE": None,
    "SHUTDOWN_TIMEOUT_S": 10,
    "WS_COMPRESSION": False,
    "METRICS_TOKEN": None,
}


def service_env(**overrides: str) -> dict[str, str]:
    """The runner's environment without any service variable, plus ``overrides``."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.update(overrides)
    return env


@pytest.mark.parametrize(("variable", "default"), list(SPEC_DEFAULTS.items()))
def test_every_spec_variable_has_its_documented_default(
    clean_env: pytest.MonkeyPatch, variable: str, default: Any
) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert getattr(settings, variable.lower()) == default


def test_alpaca_endpoint_constants_are_alpacas_own() -> None:
    """The "Alpaca's" defaults the bridge falls back to point at Alpaca's hosts."""
    assert ALPACA_PAPER_API_URL == "https://paper-api.alpaca.markets"
    assert ALPACA_LIVE_API_URL == "https://api.alpaca.markets"
    assert ALPACA_PAPER_STREAM_URL == "wss://paper-api.alpaca.markets/stream"
    assert ALPACA_DATA_STREAM_BASE == "wss://stream.data.alpaca.markets/v2"


def test_environment_variables_set_every_field(clean_env: pytest.MonkeyPatch) -> None:
    values = {
        "ENABLE_REALTIME_PORTFOLIO": "false",
        "HOST": "127.0.0.1",
        "PORT": "8080",
        "BATCH_WINDOW_MS": "0",
        "HEARTBEAT_INTERVAL_MS": "100",
        "HEARTBEAT_TIMEOUT_MS": "300",
        "MAX_CONNECTIONS_PER_USER": "10",
        "MAX_TOTAL_CONNECTIONS": "200",
        "BROKER": "simulated",
        "ALPACA_PAPER": "false",
        "ALPACA_USERNAME": "alice",
        "ALPACA_DATA_FEED": "sip",
        "ALPACA_API_URL": "http://127.0.0.1:1/",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "debug",
        "LOG_FILE": "/var/log/ps/x.log",
        "SHUTDOWN_TIMEOUT_S": "3",
        "WS_COMPRESSION": "true",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
    }
    for name, value in values.items():
        clean_env.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.enable_realtime_portfolio is False
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.batch_window_ms == 0 and settings.batch_window_s == 0
    assert (settings.heartbeat_interval_s, settings.heartbeat_timeout_s) == (0.1, 0.3)
    assert (settings.max_connections_per_user, settings.max_total_connections) == (10, 200)
    assert settings.broker_mode == "simulated"
    assert settings.alpaca_paper is False and settings.alpaca_username == "alice"
    assert settings.alpaca_data_feed == "sip"
    assert settings.alpaca_api_url == "http://127.0.0.1:1/"
    assert settings.log_format == "json" and settings.log_level == "DEBUG"
    assert settings.log_file == Path("/var/log/ps/x.log")
    assert settings.shutdown_timeout_s == 3 and settings.ws_compression is True
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


def test_allowed_origins_is_a_comma_list(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ALLOWED_ORIGINS", "https://a.example.com, https://b.example.com/,,")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.allowed_origins == ["https://a.example.com", "https://b.example.com"]


def test_broker_auto_picks_alpaca_only_with_credentials(clean_env: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).broker_mode == "simulated"  # type: ignore[call-arg]
    clean_env.setenv("ALPACA_API_KEY", "PKTEST")
    clean_env.setenv("ALPACA_SECRET_KEY", "shh")
    assert Settings(_env_file=None).broker_mode == "alpaca"  # type: ignore[call-arg]


def test_secrets_never_appear_in_repr_str_or_dumps(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ALPACA_API_KEY", "PK-VISIBLE-KEY-123")
    clean_env.setenv("ALPACA_SECRET_KEY", "super-secret-value-456")
    clean_env.setenv("METRICS_TOKEN", "metrics-token-789")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert isinstance(settings.alpaca_secret_key, SecretStr)
    assert isinstance(settings.metrics_token, SecretStr)
    rendered = " ".join(
        [repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())]
    )
    for secret in ("PK-VISIBLE-KEY-123", "super-secret-value-456", "metrics-token-789"):
        assert secret not in rendered
    assert settings.alpaca_secret_key.get_secret_value() == "super-secret-value-456"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCH_WINDOW_MS", "abc"),
        ("BATCH_WINDOW_MS", "-1"),
        ("PORT", "70000"),
        ("ENABLE_REALTIME_PORTFOLIO", "maybe"),
        ("BROKER", "ibkr"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "loud"),
        ("MAX_TOTAL_CONNECTIONS", "0"),
        ("DATABASE_URL", "mysql://db/x"),
    ],
)
def test_a_bad_value_is_described_in_one_line_naming_the_variable(
    clean_env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    line = failure(clean_env, **{variable: value})
    assert "\n" not in line
    assert line.startswith("invalid configuration: ")
    assert variable in line


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HEARTBEAT_INTERVAL_MS": "5000", "HEARTBEAT_TIMEOUT_MS": "5000"}, "HEARTBEAT_TIMEOUT_MS"),
        (
            {"MAX_CONNECTIONS_PER_USER": "20", "MAX_TOTAL_CONNECTIONS": "10"},
            "MAX_CONNECTIONS_PER_USER",
        ),
        ({"ALPACA_API_KEY": "PK"}, "ALPACA_SECRET_KEY"),
        ({"BROKER": "alpaca"}, "BROKER=alpaca"),
    ],
)
def test_incoherent_combinations_name_the_variables(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    line = failure(clean_env, **env)
    assert "\n" not in line and named in line


def test_a_rejected_url_does_not_echo_its_password(clean_env: pytest.MonkeyPatch) -> None:
    line = failure(clean_env, DATABASE_URL="mysql://app:hunter2-secret@db.internal/portfolio")
    assert "DATABASE_URL" in line
    assert "hunter2-secret" not in line


@pytest.mark.parametrize(
    ("url", "postgres"),
    [
        ("sqlite:///./data/portfolio-stream.db", False),
        ("postgresql://app:pw@db.internal:5432/portfolio", True),
        ("postgres://db.internal/portfolio", True),
    ],
)
def test_database_url_selects_sqlite_or_postgresql(
    clean_env: pytest.MonkeyPatch, url: str, postgres: bool
) -> None:
    clean_env.setenv("DATABASE_URL", url)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_is_postgres is postgres


def test_dotenv_file_is_read_and_the_environment_wins(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "BATCH_WINDOW_MS=250\nENABLE_REALTIME_PORTFOLIO=false\n"
        "ALLOWED_ORIGINS=https://app.example.com,https://admin.example.com\n"
        "ALPACA_SECRET_KEY=from-dotenv\nALPACA_API_KEY=PKDOTENV\n"
    )
    clean_env.setenv("ENABLE_REALTIME_PORTFOLIO", "true")
    settings = Settings()
    assert settings.batch_window_ms == 250
    assert settings.enable_realtime_portfolio is True
    assert settings.allowed_origins == ["https://app.example.com", "https://admin.example.com"]
    assert settings.alpaca_secret_key is not None
    assert settings.alpaca_secret_key.get_secret_value() == "from-dotenv"


def test_serve_with_a_bad_variable_exits_2_with_one_stderr_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [CLI, "serve"],
        cwd=tmp_path,
        env=service_env(BATCH_WINDOW_MS="abc"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "BATCH_WINDOW_MS" in lines[0] and "abc" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_reads_the_dotenv_file_of_its_working_directory(tmp_path: Path) -> None:
    """A bad value that only exists in `.env` stops `serve`: the file was read."""
    (tmp_path / ".env").write_text("HEARTBEAT_TIMEOUT_MS=not-a-number\n")
    result = subprocess.run(
        [CLI, "serve"],
        cwd=tmp_path,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HEARTBEAT_TIMEOUT_MS" in lines[0], result.stderr


def test_serve_never_prints_a_secret_in_its_error_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [CLI, "serve"],
        cwd=tmp_path,
        env=service_env(ALPACA_API_KEY="PK-SHOULD-NOT-SHOW", PORT="not-a-port"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "PORT" in result.stderr
    assert "PK-SHOULD-NOT-SHOW" not in result.stderr + result.stdout
