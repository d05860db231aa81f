"""Which broker accounts the bridge consumes, and where their endpoints are.

An account belongs to one of our users by ``username``. Accounts come from the single-account
shortcut (ALPACA_API_KEY/ALPACA_SECRET_KEY/ALPACA_PAPER/ALPACA_USERNAME) and/or ACCOUNTS_FILE, a
TOML file of ``[[accounts]]`` tables::

    [[accounts]]
    username = "alice"
    api_key = "PK..."
    secret_key = "..."
    paper = true          # optional, defaults to ALPACA_PAPER

Keys stay ``SecretStr`` from here on; errors name the file and entry, never a secret.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from app.broker import BrokerConfigError
from config.settings import (
    ALPACA_DATA_STREAM_BASE,
    ALPACA_LIVE_API_URL,
    ALPACA_LIVE_STREAM_URL,
    ALPACA_PAPER_API_URL,
    ALPACA_PAPER_STREAM_URL,
    Settings,
)

_ENTRY_KEYS = frozenset({"username", "api_key", "secret_key", "paper"})
# Demo users of the simulated broker: (username, password, is_admin).
DEMO_USERS: tuple[tuple[str, str, bool], ...] = (
    ("admin", "admin-demo", True),
    ("alice", "alice-demo", False),
    ("bob", "bob-demo", False),
)


class AccountsConfigError(BrokerConfigError):
    """Broker account configuration that cannot work; the message names the variable or file."""


@dataclass(frozen=True, slots=True)
class BrokerAccount:
    username: str
    api_key: SecretStr
    secret_key: SecretStr
    paper: bool = True


@dataclass(frozen=True, slots=True)
class Endpoints:
    api_url: str  # TradingClient url_override (REST base, without /v2)
    stream_url: str  # the trade_updates websocket


def configured_accounts(settings: Settings) -> list[BrokerAccount]:
    """The accounts of the environment and ACCOUNTS_FILE; usernames are unique."""
    accounts: list[BrokerAccount] = []
    if settings.alpaca_api_key is not None and settings.alpaca_secret_key is not None:
        if not settings.alpaca_username:
            raise AccountsConfigError(
                "ALPACA_USERNAME: required with ALPACA_API_KEY (the user who owns the account)"
            )
        accounts.append(
            BrokerAccount(
                settings.alpaca_username.strip(),
                settings.alpaca_api_key,
                settings.alpaca_secret_key,
                settings.alpaca_paper,
            )
        )
    if settings.accounts_file is not None:
        accounts.extend(load_accounts_file(settings.accounts_file, settings.alpaca_paper))
    seen: set[str] = set()
    for account in accounts:
        name = account.username.lower()
        if name in seen:
            raise AccountsConfigError(
                f"broker accounts: username {account.username!r} is configured twice"
            )
        seen.add(name)
    return accounts


def load_accounts_file(path: Path, default_paper: bool = True) -> list[BrokerAccount]:
    where = f"ACCOUNTS_FILE {path}"
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AccountsConfigError(f"{where}: no such file") from None
    except OSError as exc:
        raise AccountsConfigError(f"{where}: cannot read it ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AccountsConfigError(f"{where}: not valid TOML ({exc})") from None
    entries = document.get("accounts")
    if not isinstance(entries, list) or not entries:
        raise AccountsConfigError(f"{where}: expected one or more [[accounts]] tables")
    return [
        _account_entry(entry, f"{where}: [[accounts]] entry {number}", default_paper)
        for number, entry in enumerate(entries, start=1)
    ]


def _account_entry(entry: Any, where: str, default_paper: bool) -> BrokerAccount:
    if not isinstance(entry, dict):
        raise AccountsConfigError(f"{where}: must be a table")
    username = entry.get("username")
    if not isinstance(username, str) or not username.strip():
        raise AccountsConfigError(f"{where}: 'username' is required")
    where = f"{where} (username={username.strip()})"
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise AccountsConfigError(f"{where}: unknown key {unknown[0]!r}")
    for key in ("api_key", "secret_key"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise AccountsConfigError(f"{where}: '{key}' is required")
    paper = entry.get("paper", default_paper)
    if not isinstance(paper, bool):
        raise AccountsConfigError(f"{where}: 'paper' must be true or false")
    return BrokerAccount(
        username.strip(),
        SecretStr(entry["api_key"].strip()),
        SecretStr(entry["secret_key"].strip()),
        paper,
    )


def alpaca_endpoints(settings: Settings, paper: bool) -> Endpoints:
    """Alpaca's paper or live endpoints unless ALPACA_API_URL/ALPACA_STREAM_URL override them."""
    return Endpoints(
        api_url=settings.alpaca_api_url or (ALPACA_PAPER_API_URL if paper else ALPACA_LIVE_API_URL),
        stream_url=settings.alpaca_stream_url
        or (ALPACA_PAPER_STREAM_URL if paper else ALPACA_LIVE_STREAM_URL),
    )


def alpaca_data_stream_url(settings: Settings) -> str:
    """ALPACA_DATA_STREAM_URL is the full websocket URL; by default Alpaca's for the feed."""
    default = f"{ALPACA_DATA_STREAM_BASE}/{settings.alpaca_data_feed}"
    return settings.alpaca_data_stream_url or default
