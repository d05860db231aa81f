"""Service configuration: every knob is an environment variable (or a line in `.env`).

`Settings()` is only ever built by the CLI; the app factory and tests pass an explicit
instance, so nothing reads the environment at import time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ALPACA_PAPER_API_URL = "https://paper-api.alpaca.markets"
ALPACA_LIVE_API_URL = "https://api.alpaca.markets"
ALPACA_PAPER_STREAM_URL = "wss://paper-api.alpaca.markets/stream"
ALPACA_LIVE_STREAM_URL = "wss://api.alpaca.markets/stream"
ALPACA_DATA_STREAM_BASE = "wss://stream.data.alpaca.markets/v2"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class Settings(BaseSettings):
    """Validated service settings; field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # Feature flag and listener
    enable_realtime_portfolio: bool = True
    host: str = "0.0.0.0"
    port: int = Field(5000, ge=0, le=65535)

    # Streaming behaviour
    batch_window_ms: int = Field(1000, ge=0, le=60_000)
    heartbeat_interval_ms: int = Field(15_000, ge=50, le=600_000)
    heartbeat_timeout_ms: int = Field(30_000, ge=100, le=3_600_000)
    max_connections_per_user: int = Field(5, ge=1)
    max_total_connections: int = Field(100, ge=1)
    ws_compression: bool = False
    ws_max_message_bytes: int = Field(64 * 1024, ge=1024)
    ws_rate_limit_messages: int = Field(50, ge=1)
    ws_rate_limit_window_s: float = Field(10.0, gt=0)
    reconnect_window_s: float = Field(60.0, gt=0)
    recent_orders_limit: int = Field(50, ge=1)

    # Stream writer limits (slow clients)
    # Unsent bytes a WebSocket may hold, the kernel's send queue included: past it nothing new
    # is written (batches coalesce) until it drains, and a connection being closed with more
    # than this still unsent is dropped at once (its close frame would queue behind it all).
    ws_send_buffer_bytes: int = Field(16 * 1024, ge=4096)
    # Frames (replies, snapshots, pings) one connection may have waiting while its socket does
    # not drain; one more and the client is judged to have stopped reading and is dropped.
    # Batches never count: they fold into the coalesced latest state.
    ws_max_queued_frames: int = Field(64, ge=8)

    # Hostile clients: idle sockets and control-frame floods
    # A connection that has not sent a request's complete headers within this long is closed:
    # before its first request, or idle between keep-alive requests.
    http_header_timeout_s: float = Field(10.0, gt=0, le=600)
    # WebSocket ping and pong frames a client may send per WS_RATE_LIMIT_WINDOW_S, counted
    # apart from its messages; one more closes it with 1008 like the message limit.
    ws_rate_limit_control_frames: int = Field(50, ge=1)

    # Broker
    broker: Literal["auto", "alpaca", "simulated"] = "auto"
    alpaca_api_key: SecretStr | None = None
    alpaca_secret_key: SecretStr | None = None
    alpaca_paper: bool = True
    alpaca_username: str | None = None
    accounts_file: Path | None = None
    alpaca_api_url: str | None = None
    alpaca_stream_url: str | None = None
    alpaca_data_stream_url: str | None = None
    alpaca_data_feed: Literal["iex", "sip", "delayed_sip", "test"] = "iex"
    alpaca_auth_timeout_s: float = Field(10.0, gt=0)
    alpaca_backoff_initial_s: float = Field(0.5, gt=0)
    alpaca_backoff_max_s: float = Field(30.0, gt=0)
    # WebSocket ping cadence on the trade_updates connection (a dead peer is noticed in 1.5x).
    alpaca_stream_heartbeat_s: float = Field(20.0, gt=0)
    # Symbols one market-data connection may follow (the free plan's 30 on IEX); past it the
    # most held are followed. 0: no limit (a plan without one, e.g. Algo Trader Plus).
    alpaca_data_symbol_limit: int = Field(30, ge=0, le=100_000)
    # Price ticks per symbol are folded to at most one per this interval before hitting the bus.
    price_coalesce_ms: int = Field(100, ge=0, le=10_000)

    # Broker REST faults
    # Every REST call to the broker (reconciliation, test trades) gives up after this long: a
    # hung broker must not hold the portfolio or an admin's request behind it.
    broker_rest_timeout_s: float = Field(10.0, gt=0, le=300)

    # Simulated broker (the embedded default)
    sim_host: str = "127.0.0.1"
    sim_port: int = Field(0, ge=0, le=65535)
    sim_tick_interval_ms: int = Field(500, ge=10)
    sim_order_interval_s: float = Field(4.0, ge=0)
    sim_demo_users: bool = True
    sim_seed: int | None = None
    # `portfolio-stream simulate` only: its HTTP control API under /_sim/ (absent when unset),
    # and how long a data connection that died uncleanly keeps its key's slot (Alpaca: ~90 s).
    sim_control_token: SecretStr | None = None
    sim_data_slot_hold_s: float = Field(0.0, ge=0, le=3600)

    # Storage, sessions, login
    database_url: str = "sqlite:///./data/portfolio-stream.db"
    session_ttl_hours: float = Field(24 * 7, gt=0)
    cookie_secure: bool = False
    login_max_failures: int = Field(5, ge=1)
    login_lockout_s: float = Field(300.0, gt=0)
    # Higher than the per-user limit: users behind one proxy share an address.
    login_max_failures_per_address: int = Field(50, ge=1)
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Operations
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_file: Path | None = None
    shutdown_timeout_s: float = Field(10.0, gt=0, le=300)
    metrics_token: SecretStr | None = None
    # gc.set_threshold(gen0, gen1, gen2) once serving; "700,10,10" is CPython's default.
    gc_thresholds: Annotated[tuple[int, int, int], NoDecode] = (100_000, 50, 1_000)

    # Scale-out: several nodes sharing one Redis (read only when REDIS_URL is set)
    redis_url: str | None = None
    # This node's name in Redis (stats rows, admission slots, its probe channel); unset:
    # <hostname>:<PORT>.
    node_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:@-]{1,100}$")
    # false: this node starts no trade_updates stream, reconciliation or price feed (another
    # node of the cluster consumes every account); it still places test trades over REST.
    consume_broker_streams: bool = True
    # Connect and command timeout for Redis: beyond it a node acts on its local view.
    redis_timeout_s: float = Field(2.0, gt=0, le=60)
    redis_backoff_initial_s: float = Field(0.25, gt=0, le=60)
    redis_backoff_max_s: float = Field(10.0, gt=0, le=600)
    # A user's channel stays subscribed this long after its last connection here closed.
    redis_unsubscribe_delay_s: float = Field(5.0, ge=0, le=600)
    # End-to-end pub/sub probe cadence; two unanswered probes replace the connection.
    redis_probe_interval_s: float = Field(5.0, gt=0, le=300)
    # Lifetime of a connection's admission slot unless refreshed by the heartbeat: what a
    # crashed node can leak, for at most this long.
    cluster_entry_ttl_s: float = Field(30.0, ge=1, le=3600)
    # How often a node writes its stats row; a row three intervals old is a dead node's.
    cluster_node_report_interval_s: float = Field(3.0, gt=0, le=60)
    # Leases on broker accounts and the price stream: a holder that has not renewed for this
    # long loses its lease to another node (a dead node's accounts wait this long at most).
    lease_ttl_s: float = Field(15.0, ge=1, le=600)
    # How often a holder renews; it stops consuming once a renewal is overdue by
    # LEASE_TTL_S - LEASE_RENEW_S, so it must be under half the TTL.
    lease_renew_s: float = Field(5.0, gt=0, le=300)

    # HTTP API and health rules
    # ``pollIntervalMs`` of /api/realtime/config: how often a browser without a live socket polls.
    poll_interval_ms: int = Field(5000, ge=1000, le=300_000)
    # Largest request body (login, test trade: a few hundred bytes); a bigger one is a 413.
    http_max_body_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    # The stats say "degraded" when more than this share of the active connections closed within
    # the window, or when batch efficiency is under the minimum once enough deliveries were made.
    degraded_disconnect_ratio: float = Field(0.10, ge=0)
    degraded_disconnect_window_s: float = Field(60.0, gt=0, le=3600)
    degraded_min_batch_efficiency: float = Field(0.5, ge=0, le=1)
    degraded_min_deliveries: int = Field(100, ge=0)

    # Hostile clients and a failing environment: login floods, store faults, log output
    # Password checks at once (each ~100 ms of CPU and 64 MiB); beyond it login answers 503.
    login_hash_concurrency: int = Field(2, ge=1, le=64)
    # Lines waiting per log stream (stdout, LOG_FILE) for a slow reader; beyond, dropped.
    log_queue_lines: int = Field(10_000, ge=100)
    # Malformed HTTP requests are logged once per this interval, the others only counted.
    log_bad_request_interval_s: float = Field(60.0, gt=0)
    # How long a statement waits for another process's lock on the database before giving up.
    sqlite_busy_timeout_ms: int = Field(5000, ge=0, le=600_000)
    # Sessions of open WebSockets are re-checked this often (and at expiry), so one ended
    # elsewhere (`portfolio-stream users remove` in another process) is noticed.
    session_check_interval_s: float = Field(30.0, gt=0)

    # PostgreSQL store (DATABASE_URL=postgresql://...; unused with SQLite): docs/scaling.md
    # Connections each node keeps open, plus one listening for other nodes' revocations: the
    # server's max_connections must exceed nodes x (DATABASE_POOL_SIZE + 1), plus the CLI's.
    database_pool_size: int = Field(5, ge=1, le=100)
    # Every statement, and the wait for a free connection, gives up after this long: a dead or
    # unreachable server is a 503 store_unavailable, not a request held.
    database_timeout_s: float = Field(3.0, gt=0, le=60)
    # Prepared statements cut the session lookup by 40 %; false behind PgBouncer in transaction
    # mode (before 1.21, or with max_prepared_statements = 0).
    database_prepared_statements: bool = True

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("redis_url", "node_id", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _known_redis(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("gc_thresholds", mode="before")
    @classmethod
    def _split_thresholds(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            if len(parts) != 3:
                raise ValueError("must be three comma-separated integers, e.g. 100000,50,1000")
            return tuple(parts)
        return value

    @field_validator("gc_thresholds")
    @classmethod
    def _positive_thresholds(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(part < 1 for part in value):
            raise ValueError("thresholds must be positive")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", *POSTGRES_SCHEMES)):
            raise ValueError(
                "must start with sqlite:/// or postgresql:// (e.g. "
                "sqlite:///./data/portfolio-stream.db, postgresql://user:pass@host/db)"
            )
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms:
            raise ValueError(
                "HEARTBEAT_TIMEOUT_MS must be greater than HEARTBEAT_INTERVAL_MS "
                f"({self.heartbeat_timeout_ms} <= {self.heartbeat_interval_ms})"
            )
        if self.max_connections_per_user > self.max_total_connections:
            raise ValueError(
                "MAX_CONNECTIONS_PER_USER must not exceed MAX_TOTAL_CONNECTIONS "
                f"({self.max_connections_per_user} > {self.max_total_connections})"
            )
        if self.redis_url and self.cluster_entry_ttl_s * 1000 <= self.heartbeat_interval_ms:
            raise ValueError(
                "CLUSTER_ENTRY_TTL_S must exceed HEARTBEAT_INTERVAL_MS, which refreshes it "
                f"({self.cluster_entry_ttl_s * 1000:g} ms <= {self.heartbeat_interval_ms} ms)"
            )
        if self.lease_renew_s >= self.lease_ttl_s / 2:
            raise ValueError(
                "LEASE_RENEW_S must be under half of LEASE_TTL_S "
                f"({self.lease_renew_s:g} s >= {self.lease_ttl_s / 2:g} s)"
            )
        if (self.alpaca_api_key is None) != (self.alpaca_secret_key is None):
            raise ValueError("ALPACA_API_KEY and ALPACA_SECRET_KEY must be set together")
        if self.broker == "alpaca" and not self.has_alpaca_credentials:
            raise ValueError(
                "BROKER=alpaca needs ALPACA_API_KEY/ALPACA_SECRET_KEY or ACCOUNTS_FILE"
            )
        return self

    @property
    def has_alpaca_credentials(self) -> bool:
        return self.alpaca_api_key is not None or self.accounts_file is not None

    @property
    def broker_mode(self) -> Literal["alpaca", "simulated"]:
        """The broker actually used: `auto` means alpaca when credentials exist."""
        if self.broker == "auto":
            return "alpaca" if self.has_alpaca_credentials else "simulated"
        return self.broker

    @property
    def database_is_postgres(self) -> bool:
        return self.database_url.startswith(POSTGRES_SCHEMES)

    @property
    def sqlite_path(self) -> Path:
        return Path(self.database_url.removeprefix("sqlite:///"))

    @property
    def batch_window_s(self) -> float:
        return self.batch_window_ms / 1000

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_interval_ms / 1000

    @property
    def heartbeat_timeout_s(self) -> float:
        return self.heartbeat_timeout_ms / 1000


_URL_CREDENTIALS = re.compile(r"://[^/@\s]*@")


def describe_validation_error(error: ValidationError) -> str:
    """One line naming the first offending variable, for the start-up failure message."""
    first = error.errors()[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if not location:
        return f"invalid configuration: {message}"
    variable = location.upper()
    value = first.get("input")
    shown = "" if isinstance(value, dict) or "key" in variable or "secret" in variable else value
    if isinstance(shown, str):
        # DATABASE_URL/REDIS_URL may carry a password: never echo URL credentials.
        shown = _URL_CREDENTIALS.sub("://***@", shown)
    suffix = f" (got {shown!r})" if shown not in ("", None) else ""
    return f"invalid configuration: {variable}: {message}{suffix}"
