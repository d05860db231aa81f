"""The load client: many WebSocket connections in one process, cheap enough to share 2 cores.

It speaks RFC 6455 itself on ``asyncio.Protocol`` (no per-connection reader task, no library
framing overhead): an HTTP/1.1 upgrade with the session cookie, unmasked server frames parsed
straight out of ``data_received``, masked client frames, pongs for server pings. A protocol
adapter turns text frames into measurements:

* ``portfolio`` — ``/ws/portfolio``: waits for ``connected``, subscribes to every channel,
  counts ``snapshot``/``batch`` messages and, per batch, the delay from each carried entry's
  ``benchTs`` (its creation time) to the frame's receipt;
* ``bare`` — the bare aiohttp floor: one hello frame, then nothing;
* ``sio`` — Engine.IO v4 / Socket.IO v5 over the websocket transport: open packet ``0{..}`` →
  ``40`` → ``40{sid}``; ``2`` → ``3``; ``42["type",{...}]`` is one event.

The orchestrator starts it with a JSON config file and drives it with JSON lines on stdin
(``reset``, ``report``, ``close``); it answers with JSON lines on stdout. Everything is bounded:
the process exits after ``max_seconds`` whatever happens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import orjson

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
SUBSCRIBE = orjson.dumps({"type": "subscribe", "channels": ["positions", "orders", "account"]})


def frame(opcode: int, data: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.3)."""
    n = len(data)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if n:
        key = (mask * (n // 4 + 1))[:n]
        data = (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + data


class Recorder:
    """Counters and latency samples shared by every connection of the process."""

    def __init__(self) -> None:
        self.reset()
        self.accept_s = array("d")
        self.failures: dict[str, int] = {}
        self.open = 0
        self.ready = 0
        self.dropped = 0
        self.close_codes: dict[str, int] = {}

    def reset(self) -> None:
        self.messages = 0
        self.snapshots = 0
        self.events = 0
        self.entries = 0
        self.bytes = 0
        self.errors = 0
        self.batch_lat = array("d")
        self.entry_lat = array("d")

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


class WsConn(asyncio.Protocol):
    """One client WebSocket; subclasses interpret text frames."""

    def __init__(self, rec: Recorder, request: bytes, started: float) -> None:
        self.rec = rec
        self.request = request
        self.started = started
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buf = b""
        self.fragments: list[bytes] = []
        self.accepted: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.closing = False

    # Lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.accepted.done():
            self.accepted.set_result("closed before accept")
        elif not self.closing:
            self.rec.dropped += 1
        if self.upgraded and self.rec.open:
            self.rec.open -= 1

    def settle(self, outcome: str) -> None:
        if not self.accepted.done():
            self.accepted.set_result(outcome)

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def send(self, opcode: int, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(opcode, data))

    # Input

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.rec.bytes += len(data)
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            status = buf[: buf.find(b"\r\n")].split(b" ", 2)
            if len(status) < 2 or status[1] != b"101":
                code = status[1].decode() if len(status) > 1 else "?"
                self.settle(f"http {code}")
                self.abort()
                return
            self.upgraded = True
            self.rec.open += 1
            buf = buf[end + 4 :]
            self.on_open()
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if b1 & 0x80:  # servers never mask; tolerate it anyway
                head += 4
            end = pos + head + length
            if end > n:
                break
            payload = buf[pos + head : end]
            if b1 & 0x80:
                key = buf[end - length - 4 : end - length]
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            pos = end
            self.on_frame(b0 & 0x0F, bool(b0 & 0x80), payload, now)
        self.buf = buf[pos:] if pos < n else b""

    def on_frame(self, opcode: int, fin: bool, payload: bytes, now: float) -> None:
        if opcode in (OP_TEXT, OP_CONT):
            if not fin:
                self.fragments.append(payload)
                return
            if self.fragments:
                payload = b"".join([*self.fragments, payload])
                self.fragments.clear()
            try:
                self.on_text(payload, now)
            except (ValueError, KeyError, TypeError, IndexError):
                self.rec.errors += 1
        elif opcode == OP_PING:
            self.send(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            code = str(int.from_bytes(payload[:2], "big")) if len(payload) >= 2 else "none"
            self.rec.close_codes[code] = self.rec.close_codes.get(code, 0) + 1
            self.settle(f"close {code}")
            if not self.closing:
                self.closing = code == "1001"  # shutdown: expected
                self.send(OP_CLOSE, payload[:2])
                if self.transport is not None:
                    self.transport.close()

    # Adapter hooks

    def on_open(self) -> None:
        pass

    def on_text(self, payload: bytes, now: float) -> None:
        raise NotImplementedError

    def accept(self, now: float) -> None:
        if not self.accepted.done():
            self.rec.accept_s.append(now - self.started)

    def mark_ready(self) -> None:
        if not self.accepted.done():
            self.rec.ready += 1
            self.accepted.set_result("ok")


class PortfolioConn(WsConn):
    def on_text(self, payload: bytes, now: float) -> None:
        message = orjson.loads(payload)
        kind = message.get("type")
        rec = self.rec
        if kind == "batch":
            rec.messages += 1
            rec.events += message["eventCount"]
            oldest = 0.0
            entries = rec.entry_lat
            carried = list(message.get("positions") or ())
            carried.extend(message.get("orders") or ())
            account = message.get("account")
            if account:
                carried.append(account)
            for entry in carried:
                ts = entry.get("benchTs")
                if ts is not None:
                    delay = now - ts
                    entries.append(delay)
                    oldest = max(oldest, delay)
            rec.entries += len(carried)
            if carried:
                rec.batch_lat.append(oldest)
        elif kind == "snapshot":
            rec.snapshots += 1
            self.mark_ready()
        elif kind == "connected":
            self.accept(now)
            self.send(OP_TEXT, SUBSCRIBE)
        elif kind == "error":
            rec.errors += 1


class BareConn(WsConn):
    def on_text(self, payload: bytes, now: float) -> None:
        if not self.accepted.done():
            self.accept(now)
            self.send(OP_TEXT, SUBSCRIBE)
            self.mark_ready()
        else:
            self.rec.messages += 1


class SioConn(WsConn):
    def on_text(self, payload: bytes, now: float) -> None:
        rec = self.rec
        if payload.startswith(b"42"):
            event = orjson.loads(payload[2:])[1]
            rec.messages += 1
            rec.events += 1
            rec.entries += 1
            delay = now - event["benchTs"]
            rec.batch_lat.append(delay)
            rec.entry_lat.append(delay)
        elif payload == b"2":
            self.send(OP_TEXT, b"3")
        elif payload.startswith(b"40"):
            self.accept(now)
            self.mark_ready()
        elif payload.startswith(b"0"):
            self.send(OP_TEXT, b"40")
        elif payload.startswith(b"44"):
            self.settle("sio connect_error")
            rec.errors += 1


ADAPTERS: dict[str, type[WsConn]] = {"portfolio": PortfolioConn, "bare": BareConn, "sio": SioConn}


def upgrade_request(host: str, port: int, path: str, cookie: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Origin: http://{host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "User-Agent: portfolio-stream-bench",
    ]
    if cookie:
        lines.append(f"Cookie: session={cookie}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class LoadClient:
    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = config
        self.rec = Recorder()
        self.conns: list[WsConn] = []
        self.stop_opening = False

    def emit(self, **fields: Any) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    async def open_one(self, user_id: str, token: str) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        protocol = cfg["protocol"]
        if protocol == "sio":
            path, cookie = f"/socket.io/?EIO=4&transport=websocket&user={user_id}", None
        else:
            path, cookie = cfg.get("path", "/ws/portfolio"), token
        request = upgrade_request(cfg["host"], cfg["port"], path, cookie)
        started = time.time()
        conn = ADAPTERS[protocol](self.rec, request, started)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn, cfg["host"], cfg["port"], local_addr=(cfg["local_ip"], 0)
                ),
                timeout=cfg["connect_timeout_s"],
            )
        except (OSError, TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            self.rec.fail(f"connect: {reason}")
            if cfg.get("stop_on_failure"):
                self.stop_opening = True
            return
        self.conns.append(conn)
        try:
            outcome = await asyncio.wait_for(
                asyncio.shield(conn.accepted), timeout=cfg["connect_timeout_s"]
            )
        except TimeoutError:
            outcome = "timeout waiting for welcome"
        if outcome != "ok":
            self.rec.fail(outcome)
            conn.abort()
            if cfg.get("stop_on_failure"):
                self.stop_opening = True

    async def open_all(self) -> None:
        """Open every configured connection, ``concurrency`` handshakes at a time."""
        pending = iter(self.cfg["conns"])

        async def worker() -> None:
            for user_id, token in pending:
                if self.stop_opening:
                    return
                await self.open_one(user_id, token)

        async def progress() -> None:
            while True:
                await asyncio.sleep(0.5)
                self.emit(
                    ev="progress",
                    open=self.rec.open,
                    ready=self.rec.ready,
                    failed=sum(self.rec.failures.values()),
                )

        reporter = asyncio.create_task(progress())
        try:
            await asyncio.gather(*(worker() for _ in range(self.cfg["concurrency"])))
        finally:
            reporter.cancel()

    def report(self, latency_file: Path | None) -> dict[str, Any]:
        rec = self.rec
        if latency_file is not None:
            with latency_file.open("wb") as out:
                rec.batch_lat.tofile(out)
            with latency_file.with_suffix(".entries").open("wb") as out:
                rec.entry_lat.tofile(out)
        return {
            "ev": "report",
            "open": rec.open,
            "ready": rec.ready,
            "messages": rec.messages,
            "snapshots": rec.snapshots,
            "events": rec.events,
            "entries": rec.entries,
            "bytes": rec.bytes,
            "errors": rec.errors,
            "dropped": rec.dropped,
            "failures": rec.failures,
            "closeCodes": rec.close_codes,
            "batchSamples": len(rec.batch_lat),
            "cpuS": time.process_time(),
        }

    async def commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            command = json.loads(line)
            cmd = command["cmd"]
            if cmd == "reset":
                self.rec.reset()
                self.emit(ev="reset", cpuS=time.process_time())
            elif cmd == "report":
                path = command.get("latency_file")
                self.emit(**self.report(Path(path) if path else None))
            elif cmd == "close":
                break
        for conn in self.conns:
            conn.abort()
        await asyncio.sleep(0.05)

    async def run(self) -> None:
        started = time.monotonic()
        await self.open_all()
        rec = self.rec
        self.emit(
            ev="ready",
            open=rec.open,
            ready=rec.ready,
            failures=rec.failures,
            acceptS=list(rec.accept_s),
            rampS=time.monotonic() - started,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.commands(), timeout=self.cfg["max_seconds"])
        for conn in self.conns:
            conn.abort()


def main() -> int:
    config = json.loads(Path(sys.argv[1]).read_text())
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(LoadClient(config).run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
