"""deploy/nginx/portfolio-stream.conf under Debian's nginx, and `make cluster` as a process:
the config passes `nginx -t`, a browser's login and WebSocket pass the Origin check through it,
and the cluster starts a broker, three nodes and nginx, then stops every one on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest
import redis
from psycopg import sql

from app.devcluster import (
    NGINX_SITE,
    find_nginx,
    nginx_argv,
    render_site,
    write_nginx_prefix,
)
from tests.cluster.redis_server import RedisServer
from tests.ops.conftest import (
    REPO,
    Service,
    cli,
    free_port,
    http_status,
    service_env,
    wait_until,
)
from tests.postgres import ADMIN_URL, unreachable_reason

NGINX = find_nginx()
needs_nginx = pytest.mark.skipif(
    NGINX is None,
    reason="nginx is not installed (.ci/run installs Debian's: apt-get install nginx)",
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def test_rendering_replaces_the_listener_and_every_upstream_server() -> None:
    shipped = NGINX_SITE.read_text(encoding="utf-8")
    assert "least_conn;" in shipped
    rendered = render_site(7000, [7001, 7002])
    assert "    listen 127.0.0.1:7000;" in rendered
    servers = [line.split()[1] for line in rendered.splitlines() if line.startswith("    server ")]
    assert servers == ["127.0.0.1:7001", "127.0.0.1:7002"]
    # Everything else is the shipped file, word for word.
    assert rendered.count("proxy_set_header Host $http_host;") == 2


class Nginx:
    """Debian's nginx on the rendered config, as any user: everything under ``prefix``."""

    def __init__(self, prefix: Path, listen_port: int, node_ports: list[int]) -> None:
        assert NGINX is not None
        self.prefix = prefix
        self.conf = write_nginx_prefix(prefix, listen_port, node_ports)
        self.argv = nginx_argv(NGINX, prefix, self.conf)
        self.url = f"http://127.0.0.1:{listen_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def test(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, "-t"], capture_output=True, text=True, timeout=30, check=False
        )

    def start(self) -> None:
        self.proc = subprocess.Popen([*self.argv, "-g", "daemon off;"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)


@pytest.fixture
def nginx_in_front(tmp_path: Path) -> Iterator[Nginx]:
    server = Nginx(tmp_path / "nginx", free_port(), [free_port()])
    yield server
    server.stop()


@needs_nginx
def test_the_shipped_config_passes_nginx_t(tmp_path: Path) -> None:
    server = Nginx(tmp_path / "nginx", free_port(), [free_port(), free_port(), free_port()])
    result = server.test()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


@needs_nginx
async def test_a_browser_logs_in_and_streams_through_nginx(
    tmp_path: Path, services: list[Service]
) -> None:
    env = service_env(tmp_path, HEARTBEAT_INTERVAL_MS="500", HEARTBEAT_TIMEOUT_MS="5000")
    cli(env, "users", "add", "alice", "--password-stdin", stdin="alice-pw\n")
    node = Service(env, tmp_path / "node.log")
    services.append(node)
    node.wait_ready()
    proxy = Nginx(tmp_path / "nginx", free_port(), [int(env["PORT"])])
    try:
        proxy.start()
        wait_until(lambda: http_status(f"{proxy.url}/healthz") == 200, 15, "nginx")
        # The browser's origin is nginx's address; the node sees the same Host, port included.
        origin = {"Origin": proxy.url}
        # unsafe: keep cookies of an IP-address host, as a browser does.
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as browser:
            async with browser.post(
                f"{proxy.url}/api/auth/login",
                json={"username": "alice", "password": "alice-pw"},
                headers=origin,
            ) as response:
                assert response.status == 200, await response.text()
            async with browser.ws_connect(f"{proxy.url}/ws/portfolio", headers=origin) as ws:
                # Both ways through the proxied socket: the node's first message, then a
                # client ping answered.
                async with asyncio.timeout(15):
                    assert (await ws.receive_json())["type"] == "connected"
                    await ws.send_json({"type": "ping"})
                    while (await ws.receive_json())["type"] != "pong":
                        pass
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await browser.ws_connect(
                    f"{proxy.url}/ws/portfolio", headers={"Origin": "http://evil.example"}
                )
            assert refused.value.status == 403
    finally:
        proxy.stop()
    assert node.stop() == 0


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http
        body: bytes = response.read()
    return body.decode()


def cluster_blockers() -> str | None:
    if NGINX is None:
        return "nginx is not installed (.ci/run installs Debian's)"
    reason = unreachable_reason()
    if reason is not None:
        return reason
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return f"no Redis at {REDIS_URL} ({exc}); .ci/run starts one"
    return None


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_make_cluster_starts_everything_and_stops_every_child(tmp_path: Path) -> None:
    blocker = cluster_blockers()
    if blocker is not None:
        pytest.skip(blocker)
    database = f"portfolio_stream_cluster_test_{os.getpid()}"
    ports = [free_port() for _ in range(3)]
    # A Redis of its own: three real nodes write their shared state into it.
    own_redis = RedisServer(tmp_path / "redis")
    own_redis.start()
    env = {
        **os.environ,
        "CLUSTER_DIR": str(tmp_path / "cluster"),
        "CLUSTER_PORT": str(free_port()),
        "CLUSTER_NODE_PORTS": ",".join(map(str, ports)),
        "CLUSTER_SIM_PORT": "0",
        "CLUSTER_POSTGRES_URL": ADMIN_URL,
        "CLUSTER_DATABASE": database,
        "REDIS_URL": own_redis.url,
    }
    output = tmp_path / "cluster.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.devcluster"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"cluster exited {proc.returncode}:\n{output.read_text()}")
            return "Ctrl-C stops it." in output.read_text()

        wait_until(up, 180, "the cluster banner", interval=0.2)
        text = output.read_text()
        assert f"cluster up: http://127.0.0.1:{env['CLUSTER_PORT']}/" in text
        assert "admin / " in text and "(admin)" in text
        assert http_status(f"http://127.0.0.1:{env['CLUSTER_PORT']}/healthz") == 200
        for port in ports:
            assert http_status(f"http://127.0.0.1:{port}/readyz") == 200
            # Only node-1 consumes: the others' standby accounts are no stream of theirs and
            # must not read as down (the BrokerStreamDown alert).
            metrics = http_text(f"http://127.0.0.1:{port}/metrics")
            down = [m for m in metrics.splitlines() if m.startswith("alpaca_stream_up{")]
            assert all(m.endswith(" 1.0") for m in down), down
            assert "portfolio_redis_up 1.0" in metrics
        pids = {
            line.split()[1]: int(line.split("(pid ")[1].split(",")[0])
            for line in text.splitlines()
            if line.startswith("started ")
        }
        assert set(pids) == {"simulator", "node-1", "node-2", "node-3", "nginx"}

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, output.read_text()
        text = output.read_text()
        stopped = [line.split()[1] for line in text.splitlines() if line.startswith("stopped ")]
        assert stopped == ["nginx", "node-3", "node-2", "node-1", "simulator"]
        assert all(f"stopped {name} (exit 0)" in text for name in pids)
        # Each was reaped by the supervisor: none is left running or as a zombie.
        assert [pid for pid in pids.values() if Path(f"/proc/{pid}").exists()] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        own_redis.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
