"""systemd integration: sd_notify, the watchdog and socket activation, without libsystemd.

- ``Notifier`` speaks sd_notify(3): newline-separated ``KEY=value`` datagrams to the AF_UNIX socket
  named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace). Without the
  variable every call is a no-op, so the service runs the same outside systemd.
- ``watchdog_interval`` reads ``WATCHDOG_USEC``/``WATCHDOG_PID`` (sd_watchdog_enabled(3)) and
  ``supervise`` pings ``WATCHDOG=1`` at half that period *from the event loop*, so a blocked loop
  stops the pings and systemd restarts the service; it also refreshes ``STATUS=``.
- ``inherited_sockets`` implements the LISTEN_FDS protocol (sd_listen_fds(3)): descriptors from 3,
  only when ``LISTEN_PID`` is this process, environment unset afterwards.

Everything takes the environment as a mapping, so tests drive it with real sockets and no systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping, MutableMapping
from typing import Final

from config.logging import get_logger

log = get_logger()

SD_LISTEN_FDS_START: Final = 3
# How often STATUS= is refreshed (it is only sent when the text changed).
STATUS_INTERVAL_S: Final = 5.0


def notify_address(value: str | None) -> str | None:
    """The socket address for ``$NOTIFY_SOCKET``: a path, or ``@name`` → abstract ``\\0name``."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock: and other transports are not used for services on a host


class Notifier:
    """sd_notify(3) client; a no-op when the service was not started by systemd."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._failing = False  # log a failure once, not on every watchdog tick
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the event loop on the manager; a full queue drops the datagram.
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET")
        address = notify_address(raw)
        if raw and address is None:
            log.warning(
                "[systemd] Unsupported NOTIFY_SOCKET; notifications disabled", notifySocket=raw
            )
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True when it was handed to the manager."""
        if self._sock is None or self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._failing:
                log.warning("[systemd] sd_notify failed", error=str(exc), message=assignments[0])
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of WatchdogSec), or None when not enabled."""
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    try:
        usec = int(raw_usec)
        if raw_pid and int(raw_pid) != (os.getpid() if pid is None else pid):
            return None  # the watchdog belongs to another process (e.g. our parent)
    except ValueError:
        log.warning(
            "[systemd] Ignoring malformed watchdog environment",
            watchdogUsec=raw_usec,
            watchdogPid=raw_pid,
        )
        return None
    return usec / 2_000_000 if usec > 0 else None


async def supervise(
    notifier: Notifier,
    describe: Callable[[], str],
    *,
    watchdog_s: float | None,
    status_interval_s: float = STATUS_INTERVAL_S,
) -> None:
    """Until cancelled: ``WATCHDOG=1`` every ``watchdog_s``; ``STATUS=`` whenever it changed.

    It runs on the service's event loop on purpose: if a callback blocks the loop, the pings
    stop and systemd's WatchdogSec restarts the process. The status text is looked at on every
    tick (the watchdog's, or ``status_interval_s`` without one) and sent only when it changed.
    """
    if not notifier.enabled:
        return
    tick = min(watchdog_s, status_interval_s) if watchdog_s else status_interval_s
    last_status: str | None = None
    while True:
        fields: list[str] = ["WATCHDOG=1"] if watchdog_s else []
        text = describe()
        if text != last_status:
            last_status = text
            fields.append(f"STATUS={text}")
        if fields:
            notifier.notify(*fields)
        await asyncio.sleep(tick)


def listen_fds(
    environ: MutableMapping[str, str] | None = None, pid: int | None = None, *, unset: bool = True
) -> list[int]:
    """File descriptors passed by socket activation (sd_listen_fds(3)), usually ``[3]``."""
    env = os.environ if environ is None else environ
    try:
        raw_pid, raw_fds = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
        if not raw_pid or not raw_fds:
            return []
        try:
            for_pid, count = int(raw_pid), int(raw_fds)
        except ValueError:
            log.warning(
                "[systemd] Ignoring malformed LISTEN_PID/LISTEN_FDS",
                listenPid=raw_pid,
                listenFds=raw_fds,
            )
            return []
        if for_pid != (os.getpid() if pid is None else pid) or count <= 0:
            return []
        fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
        for fd in fds:
            # Ours alone: children we might spawn must not hold the listener open.
            os.set_inheritable(fd, False)
        return fds
    finally:
        if unset:
            for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                env.pop(name, None)


def inherited_sockets(
    environ: MutableMapping[str, str] | None = None, pid: int | None = None
) -> list[socket.socket]:
    """Listening stream sockets handed over by systemd (or a test standing in for it)."""
    sockets: list[socket.socket] = []
    for fd in listen_fds(environ, pid):
        sock = socket.socket(fileno=fd)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.type != socket.SOCK_STREAM or not listening:
            log.warning(
                "[systemd] Ignoring inherited descriptor that is not a listening stream socket",
                fd=fd,
            )
            with contextlib.suppress(OSError):
                sock.detach()
            continue
        sockets.append(sock)
    return sockets


def describe_address(sock: socket.socket) -> str:
    """``127.0.0.1:5000`` / ``[::]:5000`` / a unix path, for log lines."""
    name = sock.getsockname()
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(name)
