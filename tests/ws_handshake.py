"""The WebSocket opening handshake as the hand-made test clients send it (RFC 6455 §4.1)."""

from __future__ import annotations

import base64
import os


def upgrade_request(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    """A GET asking to upgrade ``path`` to a WebSocket, with a fresh key and ``headers``."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
