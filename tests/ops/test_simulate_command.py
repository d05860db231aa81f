"""`portfolio-stream simulate`: the simulated broker as a process of its own, which nodes reach
with BROKER=alpaca and the URLs of its start-up line, and which stops cleanly on a signal."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest
from alpaca.trading.client import TradingClient

from tests.ops.conftest import CLI, Service, cli, free_port, service_env, wait_until, workdir

READY = "[SimulatedBroker] Standalone broker ready"
ACCOUNTS = (("alice", "PKALICE0001", "alice-secret-1"), ("bob", "PKBOB00002", "bob-secret-2"))


def write_accounts(path: Path) -> Path:
    path.write_text(
        "".join(
            f'[[accounts]]\nusername = "{name}"\napi_key = "{key}"\nsecret_key = "{secret}"\n\n'
            for name, key, secret in ACCOUNTS
        ),
        encoding="utf-8",
    )
    return path


class Simulator:
    """A `portfolio-stream simulate` subprocess; ``urls`` are its start-up line's fields."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [CLI, "simulate"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir(env),
        )
        self.urls: dict[str, str] = {}

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_started(self, timeout: float = 30) -> dict[str, str]:
        def started() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"simulate exited with {self.proc.returncode}:\n{self.log()}")
            return READY in self.log()

        wait_until(started, timeout, "the simulator's start-up line")
        line = next(line for line in self.log().splitlines() if READY in line)
        self.urls = dict(re.findall(r"(\w+)=([^,\s]+)", line.split(READY, 1)[1]))
        return self.urls

    def wait(self, timeout: float = 15) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def simulate_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = service_env(
        tmp_path,
        ACCOUNTS_FILE=str(write_accounts(tmp_path / "accounts.toml")),
        SIM_PORT="0",
        SIM_TICK_INTERVAL_MS="100",
    )
    env.pop("BROKER")
    env.update(overrides)
    return env


def test_nodes_reach_the_standalone_broker_at_its_printed_urls(
    tmp_path: Path, services: list[Service]
) -> None:
    sim = Simulator(simulate_env(tmp_path), tmp_path / "simulate.log")
    try:
        urls = sim.wait_started()
        port = int(urls["ALPACA_API_URL"].rsplit(":", 1)[1])
        assert port > 0  # SIM_PORT=0: the line shows the port actually picked
        assert urls == {
            "ALPACA_API_URL": f"http://127.0.0.1:{port}",
            "ALPACA_STREAM_URL": f"ws://127.0.0.1:{port}/stream",
            "ALPACA_DATA_STREAM_URL": f"ws://127.0.0.1:{port}/v2/iex",
            "accounts": "2",
        }

        # The broker side of a node, as alpaca-py, with each account's configured keys.
        for _, key, secret in ACCOUNTS:
            client = TradingClient(key, secret, paper=True, url_override=urls["ALPACA_API_URL"])
            assert client.get_account().status == "ACTIVE"  # type: ignore[union-attr]

        # A whole node: its streams, reconciliation and price feed run against it.
        node_dir = tmp_path / "node"
        node_dir.mkdir()
        node_env = service_env(
            node_dir,
            BROKER="alpaca",
            ACCOUNTS_FILE=str(tmp_path / "accounts.toml"),
            ALPACA_API_URL=urls["ALPACA_API_URL"],
            ALPACA_STREAM_URL=urls["ALPACA_STREAM_URL"],
            ALPACA_DATA_STREAM_URL=urls["ALPACA_DATA_STREAM_URL"],
        )
        for name, _, _ in ACCOUNTS:
            cli(node_env, "users", "add", name, "--password-stdin", stdin="pw-" + name + "\n")
        node = Service(node_env, tmp_path / "node.log")
        services.append(node)
        node.wait_ready()
        assert node.stop() == 0

        sim.proc.send_signal(signal.SIGTERM)
        assert sim.wait() == 0, sim.log()
        assert "[SimulatedBroker] Stopped" in sim.log()
    finally:
        sim.kill()


def test_sigint_stops_it_cleanly_on_a_fixed_port(tmp_path: Path) -> None:
    port = free_port()
    sim = Simulator(simulate_env(tmp_path, SIM_PORT=str(port)), tmp_path / "simulate.log")
    try:
        assert sim.wait_started()["ALPACA_API_URL"] == f"http://127.0.0.1:{port}"
        sim.proc.send_signal(signal.SIGINT)
        assert sim.wait() == 0, sim.log()
    finally:
        sim.kill()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ACCOUNTS_FILE": ""}, "portfolio-stream simulate needs accounts"),
        ({"ACCOUNTS_FILE": "/nonexistent/accounts.toml"}, "no such file"),
    ],
)
def test_without_usable_accounts_it_refuses_to_start(
    tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    env = simulate_env(tmp_path, **overrides)
    if not env["ACCOUNTS_FILE"]:
        del env["ACCOUNTS_FILE"]
    result = subprocess.run(
        [CLI, "simulate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=workdir(env),
    )
    assert result.returncode == 2
    assert message in result.stderr
