"""A restart on a socket-activated listener refuses no connection (runbook: Rolling Restart).

The test plays systemd's part: it owns the listening socket (portfolio-stream.socket), execs the
service with it as descriptor 3 (LISTEN_FDS=1, LISTEN_PID), and on restart sends SIGTERM to the
old process, waits for it to exit and starts the new one on the same socket — what
`systemctl restart portfolio-stream` does — while clients keep opening HTTP and WebSocket
connections the whole time.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.ops.conftest import Service, cli, service_env, wait_until

pytestmark = pytest.mark.slow


def _refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or (
            isinstance(seen, OSError) and seen.errno == errno.ECONNREFUSED
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Hammer:
    """Workers opening a fresh connection per attempt, tallying outcomes."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token
        self.outcomes: Counter[str] = Counter()
        self.refusals: list[str] = []
        self.stop = asyncio.Event()

    async def _attempt_http(self, http: aiohttp.ClientSession) -> str:
        async with http.get(f"{self.base_url}/healthz") as response:
            await response.read()
            return f"http {response.status}"

    async def _attempt_ws(self, http: aiohttp.ClientSession) -> str:
        try:
            async with http.ws_connect(f"{self.base_url}/ws/portfolio") as ws:
                await ws.receive(timeout=10)
                return "ws upgraded"
        except aiohttp.WSServerHandshakeError as error:
            return f"ws {error.status}"  # 503 while draining: answered, not refused

    async def worker(self, kind: str) -> None:
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, cookies={"session": self.token}
        ) as http:
            while not self.stop.is_set():
                try:
                    attempt = self._attempt_ws if kind == "ws" else self._attempt_http
                    self.outcomes[await attempt(http)] += 1
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    if _refused(exc):
                        self.outcomes["refused"] += 1
                        self.refusals.append(repr(exc))
                    else:
                        self.outcomes[f"{kind} error {type(exc).__name__}"] += 1
                await asyncio.sleep(0.005)


async def _wait_ready(service: Service) -> None:
    await asyncio.to_thread(service.wait_ready)


async def test_restart_under_load_refuses_nothing_and_closes_clients_with_1001(
    tmp_path: Path, services: list[Service]
) -> None:
    # A 10 s batch window: the fill below is still pending when SIGTERM arrives.
    env = service_env(tmp_path, SIM_DEMO_USERS="true", BATCH_WINDOW_MS=10_000)

    with socket.socket() as listener:  # portfolio-stream.socket
        listener.bind(("127.0.0.1", 0))
        listener.listen(4096)
        env["PORT"] = str(listener.getsockname()[1])  # as ListenStream= (the CLI's `trade`)
        old = Service(env, tmp_path / "old.log", listen_sock=listener)
        services.append(old)
        await _wait_ready(old)
        assert "Listening on inherited socket" in old.log()
        token = cli(env, "sessions", "create", "alice")
        hammer_token = cli(env, "sessions", "create", "bob")

        async with aiohttp.ClientSession(cookies={"session": token}) as http:
            existing = [await http.ws_connect(f"{old.base_url}/ws/portfolio") for _ in range(3)]
            for ws in existing:
                assert (await ws.receive_json())["type"] == "connected"
                await ws.send_json({"type": "subscribe", "channels": ["positions"]})
                assert (await ws.receive_json())["type"] == "subscribed"
                assert (await ws.receive_json())["type"] == "snapshot"

            hammer = Hammer(old.base_url, hammer_token)
            workers = [
                asyncio.create_task(hammer.worker(kind))
                for kind in ("http", "http", "http", "ws", "ws")
            ]
            await asyncio.sleep(0.5)  # load before the restart
            before = sum(hammer.outcomes.values())
            await asyncio.to_thread(cli, env, "trade", "alice", "AAPL", "buy", "1")
            await asyncio.to_thread(
                wait_until, lambda: "Processed trade:executed event" in old.log(), 15, "the fill"
            )

            # systemctl restart: SIGTERM, wait for the exit, start anew on the same socket.
            exit_code = await asyncio.to_thread(old.stop)
            new = Service(env, tmp_path / "new.log", listen_sock=listener)
            services.append(new)
            await _wait_ready(new)
            restarted_at = sum(hammer.outcomes.values())
            deadline = time.monotonic() + 10
            while sum(hammer.outcomes.values()) < restarted_at + 50:
                assert time.monotonic() < deadline, hammer.outcomes
                await asyncio.sleep(0.05)
            hammer.stop.set()
            await asyncio.gather(*workers)

            closes, flushed = [], []
            for ws in existing:
                frames = []
                while (msg := await ws.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT:
                    frames.append(json.loads(msg.data))
                closes.append((msg.type, msg.data, msg.extra))
                flushed.append(
                    any(
                        frame["type"] == "batch"
                        and any(p["symbol"] == "AAPL" for p in frame["positions"])
                        for frame in frames
                    )
                )
                await ws.close()

        assert exit_code == 0
        assert hammer.outcomes["refused"] == 0, (hammer.outcomes, hammer.refusals[:5])
        assert before > 0 and hammer.outcomes["http 200"] > 0 and hammer.outcomes["ws upgraded"]
        assert all(
            close == (aiohttp.WSMsgType.CLOSE, 1001, "Server shutting down") for close in closes
        ), closes
        assert flushed == [True, True, True], "the pending batch is flushed before the close"
        assert "Client disconnected: userId=" in old.log() and "code=1001" in old.log()
        assert new.stop() == 0


async def test_without_an_inherited_socket_a_stopped_service_refuses(
    tmp_path: Path, services: list[Service]
) -> None:
    """The contrast that makes the first test meaningful: a plain TCPSite gap is refused."""
    env = service_env(tmp_path)
    service = Service(env, tmp_path / "server.log")
    services.append(service)
    await _wait_ready(service)
    assert f"Listening on http://127.0.0.1:{env['PORT']}" in service.log()
    assert await asyncio.to_thread(service.stop) == 0
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", int(env["PORT"])))
