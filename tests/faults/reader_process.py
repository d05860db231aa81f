"""A `/ws/portfolio` reader in its own process, so a test can SIGSTOP and SIGCONT it.

``python -m tests.faults.reader_process HOST PORT COOKIE RCVBUF`` connects with a small receive
buffer (so a stopped reader backs the server's socket up quickly), subscribes to every channel
and prints one line per message, ``<monotonic time> <type> <seq>``, until the connection ends;
then ``closed <code>``. It exits by itself after ``MAX_SECONDS``.
"""

from __future__ import annotations

import sys
import time

from tests.faults.clients import ALL_CHANNELS, Closed, RawWebSocket, dumps_message

MAX_SECONDS = 300


def main(host: str, port: str, cookie: str, rcvbuf: str) -> int:
    ws = RawWebSocket(host, int(port), {"Cookie": cookie}, receive_buffer=int(rcvbuf))
    ws.send_text(dumps_message({"type": "subscribe", "channels": ALL_CHANNELS}))
    deadline = time.monotonic() + MAX_SECONDS
    try:
        while time.monotonic() < deadline:
            try:
                message = ws.message(timeout=max(deadline - time.monotonic(), 0.1))
            except TimeoutError:
                continue
            print(f"{time.monotonic():.3f} {message['type']} {message.get('seq', '-')}", flush=True)
    except Closed as closed:
        print(f"closed {closed.code}", flush=True)
    finally:
        ws.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:5]))
