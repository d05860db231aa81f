"""A protocol-ping flooder in its own process, so its CPU does not blur the latency measured
beside it: ``python -m tests.soak.ping_flooder HOST PORT COOKIE SECONDS`` sends ping frames as
fast as the socket takes them, never reading, then prints ``<pings sent> <close code|none>``."""

from __future__ import annotations

import sys

from tests.faults.floods import ping_flood


def main(host: str, port: str, cookie: str, seconds: str) -> int:
    sent, code = ping_flood(host, int(port), {"Cookie": cookie}, float(seconds))
    print(f"{sent} {code if code is not None else 'none'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:5]))
