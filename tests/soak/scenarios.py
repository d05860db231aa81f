"""The fault suite's scenarios at scale: each starts its own server, holds its load for a bounded
time, and returns its figures and whether each promise held (docs/reliability.md names them).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.faults.clients import Closed, RawWebSocket, Watcher, dumps_message
from tests.faults.floods import MALFORMED, login_burst, send_malformed
from tests.faults.fuzzing import Frame, FuzzSession, live_frames
from tests.faults.harness import (
    PASSWORD,
    Live,
    OrderFlow,
    Sampler,
    Server,
    http_status,
    live_service,
    wait_until,
)
from tests.soak.crowd import LoadCrowd

CONNECTIONS_PER_TRADER = 20
WINDOW_MS = 500
MIB = 1024


@dataclass(frozen=True, slots=True)
class Scale:
    clients: int
    seconds: float
    workdir: Path
    kills: int = 100  # the failover scenario's SIGKILLs of an account's holder


@dataclass
class Result:
    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    promises: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0


def _traders(clients: int) -> list[str]:
    return [f"trader{i:04d}" for i in range(max(1, math.ceil(clients / CONNECTIONS_PER_TRADER)))]


def _crowd_conns(live: Live, traders: list[str], clients: int) -> list[tuple[str, str]]:
    sessions = [live.sessions[t] for t in traders]
    return [
        (sessions[i % len(sessions)].user_id, sessions[i % len(sessions)].token)
        for i in range(clients)
    ]


def _hold_positions(live: Live, traders: list[str]) -> None:
    for trader in traders:
        for symbol, qty in (("AAPL", 10), ("MSFT", 5)):
            live.broker.submit(trader, symbol, "buy", qty)


def _server_env(clients: int, **overrides: Any) -> dict[str, Any]:
    return {
        "BATCH_WINDOW_MS": WINDOW_MS,
        "MAX_TOTAL_CONNECTIONS": clients + 500,
        "MAX_CONNECTIONS_PER_USER": CONNECTIONS_PER_TRADER + 10,
        **overrides,
    }


def _tracebacks(server: Server) -> int:
    return server.log().count("Traceback (most recent call last)")


def scenario_load(scale: Scale) -> Result:
    """N clients held with fills and ticks flowing, the endpoint fuzzed and flooded, and a
    neighbour's batch gaps measured."""
    result = Result("load")
    traders = _traders(scale.clients)
    with live_service(
        scale.workdir,
        [*traders, "nina"],
        others=["fuzz", "flood"],
        **_server_env(scale.clients),
    ) as live:
        _hold_positions(live, [*traders, "nina"])
        with LoadCrowd(
            live.server.port, _crowd_conns(live, traders, scale.clients), scale.workdir
        ) as crowd:
            ready = crowd.ready
            with (
                Sampler(live.server, interval=0.5) as peaks,
                Watcher(live.server.base_url, live.sessions["nina"].cookie) as neighbour,
                OrderFlow(live.broker, traders, interval=0.05) as flow,
            ):
                fuzz = FuzzSession(live)
                failures: list[str] = []
                floods: Counter[str] = Counter()
                deadline = time.monotonic() + scale.seconds
                chunk = 0
                while time.monotonic() < deadline:
                    failures += _fuzz_chunk(fuzz, chunk)
                    floods[_flood_once(live)] += 1
                    chunk += 1
                fuzz.close()
                seen = neighbour.stop()
            report = crowd.report()
        result.figures = {
            "clientsRequested": scale.clients,
            "clientsConnected": ready["open"],
            "clientsHeldAtEnd": report["open"],
            "clientsDropped": report["dropped"],
            "messagesReceived": report["messages"],
            "ordersPlaced": flow.placed,
            "fuzzInputs": fuzz.tried,
            "fuzzFailures": failures[:5],
            "fuzzConnections": fuzz.connections,
            "floods": dict(floods),
            "neighbourBatches": len(seen.batches),
            "neighbourLargestGapS": round(seen.largest_gap_s(), 3),
            "batchWindowS": WINDOW_MS / 1000,
            "rssPeakMiB": round(peaks.rss_kib / MIB, 1),
            "sendQueueMaxBytes": peaks.send_queue_max,
            "sendQueueTotalBytes": peaks.send_queue_total,
            "tracebacks": _tracebacks(live.server),
        }
    result.promises = {
        "every client held": report["open"] == scale.clients and report["dropped"] == 0,
        "every fuzz input answered as documented": not failures,
        "every flooder closed 1008": set(floods) == {"1008 Rate limit exceeded"},
        "neighbour gap within 2 windows": seen.largest_gap_s() <= 2 * WINDOW_MS / 1000,
        "neighbour seq contiguous": seen.seq_contiguous() and seen.close_code is None,
        "no traceback": result.figures["tracebacks"] == 0,
    }
    return result


SOAK_FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: record the input and go on
    suppress_health_check=list(HealthCheck),
)


def _fuzz_chunk(fuzz: FuzzSession, chunk: int) -> list[str]:
    """One seeded batch of generated frames (reproducible by its chunk number)."""

    @seed(chunk)
    @SOAK_FUZZ
    @given(live_frames)
    def fuzz_one(frame: Frame) -> None:
        fuzz.exchange(frame)

    try:
        fuzz_one()
    except AssertionError as failure:
        fuzz.close()
        return [f"chunk {chunk}: {str(failure)[:300]}"]
    return []


def _flood_once(live: Live) -> str:
    ws = RawWebSocket(live.server.host, live.server.port, live.sessions["flood"].headers)
    try:
        ws.message()
        for _ in range(120):
            ws.send_text('{"type":"ping"}')
        while True:
            try:
                ws.message(timeout=5)
            except Closed as closed:
                return f"{closed.code} {closed.reason}"
            except TimeoutError:
                return "not closed"
    finally:
        ws.close()


def scenario_paused(scale: Scale) -> Result:
    """Paused readers (never read again) and paused talkers (keep pinging, never read)."""
    result = Result("paused")
    paused_count = max(10, scale.clients // 5)
    talkers_count = max(2, paused_count // 20)
    with live_service(
        scale.workdir,
        ["nina", "omar"],
        **_server_env(
            paused_count,
            BATCH_WINDOW_MS=100,
            HEARTBEAT_INTERVAL_MS=1000,
            HEARTBEAT_TIMEOUT_MS=3000,
            WS_SEND_BUFFER_BYTES=16384,
            MAX_CONNECTIONS_PER_USER=paused_count + talkers_count + 10,
        ),
    ) as live:
        _hold_positions(live, ["nina", "omar"])
        server = live.server
        baseline = server.rss_kib()
        with (
            Sampler(server, interval=0.2) as peaks,
            Watcher(server.base_url, live.sessions["omar"].cookie) as neighbour,
        ):
            sockets = [_paused(live) for _ in range(paused_count)]
            talkers = [_paused(live) for _ in range(talkers_count)]
            readers = {ws.sock.getsockname()[1] for ws in sockets}
            talking = {ws.sock.getsockname()[1] for ws in talkers}
            started = time.monotonic()
            bound = 3 + 2 + 2
            closed_at: float | None = None
            while time.monotonic() - started < bound + 5:
                for ws in talkers:
                    with _quiet():
                        ws.send_text('{"type":"ping"}')
                if closed_at is None and not readers & server.client_ports():
                    closed_at = time.monotonic() - started
                time.sleep(0.5)  # the talkers' cadence
            still_open = len(talking & server.client_ports())
            seen = neighbour.stop()
        for ws in [*sockets, *talkers]:
            ws.close()
        result.figures = {
            "pausedReaders": paused_count,
            "pausedTalkers": talkers_count,
            "allReadersClosedAfterS": None if closed_at is None else round(closed_at, 2),
            "closeBoundS": bound,
            "talkersStillOpen": still_open,
            "rssBaselineMiB": round(baseline / MIB, 1),
            "rssPeakMiB": round(peaks.rss_kib / MIB, 1),
            "rssGrowthPerPausedKiB": round((peaks.rss_kib - baseline) / paused_count, 1),
            "sendQueueMaxBytes": peaks.send_queue_max,
            "sendQueueTotalBytes": peaks.send_queue_total,
            "neighbourLargestGapS": round(seen.largest_gap_s(), 3),
            "batchWindowS": 0.1,
            "tracebacks": _tracebacks(server),
        }
    result.promises = {
        "paused readers closed within the bound": closed_at is not None and closed_at <= bound,
        "paused talkers closed too": still_open <= 0,
        "send queue per socket within WS_SEND_BUFFER_BYTES + one frame": peaks.send_queue_max
        <= 16384 + 65536,
        "neighbour gap within 2 windows": seen.largest_gap_s() <= 0.2 + 0.1,
        "no traceback": result.figures["tracebacks"] == 0,
    }
    return result


class _quiet:
    """Ignore a socket the server already closed."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, OSError)


def _paused(live: Live) -> RawWebSocket:
    ws = RawWebSocket(
        live.server.host, live.server.port, live.sessions["nina"].headers, receive_buffer=4096
    )
    ws.send_text(dumps_message({"type": "subscribe", "channels": ["positions", "account"]}))
    return ws


FaultStep = Callable[[Live, int], str | None]


def scenario_broker(scale: Scale) -> Result:
    """Orders filled in parts while the stream drops mid-fill, repeats, reorders and loses
    updates; what a browser-like client shows is counted against the broker."""
    result = Result("broker")
    orders = min(max(40, scale.clients // 5), 1000)
    injected: Counter[str] = Counter()
    with live_service(
        scale.workdir,
        ["nina"],
        broker_options={"partial_fills": True, "cash": Decimal(10**9)},
        BATCH_WINDOW_MS=100,
    ) as live:
        broker = live.broker
        started = time.monotonic()
        with Watcher(live.server.base_url, live.sessions["nina"].cookie) as watcher:
            for number in range(orders):
                broker.wait_listening("nina")
                fault = _fault_for(number)
                if fault in ("reorder", "gap"):
                    broker.hold("nina")
                broker.submit("nina", ("AAPL", "MSFT", "NVDA")[number % 3], "buy", 2 + number % 4)
                if fault == "drop":
                    broker.drop_streams()
                elif fault == "duplicate":
                    wait_until(lambda n=number: _executions(live) > n, 10, "a fill")
                    broker.resend_last_fill("nina")
                elif fault in ("reorder", "gap"):
                    wait_until(lambda: broker.held("nina") >= 3, 10, "held updates")
                    if fault == "reorder":
                        broker.release("nina", "reversed")
                    else:
                        broker.lose_held_and_drop("nina")
                if fault is not None:
                    injected[fault] += 1
            broker.wait_listening("nina")
            converged = _converged(watcher, live, within=30)
            seen = watcher.snapshot()
        took = time.monotonic() - started
        at_broker = [o for o in broker.orders("nina") if o["status"] == "filled"]
        shown = [o for o in seen.orders.values() if o["status"] == "filled"]
        result.figures = {
            "ordersPlaced": orders,
            "executionsAtBroker": _executions(live),
            "filledAtBroker": len(at_broker),
            "filledShown": len(shown),
            "positionsAtBroker": broker.positions("nina"),
            "positionsShown": {s: p["qty"] for s, p in seen.positions.items()},
            "faultsInjected": dict(injected),
            "seconds": round(took, 1),
            "tracebacks": _tracebacks(live.server),
        }
    result.promises = {
        "every fill shown, none twice (positions equal)": converged,
        "filled orders shown equal filled at broker": len(shown) == len(at_broker) == orders,
        "no traceback": result.figures["tracebacks"] == 0,
    }
    return result


def _fault_for(number: int) -> str | None:
    for every, fault in ((13, "gap"), (11, "reorder"), (7, "duplicate"), (5, "drop")):
        if number % every == every - 1:
            return fault
    return None


def _executions(live: Live) -> int:
    return len(live.broker.fills("nina"))


def _converged(watcher: Watcher, live: Live, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        seen = watcher.snapshot()
        broker_positions = {s: Decimal(q) for s, q in live.broker.positions("nina").items()}
        shown = {s: Decimal(p["qty"]) for s, p in seen.positions.items()}
        filled = {o["id"] for o in live.broker.orders("nina") if o["status"] == "filled"}
        shown_filled = {i for i, o in seen.orders.items() if o["status"] == "filled"}
        if shown == broker_positions and filled <= shown_filled:
            return True
        time.sleep(0.2)
    return False


def scenario_signals(scale: Scale) -> Result:
    """SIGTERM with N clients and events flowing; then SIGKILL and a restart on the same store."""
    result = Result("signals")
    traders = _traders(scale.clients)
    with live_service(
        scale.workdir,
        traders,
        SHUTDOWN_TIMEOUT_S=10,
        **_server_env(scale.clients),
    ) as live:
        _hold_positions(live, traders[:50])
        conns = _crowd_conns(live, traders, scale.clients)
        with (
            LoadCrowd(live.server.port, conns, scale.workdir) as crowd,
            OrderFlow(live.broker, traders),
        ):
            time.sleep(min(5.0, scale.seconds / 4))  # events flow to everyone for a while
            live.server.signal(signal.SIGTERM)
            code, took = live.server.wait_exit(timeout=30)
            time.sleep(1)  # the clients' reads of the close frames
            report = crowd.report()
        term_tracebacks = _tracebacks(live.server)
        restarted = Server(live.env, live.server.log_path.with_name("after-term.log"))
        try:
            restarted.wait_ready()
            with (
                LoadCrowd(restarted.port, conns, scale.workdir),
                OrderFlow(live.broker, traders),
            ):
                time.sleep(min(5.0, scale.seconds / 4))  # load on the server that gets killed
                restarted.signal(signal.SIGKILL)
                restarted.wait_exit(timeout=10)
        finally:
            restarted.kill()
        database = live.env["DATABASE_URL"].removeprefix("sqlite:///")
        with sqlite3.connect(database) as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        again = Server(live.env, live.server.log_path.with_name("after-kill.log"))
        try:
            again.wait_ready()
            valid = sum(
                http_status(f"{again.base_url}/api/auth/me", headers=live.sessions[t].headers)
                == 200
                for t in traders
            )
            with LoadCrowd(again.port, conns, scale.workdir) as crowd3:
                reconnected = crowd3.ready["open"]
        finally:
            again.kill()
        closes = report["closeCodes"]
        result.figures = {
            "clients": scale.clients,
            "sigtermExitCode": code,
            "sigtermExitS": round(took, 2),
            "shutdownTimeoutS": 10,
            "closeCodes": closes,
            "sigkillStoreIntegrity": integrity,
            "sessionsValidAfterKill": f"{valid}/{len(traders)}",
            "clientsReconnectedAfterKill": reconnected,
            "tracebacks": term_tracebacks,
        }
    result.promises = {
        "SIGTERM: every client 1001": closes == {"1001": scale.clients},
        "SIGTERM: exit 0 within SHUTDOWN_TIMEOUT_S": code == 0 and took <= 10,
        "SIGKILL: store intact": integrity == "ok",
        "SIGKILL: sessions valid after restart": valid == len(traders),
        "SIGKILL: every client reconnects": reconnected == scale.clients,
    }
    return result


def scenario_floods(scale: Scale) -> Result:
    """Login guesses, malformed HTTP and protocol-ping floods, with another user's latency."""
    result = Result("floods")
    guesses = 40
    malformed = max(300, scale.clients)
    with live_service(
        scale.workdir,
        ["nina"],
        others=["guessed", "bystander", "flood"],
        LOGIN_MAX_FAILURES=5,
        LOGIN_MAX_FAILURES_PER_ADDRESS=10,
    ) as live:
        server = live.server
        one_user = login_burst(
            live,
            [("guessed", f"g{i}") for i in range(guesses)] + [("guessed", PASSWORD)],
            "127.0.2.1",
        )
        one_address = login_burst(live, [(f"nobody{i}", "x") for i in range(guesses)], "127.0.2.2")
        mark = server.log_mark()
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(
                pool.map(
                    lambda i: send_malformed(
                        server.host, server.port, MALFORMED[i % len(MALFORMED)]
                    ),
                    range(malformed),
                )
            )
        logged = len(server.log_since(mark).splitlines())
        baseline = _healthz_latencies(server, probes=20)
        latencies = _healthz_during_ping_flood(live, seconds=min(5.0, scale.seconds / 4))
        result.figures = {
            "loginGuessesOneUser": guesses + 1,
            "verifiedOneUser": one_user[401] + one_user[200],
            "throttledOneUser": one_user[429],
            "busyOneUser": one_user[503],
            "loginGuessesOneAddress": guesses,
            "verifiedOneAddress": one_address[401],
            "throttledOneAddress": one_address[429],
            "busyOneAddress": one_address[503],
            "malformedRequests": malformed,
            "malformedAnswered400": sum(a.split(b" ", 2)[1:2] == [b"400"] for a in answers),
            "logLinesForMalformed": logged,
            "healthzBaselineP50Ms": round(statistics.median(baseline) * 1000, 1),
            "healthzDuringPingFloodP50Ms": round(statistics.median(latencies) * 1000, 1),
            "healthzDuringPingFloodMaxMs": round(max(latencies) * 1000, 1),
            "tracebacks": _tracebacks(server),
        }
    result.promises = {
        "login throttle holds under concurrency (one user)": result.figures["verifiedOneUser"] <= 5,
        "login throttle holds under concurrency (one address)": result.figures["verifiedOneAddress"]
        <= 10,
        "malformed HTTP: log bounded": logged <= 30,
        "/healthz under a ping flood: max < 500 ms": max(latencies) < 0.5,
        "no traceback": result.figures["tracebacks"] == 0,
    }
    return result


def _healthz_latencies(server: Server, probes: int) -> list[float]:
    latencies = []
    for _ in range(probes):
        started = time.monotonic()
        http_status(f"{server.base_url}/healthz", timeout=5)
        latencies.append(time.monotonic() - started)
    return latencies


def _healthz_during_ping_flood(live: Live, seconds: float) -> list[float]:
    """/healthz latencies while three flooder processes send protocol pings."""
    repo = Path(__file__).resolve().parents[2]
    argv = [live.server.host, str(live.server.port), live.sessions["flood"].cookie, str(seconds)]
    flooders = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.soak.ping_flooder", *argv],
            cwd=repo,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    latencies: list[float] = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            http_status(f"{live.server.base_url}/healthz", timeout=5)
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)  # a probe every 50 ms: the cadence is the measurement
    finally:
        for flooder in flooders:
            flooder.communicate(timeout=seconds + 30)
    return latencies


def scenario_descriptors(scale: Scale) -> Result:
    """Idle TCP connections beyond the open-file limit; /healthz must still answer."""
    result = Result("descriptors")
    nofile, idle_count = 512, max(1000, scale.clients)
    with live_service(
        scale.workdir,
        ["nina"],
        nofile=nofile,
        MAX_TOTAL_CONNECTIONS=200,
        MAX_CONNECTIONS_PER_USER=5,
    ) as live:
        server = live.server
        idle: list[socket.socket] = []
        try:
            for _ in range(idle_count):
                sock = socket.socket()
                sock.settimeout(2)
                with _quiet():
                    sock.connect((server.host, server.port))
                idle.append(sock)
            started = time.monotonic()
            status = http_status(f"{server.base_url}/healthz", timeout=5)
            took = time.monotonic() - started
            fds = server.open_files()
        finally:
            for sock in idle:
                sock.close()
        result.figures = {
            "openFileLimit": nofile,
            "idleConnections": idle_count,
            "healthzStatus": status,
            "healthzS": round(took, 3),
            "serverOpenFiles": fds,
            "tooManyOpenFilesLogged": "Too many open files" in server.log(),
        }
    result.promises = {
        "/healthz answers with descriptors exhausted": status == 200 and took < 2,
    }
    return result


def scenario_failover(scale: Scale) -> Result:
    """The failover kill loop of tests/nodes/test_failover.py, ``scale.kills`` times: three
    real nodes, real Redis and PostgreSQL, the simulated broker filling orders on every account
    all along; the holder of an account SIGKILLed and a fresh node started, over and over. Its
    figures: each takeover's time (kill to the new holder's authenticated stream), the fills
    made and checked, the longest overlap of two streams of one account."""
    result = Result("failover")
    figures = scale.workdir / "failover.json"
    test = "tests/nodes/test_failover.py::test_killing_the_holder_again_and_again_loses_no_fill"
    env = {
        **os.environ,
        "FAILOVER_KILLS": str(scale.kills),
        "FAILOVER_RESULTS": str(figures),
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
         str(scale.workdir / "pytest"), test],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if figures.exists():
        result.figures = json.loads(figures.read_text())
    else:
        result.figures = {"output": run.stdout[-2000:]}
    takeovers = result.figures.get("takeovers", {})
    result.promises = {
        f"{scale.kills} kills: another node consumed within TTL + 5 s, every browser shows the "
        "broker's positions, no overlap past the handshake": run.returncode == 0,
        "every kill measured": takeovers.get("count", 0) >= scale.kills,
    }
    return result


SCENARIOS: dict[str, Callable[[Scale], Result]] = {
    "load": scenario_load,
    "paused": scenario_paused,
    "broker": scenario_broker,
    "signals": scenario_signals,
    "floods": scenario_floods,
    "descriptors": scenario_descriptors,
    "failover": scenario_failover,
}


def run(name: str, scale: Scale) -> Result:
    started = time.monotonic()
    try:
        result = SCENARIOS[name](scale)
    except Exception as exc:  # one scenario's crash is its result; the others still run
        result = Result(name, {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}, {"ran": False})
    result.seconds = round(time.monotonic() - started, 1)
    return result


__all__ = ["SCENARIOS", "Result", "Scale", "run"]
