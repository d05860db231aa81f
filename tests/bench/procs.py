"""Processes the orchestrator starts: a server under test and groups of load clients.

The server's CPU time comes from /proc/<pid>/stat (utime + stime) and its memory from
/proc/<pid>/status (VmRSS), sampled from outside so the measurement costs the server nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from array import array
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
_ip_counter = 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def next_source_ips(count: int) -> list[str]:
    """Fresh loopback source addresses, so no run meets a previous run's TIME_WAIT ports."""
    global _ip_counter
    _ip_counter += 1
    block = 10 + _ip_counter % 200
    return [f"127.{block}.{1 + i // 250}.{1 + i % 250}" for i in range(count)]


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONHASHSEED"] = "0"
    env.update(extra)
    return env


def machine_busy_s() -> float:
    """CPU seconds spent by every process on the machine (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_runqueue_wait_s(pid: int) -> float:
    """Time the process's main thread was runnable but waiting for a CPU (/proc/PID/schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _take(path: Path) -> bytes:
    """Read a load client's sample file and remove it."""
    data = path.read_bytes()
    path.unlink()
    return data


class ServerProcess:
    """A server module run as ``python -m MODULE`` with an environment, in ``workdir``."""

    def __init__(
        self, module: str, env: dict[str, str], workdir: Path, name: str, with_control: bool = True
    ) -> None:
        self.module = module
        self.workdir = workdir
        self.name = name
        self.port = free_port()
        self.control_file = workdir / f"{name}.control"
        self.env = child_env(
            {
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "BENCH_CONTROL_FILE": str(self.control_file),
                **env,
            }
        )
        self.with_control = with_control
        self.proc: asyncio.subprocess.Process | None = None
        self.control_port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout_s: float = 30.0) -> None:
        self.control_file.unlink(missing_ok=True)
        # stdout (where the service also logs, for journald) is discarded: the log lines are
        # still rendered and written, and LOG_FILE keeps them; stderr keeps any crash.
        out = (self.workdir / f"{self.name}.stderr.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            env=self.env,
            cwd=self.workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=out,
        )
        out.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see "
                    f"{self.workdir / (self.name + '.stderr.log')}"
                )
            ready = not self.with_control or self.control_file.exists()
            if ready and await self._listening():
                if self.with_control:
                    self.control_port = int(self.control_file.read_text())
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start listening within {timeout_s}s")

    async def _listening(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def control(self, timeout_s: float = 10.0, **command: Any) -> dict[str, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.control_port)
        try:
            writer.write(json.dumps(command).encode() + b"\n")
            await writer.drain()
            reply: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), timeout_s))
            return reply
        finally:
            writer.close()

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def runqueue_wait_s(self) -> float:
        return proc_runqueue_wait_s(self.pid)

    def fds(self) -> int:
        return proc_fds(self.pid)

    async def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()


class ClientGroup:
    """Load-client processes sharing the connections of one scenario."""

    def __init__(
        self,
        protocol: str,
        server: ServerProcess,
        conns: list[tuple[str, str]],
        procs: int,
        workdir: Path,
        *,
        concurrency: int = 64,
        stop_on_failure: bool = False,
        max_seconds: float = 300.0,
        connect_timeout_s: float = 30.0,
    ) -> None:
        self.protocol = protocol
        self.server = server
        self.workdir = workdir
        procs = max(1, min(procs, len(conns)))
        self.shares = [conns[i::procs] for i in range(procs)]
        self.ips = next_source_ips(procs)
        self.options = {
            "concurrency": concurrency,
            "stop_on_failure": stop_on_failure,
            "max_seconds": max_seconds,
            "connect_timeout_s": connect_timeout_s,
        }
        self.procs: list[asyncio.subprocess.Process] = []
        self.lines: list[asyncio.Queue[dict[str, Any]]] = []
        self._readers: list[asyncio.Task[None]] = []
        self.progress: list[dict[str, Any]] = []

    async def start(self) -> None:
        for i, share in enumerate(self.shares):
            config = {
                "host": "127.0.0.1",
                "port": self.server.port,
                "protocol": self.protocol,
                "local_ip": self.ips[i],
                "conns": share,
                **self.options,
            }
            # Named after the server: groups of several servers run side by side (cluster).
            path = self.workdir / f"client-{self.server.name}-{self.protocol}-{i}.json"
            path.write_text(json.dumps(config))
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.bench.loadclient",
                str(path),
                env=child_env({}),
                cwd=self.workdir,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=64 * 1024 * 1024,
            )
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            self.procs.append(proc)
            self.lines.append(queue)
            self.progress.append({})
            self._readers.append(asyncio.create_task(self._read(i, proc, queue)))

    async def _read(
        self, index: int, proc: asyncio.subprocess.Process, queue: asyncio.Queue[dict[str, Any]]
    ) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            message = json.loads(line)
            if message.get("ev") == "progress":
                self.progress[index] = message
            else:
                await queue.put(message)
        await queue.put({"ev": "exit"})

    async def _expect(self, index: int, event: str, timeout_s: float) -> dict[str, Any]:
        message = await asyncio.wait_for(self.lines[index].get(), timeout_s)
        if message.get("ev") != event:
            raise RuntimeError(f"load client {index}: expected {event}, got {message}")
        return message

    async def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        replies = await asyncio.gather(
            *(self._expect(i, "ready", timeout_s) for i in range(len(self.procs)))
        )
        failures: dict[str, int] = {}
        accept: list[float] = []
        for reply in replies:
            accept.extend(reply["acceptS"])
            for reason, count in reply["failures"].items():
                failures[reason] = failures.get(reason, 0) + count
        return {
            "open": sum(r["open"] for r in replies),
            "ready": sum(r["ready"] for r in replies),
            "failures": failures,
            "acceptS": accept,
            "rampS": max(r["rampS"] for r in replies),
        }

    async def _all(self, command: dict[str, Any], event: str) -> list[dict[str, Any]]:
        for i, proc in enumerate(self.procs):
            assert proc.stdin is not None
            cmd = dict(command)
            if "latency_file" in cmd:
                cmd["latency_file"] = f"{cmd['latency_file']}-{i}.bin"
            proc.stdin.write(json.dumps(cmd).encode() + b"\n")
            await proc.stdin.drain()
        return list(
            await asyncio.gather(*(self._expect(i, event, 60) for i in range(len(self.procs))))
        )

    async def reset(self) -> None:
        await self._all({"cmd": "reset"}, "reset")

    async def report(self) -> dict[str, Any]:
        base = self.workdir / f"lat-{self.server.name}-{self.protocol}"
        replies = await self._all({"cmd": "report", "latency_file": str(base)}, "report")
        total: dict[str, Any] = {}
        for key in (
            "open",
            "ready",
            "messages",
            "snapshots",
            "events",
            "entries",
            "bytes",
            "errors",
            "dropped",
            "cpuS",
        ):
            total[key] = sum(r[key] for r in replies)
        total["closeCodes"] = {}
        total["failures"] = {}
        for reply in replies:
            for field in ("closeCodes", "failures"):
                for k, v in reply[field].items():
                    total[field][k] = total[field].get(k, 0) + v
        batch, entries = array("d"), array("d")
        for i in range(len(replies)):
            for target, suffix in ((batch, ".bin"), (entries, ".entries")):
                target.frombytes(_take(Path(f"{base}-{i}{suffix}")))
        total["batchLatency"] = batch
        total["entryLatency"] = entries
        return total

    def cpu_s(self) -> float:
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(OSError, IndexError):
                total += proc_cpu_s(proc.pid)
        return total

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None and proc.stdin is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    proc.stdin.write(b'{"cmd": "close"}\n')
                    await proc.stdin.drain()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for reader in self._readers:
            reader.cancel()
