"""Server frames written straight to the transport, checked bit by bit against RFC 6455 §5.2."""

from __future__ import annotations

import pytest

from app.frames import PING_FRAME, close_frame, pong_frame, text_frame


def parse(frame: bytes) -> tuple[int, int, int, bool, bytes]:
    """(FIN, RSV1-3, opcode, masked, payload) of one complete frame, per the RFC's layout."""
    first, second = frame[0], frame[1]
    length, offset = second & 0x7F, 2
    if length == 126:
        length, offset = int.from_bytes(frame[2:4], "big"), 4
    elif length == 127:
        length, offset = int.from_bytes(frame[2:10], "big"), 10
        assert length >> 63 == 0  # the most significant bit MUST be 0
    payload = frame[offset:]
    assert len(payload) == length, "the frame holds exactly the announced payload"
    return first >> 7, (first >> 4) & 0b111, first & 0x0F, bool(second & 0x80), payload


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, 2),
        (1, 2),
        (125, 2),  # the largest length in the second byte
        (126, 4),  # 126 announces a 16-bit extended length
        (65535, 4),  # the largest 16-bit length
        (65536, 10),  # 127 announces a 64-bit extended length
    ],
)
def test_text_frames_use_the_shortest_length_encoding(size: int, header: int) -> None:
    payload = b"x" * size
    frame = text_frame(payload)
    assert len(frame) == header + size
    fin, rsv, opcode, masked, body = parse(frame)
    assert (fin, rsv, opcode, masked) == (1, 0, 0x1, False)  # final text frame, unmasked
    assert body == payload


def test_extended_lengths_are_big_endian() -> None:
    assert text_frame(b"y" * 126)[:4] == bytes((0x81, 126, 0x00, 0x7E))
    assert text_frame(b"y" * 65535)[:4] == bytes((0x81, 126, 0xFF, 0xFF))
    assert text_frame(b"y" * 65536)[:10] == bytes((0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0))


def test_the_ping_is_a_final_unmasked_control_frame_without_payload() -> None:
    assert parse(PING_FRAME) == (1, 0, 0x9, False, b"")
    assert len(PING_FRAME) == 2


def test_a_pong_echoes_the_pings_payload() -> None:
    assert parse(pong_frame(b"are you there")) == (1, 0, 0xA, False, b"are you there")


def test_a_close_frame_carries_the_code_then_the_reason_cut_to_a_control_frame() -> None:
    fin, rsv, opcode, masked, body = parse(close_frame(1008, "Rate limit exceeded"))
    assert (fin, rsv, opcode, masked) == (1, 0, 0x8, False)
    assert (int.from_bytes(body[:2], "big"), body[2:]) == (1008, b"Rate limit exceeded")
    assert len(parse(close_frame(1002, "x" * 500))[4]) == 125  # never over §5.5's limit
