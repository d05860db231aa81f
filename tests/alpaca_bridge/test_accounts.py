"""Broker accounts from the environment shortcut and ACCOUNTS_FILE, with errors that say where."""

from __future__ import annotations

from pathlib import Path

import pytest

from alpaca_bridge.accounts import (
    AccountsConfigError,
    alpaca_data_stream_url,
    alpaca_endpoints,
    configured_accounts,
)
from config.settings import Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    return path


def test_single_account_shortcut() -> None:
    [account] = configured_accounts(
        settings(
            alpaca_api_key="PKKEY",
            alpaca_secret_key="SECRET",
            alpaca_username="alice",
            alpaca_paper=False,
        )
    )
    assert (account.username, account.paper) == ("alice", False)
    assert account.api_key.get_secret_value() == "PKKEY"
    assert "SECRET" not in repr(account)


def test_the_shortcut_needs_a_username() -> None:
    with pytest.raises(AccountsConfigError, match=r"^ALPACA_USERNAME: required"):
        configured_accounts(settings(alpaca_api_key="k", alpaca_secret_key="s"))


def test_accounts_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[accounts]]
username = "alice"
api_key = "K1"
secret_key = "S1"

[[accounts]]
username = "bob"
api_key = "K2"
secret_key = "S2"
paper = false
""",
    )
    alice, bob = configured_accounts(settings(accounts_file=path))
    assert (alice.username, alice.paper, bob.username, bob.paper) == ("alice", True, "bob", False)
    assert bob.secret_key.get_secret_value() == "S2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[accounts]]\nusername = 'a'\napi_key = 'K'\n",
            "[[accounts]] entry 1 (username=a): 'secret_key' is required",
        ),
        ("[[accounts]]\napi_key = 'K'\nsecret_key = 'S'\n", "entry 1: 'username' is required"),
        (
            "[[accounts]]\nusername = 'a'\napi_key = 'K'\nsecret_key = 'S'\npaper = 'yes'\n",
            "'paper' must be true or false",
        ),
        ("[[accounts]]\nusername = 'a'\napi_key = 'K'\nsecret = 'S'\n", "unknown key 'secret'"),
        ("accounts = 3\n", "expected one or more [[accounts]] tables"),
        ("[[accounts]\n", "not valid TOML"),
    ],
)
def test_file_errors_name_the_file_and_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(AccountsConfigError) as caught:
        configured_accounts(settings(accounts_file=path))
    assert str(caught.value).startswith(f"ACCOUNTS_FILE {path}: ")
    assert message in str(caught.value)
    assert "'S'" not in str(caught.value)


def test_a_missing_file_and_a_duplicate_username(tmp_path: Path) -> None:
    with pytest.raises(AccountsConfigError, match="no such file"):
        configured_accounts(settings(accounts_file=tmp_path / "missing.toml"))
    path = write(tmp_path, "[[accounts]]\nusername='Alice'\napi_key='K'\nsecret_key='S'\n")
    with pytest.raises(AccountsConfigError, match="'Alice' is configured twice"):
        configured_accounts(
            settings(
                alpaca_api_key="k",
                alpaca_secret_key="s",
                alpaca_username="alice",
                accounts_file=path,
            )
        )


def test_endpoints_default_to_alpaca_and_can_be_overridden() -> None:
    paper = alpaca_endpoints(settings(), paper=True)
    assert paper.api_url == "https://paper-api.alpaca.markets"
    assert paper.stream_url == "wss://paper-api.alpaca.markets/stream"
    assert alpaca_endpoints(settings(), paper=False).stream_url == "wss://api.alpaca.markets/stream"
    local = alpaca_endpoints(
        settings(alpaca_api_url="http://127.0.0.1:1", alpaca_stream_url="ws://127.0.0.1:1/stream"),
        paper=False,
    )
    assert (local.api_url, local.stream_url) == ("http://127.0.0.1:1", "ws://127.0.0.1:1/stream")
    assert alpaca_data_stream_url(settings()) == "wss://stream.data.alpaca.markets/v2/iex"
    assert (
        alpaca_data_stream_url(settings(alpaca_data_stream_url="ws://x/v2/sip")) == "ws://x/v2/sip"
    )
