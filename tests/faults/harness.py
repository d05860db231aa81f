"""A real `portfolio-stream serve` process under attack, and what is measured from outside it.

The server runs as its console script with an environment (as systemd would start it), optionally
under a lower open-file limit; its memory, descriptors and per-socket kernel send queues are read
from /proc, so measuring costs the server nothing. Users and sessions are made through the store
before it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from argon2 import PasswordHasher

from app.store import Store
from tests.faults.broker import FaultyBroker
from tests.kernel_sockets import established_sockets
from tests.ops.conftest import CLI, free_port, http_status, service_env, wait_until, workdir

__all__ = [
    "PASSWORD",
    "Live",
    "OrderFlow",
    "Peaks",
    "Sampler",
    "Server",
    "Session",
    "free_port",
    "http_status",
    "live_service",
    "make_sessions",
    "server_env",
    "wait_until",
]

PASSWORD = "correct horse battery"
STARTUP_TIMEOUT_S = 45.0
TRACEBACK = "Traceback (most recent call last)"


@dataclass(frozen=True, slots=True)
class Session:
    username: str
    user_id: str
    token: str

    @property
    def cookie(self) -> str:
        return f"session={self.token}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": self.cookie}


# Argon2 parameters for users made in bulk (hundreds of accounts): a hash carries its own
# parameters, so the server verifies these as they are; the service's own hashing is unchanged.
BULK_HASHER = functools.partial(PasswordHasher, time_cost=1, memory_cost=1024, parallelism=1)


async def make_sessions(
    env: dict[str, str],
    usernames: Iterable[str],
    *,
    admin: Iterable[str] = (),
    bulk: bool = False,
) -> dict[str, Session]:
    """Create each user (password ``PASSWORD``) and a session for it, in the server's store;
    ``bulk`` hashes their passwords cheaply."""
    admins = set(admin)
    with mock.patch("app.store.PasswordHasher", BULK_HASHER) if bulk else contextlib.nullcontext():
        store = Store(Path(env["DATABASE_URL"].removeprefix("sqlite:///")))
    await store.open()
    try:
        sessions: dict[str, Session] = {}
        for name in usernames:
            user = await store.ensure_user(name, PASSWORD, is_admin=name in admins)
            sessions[name] = Session(name, user.id, await store.create_session(user.id, 3600))
        return sessions
    finally:
        await store.close()


def server_env(tmp_path: Path, **overrides: Any) -> dict[str, str]:
    """The service's environment for a fault test: loopback, private store, short windows."""
    defaults: dict[str, Any] = {
        "BATCH_WINDOW_MS": 250,
        "SIM_TICK_INTERVAL_MS": 50,
        "LOG_LEVEL": "INFO",
        "MAX_TOTAL_CONNECTIONS": 2000,
        "MAX_CONNECTIONS_PER_USER": 50,
    }
    return service_env(tmp_path, **{**defaults, **overrides})


# The open-file limit is set by a tiny exec wrapper rather than ``preexec_fn``: the test process
# runs threads (the broker, watchers), and preexec_fn is not safe to use with threads.
LIMIT_WRAPPER = (
    "import os, resource, sys\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


class Server:
    """`portfolio-stream serve` with its output in a log file; never outlives its test."""

    def __init__(self, env: dict[str, str], log_path: Path, *, nofile: int | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.port = int(env["PORT"])
        self.host = "127.0.0.1"
        self.base_url = f"http://{self.host}:{self.port}"
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in kill()/stop()
        wrapper = [sys.executable, "-c", LIMIT_WRAPPER, str(nofile)] if nofile else []
        self.proc = subprocess.Popen(
            [*wrapper, CLI, "serve"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir(env),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_mark(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, mark: int) -> str:
        with self.log_path.open("rb") as file:
            file.seek(mark)
            return file.read().decode("utf-8", errors="replace")

    def assert_no_traceback(self, since: int = 0) -> None:
        text = self.log_since(since)
        assert TRACEBACK not in text, text[text.index(TRACEBACK) - 2000 :][:6000]

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            return http_status(f"{self.base_url}/readyz", timeout=2) == 200

        wait_until(ready, timeout, f"{self.base_url}/readyz", interval=0.1)

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Serving HTTP (``/healthz``), whether or not ``/readyz`` agrees."""

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            return http_status(f"{self.base_url}/healthz", timeout=2) == 200

        wait_until(healthy, timeout, f"{self.base_url}/healthz", interval=0.1)

    def wait_log(self, needle: str, timeout: float = 10, since: int = 0) -> None:
        wait_until(lambda: needle in self.log_since(since), timeout, f"log line {needle!r}")

    # ---- measured from outside ------------------------------------------------------------

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def send_queues(self) -> list[int]:
        """Bytes each of the server's established sockets on its port holds in the kernel's
        send queue (written by the server, not yet acknowledged by the client)."""
        return [s.send_queue for s in established_sockets() if s.local_port == self.port]

    def client_ports(self) -> set[int]:
        """The client-side ports of the server's established connections."""
        return {s.remote_port for s in established_sockets() if s.local_port == self.port}

    # ---- signals and the end ---------------------------------------------------------------

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> tuple[int, float]:
        """The exit code and how long the process took to exit from now."""
        started = time.monotonic()
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


class Peaks:
    """The largest server RSS, total and per-socket send queue seen while sampling."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.rss_kib = 0
        self.send_queue_total = 0
        self.send_queue_max = 0
        self.samples = 0

    def sample(self) -> None:
        queues = self.server.send_queues()
        self.rss_kib = max(self.rss_kib, self.server.rss_kib())
        self.send_queue_total = max(self.send_queue_total, sum(queues))
        self.send_queue_max = max(self.send_queue_max, max(queues, default=0))
        self.samples += 1

    def as_dict(self) -> dict[str, int]:
        return {
            "rssKib": self.rss_kib,
            "sendQueueTotalBytes": self.send_queue_total,
            "sendQueueMaxBytes": self.send_queue_max,
            "samples": self.samples,
        }


@dataclass
class Live:
    """A running server with its broker and the sessions of its users."""

    server: Server
    broker: FaultyBroker
    sessions: dict[str, Session]
    env: dict[str, str]

    @property
    def window_s(self) -> float:
        return int(self.env["BATCH_WINDOW_MS"]) / 1000


@contextlib.contextmanager
def live_service(
    tmp_path: Path,
    traders: list[str],
    *,
    others: Iterable[str] = (),
    admin: Iterable[str] = (),
    nofile: int | None = None,
    broker_options: dict[str, Any] | None = None,
    prepare: Callable[[FaultyBroker], None] | None = None,
    ready: bool = True,
    **overrides: Any,
) -> Iterator[Live]:
    """A server whose ``traders`` have broker accounts (and ``others`` only logins), ready
    (unless ``ready`` is False); ``prepare`` misconfigures the broker before the server starts."""
    with FaultyBroker(traders, **(broker_options or {})) as broker:
        if prepare is not None:
            prepare(broker)
        env = server_env(tmp_path, **{**broker.env(tmp_path), **overrides})
        names = [*traders, *others]
        sessions = asyncio.run(make_sessions(env, names, admin=admin, bulk=len(names) > 20))
        server = Server(env, tmp_path / "server.log", nofile=nofile)
        try:
            if ready:
                server.wait_ready()
            else:
                server.wait_healthy()
            yield Live(server, broker, sessions, env)
        finally:
            server.kill()


class Sampler:
    """Samples the server's RSS and send queues every ``interval`` seconds on a thread."""

    def __init__(self, server: Server, interval: float = 0.1) -> None:
        self.peaks = Peaks(server)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler")

    def __enter__(self) -> Peaks:
        self.peaks.sample()
        self._thread.start()
        return self.peaks

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(OSError):  # the server may be gone
                self.peaks.sample()


class OrderFlow:
    """Market orders at the broker, round robin over ``traders``, until stopped."""

    def __init__(
        self, broker: FaultyBroker, traders: list[str], interval: float = 0.02, symbol: str = "AAPL"
    ) -> None:
        self.broker = broker
        self.traders = traders
        self.placed = 0
        self._interval = interval
        self._symbol = symbol
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="order-flow")

    def __enter__(self) -> OrderFlow:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            trader = self.traders[self.placed % len(self.traders)]
            with contextlib.suppress(Exception):  # the broker stopping at the end of a run
                self.broker.submit(trader, self._symbol, "buy", 1)
                self.placed += 1
