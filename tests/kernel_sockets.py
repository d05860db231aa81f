"""The kernel's view of established TCP sockets on this machine, read from /proc/net/tcp{,6}.

Reading it costs the process under test nothing, so tests sample send queues from outside.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

ESTABLISHED = "01"


class TcpSocket(NamedTuple):
    local_port: int
    remote_port: int
    send_queue: int  # bytes written, not yet acknowledged by the peer


def established_sockets() -> list[TcpSocket]:
    """Every established TCP socket (IPv4 and IPv6)."""
    sockets: list[TcpSocket] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != ESTABLISHED:
                continue
            sockets.append(
                TcpSocket(
                    local_port=int(fields[1].rsplit(":", 1)[1], 16),
                    remote_port=int(fields[2].rsplit(":", 1)[1], 16),
                    send_queue=int(fields[4].split(":", 1)[0], 16),
                )
            )
    return sockets
