"""SIGTERM/SIGINT on a real `portfolio-stream serve` process (SPEC §9): connected clients get
1001 Going Away, the log shows the shutdown sequence, the process exits 0 in time.

(That a pending batch is flushed before the 1001 is proven in-process in test_shutdown.py:
nothing can publish into the subprocess's bus from here.)"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from app.store import Store
from config.settings import Settings
from tests.app.support import Session, receive, receive_close

CLI = str(Path(sys.executable).with_name("portfolio-stream"))
SHUTDOWN_TIMEOUT_S = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


async def make_session(database: Path) -> Session:
    store = Store(database)
    await store.open()
    try:
        user = await store.create_user("alice", "correct horse")
        return Session(await store.create_session(user.id, 3600), user.id)
    finally:
        await store.close()


async def wait_ready(
    http: aiohttp.ClientSession, base: str, process: asyncio.subprocess.Process, log: Path
) -> None:
    async with asyncio.timeout(30):
        while True:
            assert process.returncode is None, text_of(log)
            try:
                async with http.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_closes_clients_1001_and_exits_0_in_time(
    tmp_path: Path, signum: signal.Signals
) -> None:
    database = tmp_path / "portfolio-stream.db"
    alice = await make_session(database)
    port = free_port()
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.update(
        {
            "BROKER": "simulated",
            "SIM_ORDER_INTERVAL_S": "0",
            "SIM_DEMO_USERS": "false",
            "DATABASE_URL": f"sqlite:///{database}",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = tmp_path / "service.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            CLI, "serve", cwd=tmp_path, env=env, stdout=sink, stderr=asyncio.subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, base, process, log)
            ws = await http.ws_connect(f"{base}/ws/portfolio", headers=alice.headers)
            assert (await receive(ws))["type"] == "connected"
            await ws.send_json({"type": "subscribe", "channels": ["positions"]})
            assert (await receive(ws))["type"] == "subscribed"
            assert (await receive(ws))["type"] == "snapshot"

            loop = asyncio.get_running_loop()
            signalled = loop.time()
            process.send_signal(signum)
            close = await receive_close(ws, SHUTDOWN_TIMEOUT_S)
            assert close.type is aiohttp.WSMsgType.CLOSE
            assert (close.data, close.extra) == (1001, "Server shutting down")
            code = await asyncio.wait_for(process.wait(), SHUTDOWN_TIMEOUT_S + 2)
            assert code == 0, text_of(log)
            assert loop.time() - signalled <= SHUTDOWN_TIMEOUT_S
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(f"{base}/healthz")  # nothing listens any more
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = text_of(log)
    sequence = [
        "[PortfolioStream] Signal received: starting graceful shutdown",
        "[PortfolioStream] Shutting down: activeConnections=1",
        f"[PortfolioStream] Client disconnected: userId={alice.user_id}, code=1001, "
        "reason=Server shutting down",
        "[PortfolioStream] Shutdown complete: all connections closed",
    ]
    positions = [output.find(line) for line in sequence]
    assert all(p >= 0 for p in positions), output
    assert positions == sorted(positions), output
    assert " ERROR " not in output, output
