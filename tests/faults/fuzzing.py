"""Fuzzing the live endpoint: generated frames, the answer each must get, and the fuzzer's
connection (renewed before the rate limit and after every close). Shared by the fault suite and
``make soak``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.faults import strategies as s
from tests.faults.clients import OP_BINARY, OP_TEXT, Closed, RawWebSocket
from tests.faults.harness import Live
from tests.faults.targets import ClientMessage, CloseCode, ProtocolError, parse_client_message

MAX_FRAME = 64 * 1024
# Each exchange is the fuzz frame and a ping sentinel: 2 messages, well under 50 per 10 s.
EXCHANGES_PER_CONNECTION = 20


@dataclass(frozen=True, slots=True)
class Frame:
    opcode: int
    payload: bytes

    def __repr__(self) -> str:
        more = "..." if len(self.payload) > 120 else ""
        return f"Frame({self.opcode}, {self.payload[:120]!r}{more})"


def text(value: str | bytes) -> Frame:
    return Frame(OP_TEXT, value.encode() if isinstance(value, str) else value)


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


def _string_typed(text: str) -> bool:
    try:
        parse_client_message(text)
    except ProtocolError:
        return True
    except TypeError:
        return False  # a non-string type: the hostile-type test below covers it
    return True


live_frames = st.one_of(
    s.client_texts.filter(_string_typed).map(text),
    s.well_formed_client.map(s.dumps).map(text),
    st.binary(max_size=300).map(lambda data: Frame(OP_BINARY, data)),
    st.binary(min_size=1, max_size=100).filter(_not_utf8).map(text),
    st.integers(min_value=MAX_FRAME + 1, max_value=MAX_FRAME + 4096).map(
        lambda size: text('{"type":"ping","pad":"' + "x" * (size - 24) + '"}')
    ),
)


def expected_answer(frame: Frame) -> list[str] | int:
    """The messages (``type`` or ``error:code``) a frame must get, snapshots aside, or the
    close code that must end the connection."""
    if len(frame.payload) > MAX_FRAME:
        return CloseCode.MESSAGE_TOO_BIG
    if frame.opcode == OP_BINARY or _not_utf8(frame.payload):
        return ["error:unsupported_frame"]
    try:
        message: ClientMessage = parse_client_message(frame.payload.decode())
    except ProtocolError as error:
        return [f"error:{error.code}"]
    if message.type in ("ping", "resync"):
        return ["pong"] if message.type == "ping" else []
    return (["error:unknown_channel"] if message.unknown_channels else []) + ["subscribed"]


def label(message: dict[str, Any]) -> str:
    kind = str(message["type"])
    return f"error:{message['code']}" if kind == "error" else kind


def _close_code(ws: RawWebSocket) -> int | str | None:
    """The code the server closes with next, or what it answered instead."""
    try:
        answer = ws.message()
    except Closed as closed:
        return closed.code
    return f"answered {answer}"


class FuzzSession:
    """The fuzzer's connection, renewed before the rate limit and after every close."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.ws: RawWebSocket | None = None
        self.exchanges = 0
        self.tried = 0
        self.closes = 0
        self.connections = 0

    def _connection(self) -> RawWebSocket:
        if self.ws is None or self.exchanges >= EXCHANGES_PER_CONNECTION:
            self.close()
            server = self.live.server
            ws = RawWebSocket(server.host, server.port, self.live.sessions["fuzz"].headers)
            assert ws.status == 101, ws.head
            assert ws.message()["type"] == "connected"
            self.ws, self.exchanges = ws, 0
            self.connections += 1
        return self.ws

    def exchange(self, frame: Frame) -> None:
        ws = self._connection()
        self.exchanges += 1
        self.tried += 1
        expected = expected_answer(frame)
        ws.send(frame.opcode, frame.payload)
        if isinstance(expected, int):
            code = _close_code(ws)
            self.close()
            self.closes += 1
            assert code == expected, f"{frame!r}: {code} instead of closing {expected}"
            return
        ws.send_text('{"type":"ping"}')
        pongs = expected.count("pong") + 1
        got: list[str] = []
        try:
            while got.count("pong") < pongs:
                got.append(label(ws.message()))
        except (Closed, TimeoutError) as exc:
            self.close()
            raise AssertionError(f"{frame!r}: no answer, {exc!r} after {got}") from None
        answered = [kind for kind in got[:-1] if kind != "snapshot"]
        assert answered == expected, f"{frame!r}: got {got}, expected {expected}"

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
