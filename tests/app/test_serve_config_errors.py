"""`portfolio-stream serve` refuses bad broker configuration with one line and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("portfolio-stream")


def serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "BROKER"))}
    environ.update(PORT="0", DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite", **env)
    return subprocess.run(
        [str(SCRIPT), "serve"],
        env=environ,
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_a_missing_accounts_file_is_one_line_naming_it(tmp_path: Path) -> None:
    result = serve(tmp_path, ACCOUNTS_FILE=str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"invalid configuration: ACCOUNTS_FILE {tmp_path / 'missing.toml'}: no such file"
    ]


def test_an_accounts_entry_without_username_names_the_entry(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text('[[accounts]]\napi_key = "PK1"\nsecret_key = "S1"\n')
    result = serve(tmp_path, ACCOUNTS_FILE=str(accounts))
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert "username" in line
    assert "S1" not in result.stderr + result.stdout  # secrets never echoed


def test_more_connections_than_open_files_is_refused_at_start(tmp_path: Path) -> None:
    """At the descriptor ceiling even /healthz and the 1013 close fail, so refuse up front."""
    import resource

    def low_file_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))

    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "BROKER"))}
    environ.update(
        PORT="0", DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite", MAX_TOTAL_CONNECTIONS="1000"
    )
    result = subprocess.run(
        [str(SCRIPT), "serve"],
        env=environ,
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=30,
        check=False,
        preexec_fn=low_file_limit,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("invalid configuration: MAX_TOTAL_CONNECTIONS=1000")
    assert "limit is 512" in line
