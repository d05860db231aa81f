"""Several real `portfolio-stream serve` nodes on one Redis, one PostgreSQL and one broker.

Every part is a real process on loopback: a ``redis-server`` of the test's own (it may stop and
start it again on the same port), a database of the test session on the local PostgreSQL, one
standalone simulated broker (`portfolio-stream simulate`) holding an account per user, and the
nodes, which reach it as Alpaca (``BROKER=alpaca``, its URLs, the accounts file). Exactly the
first node consumes the broker streams; the others place orders through REST only.

Every wait polls a condition under a deadline (``/readyz``, a line on stdout, a stats field);
nothing sleeps a fixed time to let something happen. Every process is killed at teardown.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from alpaca_bridge.simulator.control_client import SimControl
from tests.cluster.redis_server import RedisServer
from tests.ops.conftest import CLI, free_port, http_status, wait_until

__all__ = [
    "PASSWORD",
    "Account",
    "Cluster",
    "Node",
    "RedisServer",
    "Simulator",
    "create_users",
    "free_port",
    "wait_until",
    "write_accounts",
]

PASSWORD = "correct horse battery"
START_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 20.0
TRACEBACK = "Traceback (most recent call last)"

# The bounds the tests check are these settings: small, so that they are reached quickly.
ENTRY_TTL_S = 3.0  # CLUSTER_ENTRY_TTL_S: a SIGKILLed node's admission slots live this long
REPORT_INTERVAL_S = 0.5  # CLUSTER_NODE_REPORT_INTERVAL_S: a row 3 intervals old is dead
PROBE_INTERVAL_S = 0.5  # REDIS_PROBE_INTERVAL_S
HEARTBEAT_INTERVAL_MS = 1000  # refreshes the admission entries; must stay under the TTL
PER_USER_LIMIT = 5  # MAX_CONNECTIONS_PER_USER, as in production
# SIM_CONTROL_TOKEN: every simulator of these tests has its control API (``Simulator.control``).
CONTROL_TOKEN = "nodes-control-token"
# MAX_TOTAL_CONNECTIONS: production's "the 101st overall" at a fifth of the scale (100 -> 20),
# so four users at their per-user limit fill the cluster and a fifth user's tab is the 21st.
TOTAL_LIMIT = 20
BATCH_WINDOW_MS = 50

# Variables of the test's own environment that must not leak into a service it starts.
_FOREIGN_VARS = (
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "REDIS_URL",
    "DATABASE_URL",
    "NODE_ID",
    "PORT",
    "HOST",
    "ALPACA_API_KEY",
    "ALPACA_SECRET_KEY",
    "ALLOWED_ORIGINS",
)


def base_env(workdir: Path, **overrides: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_VARS}
    env.update({"PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO", "LOG_FORMAT": "text"})
    env.update({key.upper(): str(value) for key, value in overrides.items()})
    workdir.mkdir(parents=True, exist_ok=True)
    return env


# ---- users and broker accounts ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    api_key: str
    secret_key: str

    @property
    def rest_headers(self) -> dict[str, str]:
        return {"APCA-API-KEY-ID": self.api_key, "APCA-API-SECRET-KEY": self.secret_key}


def write_accounts(path: Path, usernames: Iterable[str]) -> list[Account]:
    """An ACCOUNTS_FILE with a key pair per user; the simulator and the nodes both read it."""
    accounts = [
        Account(name, f"PK{index:04d}{name.upper()[:12]}", f"secret-{index}-{name}")
        for index, name in enumerate(usernames)
    ]
    path.write_text(
        "".join(
            f'[[accounts]]\nusername = "{a.username}"\napi_key = "{a.api_key}"\n'
            f'secret_key = "{a.secret_key}"\npaper = true\n\n'
            for a in accounts
        ),
        encoding="utf-8",
    )
    return accounts


def _run_cli(env: dict[str, str], cwd: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [CLI, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, f"portfolio-stream {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def create_users(
    database_url: str, workdir: Path, users: Sequence[str], admins: Sequence[str] = ()
) -> None:
    """The schema (`db upgrade`), then each user through `users add` (all at once)."""
    env = base_env(workdir, database_url=database_url)
    _run_cli(env, workdir, "db", "upgrade")
    procs = []
    for name in [*users, *admins]:
        argv = [CLI, "users", "add", name, "--password-stdin"]
        if name in admins:
            argv.append("--admin")
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append((name, proc))
    for name, proc in procs:
        _, err = proc.communicate(PASSWORD + "\n", timeout=60)
        assert proc.returncode == 0, f"users add {name}: {err}"


# ---- processes -------------------------------------------------------------------------------


class Process:
    """A subprocess with its output in a log file, killed for sure at ``kill``."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed when the process is reaped
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def check_alive(self, what: str) -> None:
        if not self.alive:
            raise AssertionError(f"{what} exited with {self.proc.returncode}:\n{self.log()}")

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, as systemd stops a unit, and the exit code."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"no exit {timeout}s after SIGTERM:\n{self.log()}") from None
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


# The start-up line of `portfolio-stream simulate` names the node settings that point at it.
_SETTING_URL = re.compile(r"\b(ALPACA_API_URL|ALPACA_STREAM_URL|ALPACA_DATA_STREAM_URL)=([^\s,]+)")


@dataclass(frozen=True, slots=True)
class BrokerUrls:
    api_url: str
    stream_url: str
    data_stream_url: str


def broker_urls(output: str) -> BrokerUrls | None:
    """The three URLs `portfolio-stream simulate` logs, once it has logged them."""
    found = dict(_SETTING_URL.findall(output))
    try:
        return BrokerUrls(
            found["ALPACA_API_URL"], found["ALPACA_STREAM_URL"], found["ALPACA_DATA_STREAM_URL"]
        )
    except KeyError:
        return None


class Simulator(Process):
    """The standalone simulated broker: the accounts of ACCOUNTS_FILE, their keys, one market."""

    def __init__(self, workdir: Path, accounts_file: Path, accounts: list[Account]) -> None:
        self.accounts = {a.username: a for a in accounts}
        self.port = free_port()
        env = base_env(
            workdir,
            sim_host="127.0.0.1",
            sim_port=self.port,
            accounts_file=accounts_file,
            # No trades but the tests' own, so the broker's truth is what they placed.
            sim_order_interval_s=0,
            sim_tick_interval_ms=250,
            sim_demo_users="false",
            sim_control_token=CONTROL_TOKEN,
        )
        super().__init__([CLI, "simulate"], env, workdir, workdir / "simulator.log")
        try:
            self.urls = self._wait_urls()
        except BaseException:
            self.kill()
            raise

    def _wait_urls(self) -> BrokerUrls:
        found: list[BrokerUrls] = []

        def printed() -> bool:
            self.check_alive("portfolio-stream simulate")
            urls = broker_urls(self.log())
            if urls is not None:
                found.append(urls)
            return bool(found)

        wait_until(printed, START_TIMEOUT_S, "the simulator's URLs", interval=0.05)
        return found[0]

    @property
    def control(self) -> SimControl:
        """The broker's control API: its fills, positions, stream history and faults."""
        return SimControl(self.urls.api_url, CONTROL_TOKEN)

    def node_env(self) -> dict[str, str]:
        return {
            "BROKER": "alpaca",
            "ALPACA_API_URL": self.urls.api_url,
            "ALPACA_STREAM_URL": self.urls.stream_url,
            "ALPACA_DATA_STREAM_URL": self.urls.data_stream_url,
            "ALPACA_BACKOFF_INITIAL_S": "0.05",
            "ALPACA_BACKOFF_MAX_S": "0.5",
        }

    async def positions(self, http: aiohttp.ClientSession, username: str) -> dict[str, str]:
        """The broker's truth: symbol -> qty, as its REST API answers (GET /v2/positions)."""
        async with http.get(
            f"{self.urls.api_url}/v2/positions", headers=self.accounts[username].rest_headers
        ) as response:
            assert response.status == 200, await response.text()
            rows = await response.json()
        return {row["symbol"]: row["qty"] for row in rows}

    async def settled_positions(self, http: aiohttp.ClientSession, username: str) -> dict[str, str]:
        """The positions once no order of the account is still open (every fill is made)."""
        deadline = time.monotonic() + 15
        while True:
            async with http.get(
                f"{self.urls.api_url}/v2/orders?status=open",
                headers=self.accounts[username].rest_headers,
            ) as response:
                assert response.status == 200, await response.text()
                if not await response.json():
                    return await self.positions(http, username)
            assert time.monotonic() < deadline, f"{username}'s orders never all filled"
            await asyncio.sleep(0.05)


class Node(Process):
    """One `portfolio-stream serve`; ``restart`` starts it again on the same port and id."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        log_path = self.workdir / f"{self.id}.{self.restarts}.log"
        Process.__init__(self, [CLI, "serve"], self.env, self.workdir, log_path)

    @property
    def id(self) -> str:
        return self.env["NODE_ID"]

    @property
    def port(self) -> int:
        return int(self.env["PORT"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/portfolio"

    def ready(self) -> bool:
        self.check_alive(f"node {self.id}")
        return http_status(f"{self.url}/readyz", timeout=2) == 200

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        wait_until(self.ready, timeout, f"{self.id} {self.url}/readyz")

    def restart(self) -> None:
        assert not self.alive, "stop it first"
        self.restarts += 1
        self._start()

    def tracebacks(self) -> int:
        return self.log().count(TRACEBACK)


class Cluster:
    """The nodes of one test (or module), on one Redis server and one simulator."""

    def __init__(
        self,
        workdir: Path,
        *,
        redis: RedisServer,
        simulator: Simulator,
        database_url: str,
        accounts_file: Path,
        size: int = 3,
        **overrides: Any,
    ) -> None:
        self.workdir = workdir
        self.redis = redis
        self.simulator = simulator
        self.database_url = database_url
        self.accounts_file = accounts_file
        self.overrides = overrides
        self.nodes: list[Node] = []
        for _ in range(size):
            self.nodes.append(Node(workdir / self._next_id(), self._node_env(self._next_id())))
        try:
            for node in self.nodes:
                node.wait_ready()
        except BaseException:
            self.close()
            raise

    def _next_id(self) -> str:
        index = len(self.nodes)
        return f"node-{'abcdefgh'[index]}" if index < 8 else f"node-{index}"

    def _node_env(self, name: str) -> dict[str, str]:
        """A node's settings; the first node alone consumes the broker streams unless the
        cluster's overrides say otherwise."""
        env = base_env(
            self.workdir / name,
            host="127.0.0.1",
            port=free_port(),
            node_id=name,
            redis_url=self.redis.url,
            database_url=self.database_url,
            accounts_file=self.accounts_file,
            consume_broker_streams="true" if not self.nodes else "false",
            batch_window_ms=BATCH_WINDOW_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            heartbeat_timeout_ms=10 * HEARTBEAT_INTERVAL_MS,
            cluster_entry_ttl_s=ENTRY_TTL_S,
            cluster_node_report_interval_s=REPORT_INTERVAL_S,
            redis_probe_interval_s=PROBE_INTERVAL_S,
            redis_timeout_s=1,
            redis_backoff_initial_s=0.05,
            redis_backoff_max_s=0.5,
            redis_unsubscribe_delay_s=1,
            max_connections_per_user=PER_USER_LIMIT,
            max_total_connections=TOTAL_LIMIT,
            shutdown_timeout_s=5,
            session_check_interval_s=2,
            **self.simulator.node_env(),
        )
        env.update({key.upper(): str(value) for key, value in self.overrides.items()})
        return env

    def spawn(self) -> Node:
        """One more node with the cluster's settings and an id never used before (not yet
        ready: ``wait_ready`` it)."""
        name = self._next_id()
        node = Node(self.workdir / name, self._node_env(name))
        self.nodes.append(node)
        return node

    def __getitem__(self, index: int) -> Node:
        return self.nodes[index]

    @property
    def alive(self) -> list[Node]:
        return [node for node in self.nodes if node.alive]

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
