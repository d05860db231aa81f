"""Through nginx with the shipped config (deploy/nginx/portfolio-stream.conf, rendered with the
nodes' ports as `make cluster` renders it): login, live updates and the 1013 limit behave as
they do on the nodes themselves — the upgrade headers pass, the Origin check passes, and the
limit is the cluster's whichever node nginx picks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from app.devcluster import find_nginx, nginx_argv, write_nginx_prefix
from tests.nodes.browser import Tab, browser_headers, me_status, refused
from tests.nodes.conftest import Sessions
from tests.nodes.harness import (
    PER_USER_LIMIT,
    START_TIMEOUT_S,
    Cluster,
    Process,
    free_port,
    http_status,
    wait_until,
)

pytestmark = pytest.mark.slow


class Nginx(Process):
    """nginx in the foreground with every file under ``prefix``, in front of the nodes."""

    def __init__(self, binary: str, prefix: Path, node_ports: list[int]) -> None:
        self.port = free_port()
        conf = write_nginx_prefix(prefix, self.port, node_ports)
        argv = [*nginx_argv(binary, prefix, conf), "-g", "daemon off;"]
        super().__init__(argv, {}, prefix, prefix / "nginx.out")
        wait_until(self._answers, START_TIMEOUT_S, f"nginx on port {self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        self.check_alive("nginx")
        return http_status(f"{self.url}/readyz", timeout=2) == 200


@pytest.fixture(scope="module")
def nginx(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    binary = find_nginx()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    proxy = Nginx(binary, tmp_path_factory.mktemp("nginx"), [node.port for node in cluster.nodes])
    try:
        yield proxy
    finally:
        proxy.kill()


async def test_login_through_nginx_gives_a_session_that_works_through_it(
    nginx: Nginx, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    token = await sessions.token(nginx.url, "dave")
    assert await me_status(http, nginx.url, token) == 200
    async with http.get(
        f"{nginx.url}/api/portfolio", headers=browser_headers(nginx.url, token)
    ) as r:
        assert r.status == 200


async def test_live_updates_reach_every_tab_opened_through_nginx(
    nginx: Nginx, cluster: Cluster, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    token = await sessions.token(nginx.url, "dave")
    admin = await sessions.admin(nginx.url)
    tabs = [await Tab.open(http, nginx.url, token) for _ in range(3)]
    try:
        order = await admin.trade(nginx.url, "dave", "MSFT", "buy", 2)
        for tab in tabs:
            await tab.wait(
                lambda t: (
                    t.orders.get(order["orderId"], {}).get("status") == "filled"
                    and "MSFT" in t.positions
                ),
                "the fill, through nginx",
            )
            assert tab.seq_gaps == []
    finally:
        for tab in tabs:
            await tab.close()


async def test_the_sixth_connection_through_nginx_is_refused_with_1013(
    nginx: Nginx, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    token = await sessions.token(nginx.url, "erin")
    tabs = [await Tab.open(http, nginx.url, token, subscribe=False) for _ in range(PER_USER_LIMIT)]
    try:
        refusal = await refused(http, nginx.url, token)
        assert (refusal.code, refusal.reason) == (1013, "Maximum connections exceeded")
    finally:
        for tab in tabs:
            await tab.close()
