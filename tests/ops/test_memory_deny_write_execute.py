"""MemoryDenyWriteExecute=yes in the unit is safe: the service runs under the kernel's
PR_SET_MDWE (the same W^X rule systemd enforces) through start-up, login, a WebSocket stream and
a test trade — CPython, uvloop, orjson, pydantic-core and argon2-cffi map no W+X memory."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.ops.conftest import Service, cli, service_env

pytestmark = pytest.mark.slow

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
MDWE_WRAPPER = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:\n"
    "    print('mdwe=unsupported', flush=True)\n"
    "    sys.exit(0)\n"
    "print('mdwe=on', flush=True)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


async def test_service_works_under_memory_deny_write_execute(
    tmp_path: Path, services: list[Service]
) -> None:
    env = service_env(tmp_path, SIM_DEMO_USERS="true", BATCH_WINDOW_MS=50)
    service = Service(env, tmp_path / "server.log", wrapper=[sys.executable, "-c", MDWE_WRAPPER])
    services.append(service)
    first_line = await asyncio.to_thread(_first_line, service)
    if first_line == "mdwe=unsupported":
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert first_line == "mdwe=on"
    await asyncio.to_thread(service.wait_ready)

    # unsafe=True: keep cookies set by an IP-address host (127.0.0.1)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        login = await http.post(
            f"{service.base_url}/api/auth/login",
            json={"username": "alice", "password": "alice-demo"},
        )
        assert login.status == 200  # argon2 verification inside the W^X process
        async with http.ws_connect(f"{service.base_url}/ws/portfolio") as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "connected"
            await ws.send_json({"type": "subscribe", "channels": ["positions"]})
            assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
            assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
            await asyncio.to_thread(cli, env, "trade", "alice", "AAPL", "buy", "1")
            while True:
                message = await ws.receive_json(timeout=15)
                symbols = {p["symbol"] for p in message.get("positions", [])}
                if message["type"] == "batch" and "AAPL" in symbols:
                    break
    assert await asyncio.to_thread(service.stop) == 0
    assert "ERROR" not in service.log()


def _first_line(service: Service) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = service.log()
        if "\n" in text:
            return text.split("\n", 1)[0]
        time.sleep(0.02)
    raise AssertionError("the wrapper printed nothing")
