"""RFC 6455 framing: handshake key, masking, fragmentation, control frames, violations."""

from __future__ import annotations

import os
import random
import struct

import pytest

from pycrio.streaming import websocket as ws


def ref_client_frame(
    opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x01\x02\x03\x04"
) -> bytes:
    """Independent masked-frame encoder (byte loop on purpose: it is the reference)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_parser() -> ws.FrameParser:
    return ws.FrameParser(expect_masked=True)


def test_accept_key_rfc_example() -> None:
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert ws.valid_client_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not ws.valid_client_key("not base64!")
    assert not ws.valid_client_key("c2hvcnQ=")  # decodes to fewer than 16 bytes
    assert ws.valid_client_key(ws.new_client_key())


def test_parse_protocols() -> None:
    assert ws.parse_protocols(["v5.channel.k8s.io, v4.channel.k8s.io", "channel.k8s.io"]) == [
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "channel.k8s.io",
    ]


@pytest.mark.parametrize("size", [0, 1, 3, 125, 126, 65535, 65536, 200_001])
def test_masked_frames_of_every_length_class(size: int) -> None:
    payload = os.urandom(size)
    events = server_parser().feed(ref_client_frame(ws.Opcode.BINARY, payload, mask=os.urandom(4)))
    assert events == [ws.Message(ws.Opcode.BINARY, payload)]


def test_mask_bytes_matches_reference() -> None:
    rnd = random.Random(7)
    for n in (1, 2, 5, 1000):
        data, mask = rnd.randbytes(n), rnd.randbytes(4)
        assert ws.mask_bytes(data, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        assert ws.mask_bytes(ws.mask_bytes(data, mask), mask) == data


def test_fragmented_message_with_interleaved_ping() -> None:
    raw = (
        ref_client_frame(ws.Opcode.TEXT, b"hel", fin=False)
        + ref_client_frame(ws.Opcode.PING, b"p")
        + ref_client_frame(ws.Opcode.CONTINUATION, b"lo", fin=False)
        + ref_client_frame(ws.Opcode.CONTINUATION, b"!", fin=True)
    )
    parser = server_parser()
    events = [e for i in range(0, len(raw), 3) for e in parser.feed(raw[i : i + 3])]
    assert events == [ws.PingEvent(b"p"), ws.Message(ws.Opcode.TEXT, b"hello!")]


def test_close_frames() -> None:
    parser = server_parser()
    assert parser.feed(ref_client_frame(ws.Opcode.CLOSE, ws.close_payload(1000, "bye"))) == [
        ws.CloseEvent(1000, "bye")
    ]
    assert server_parser().feed(ref_client_frame(ws.Opcode.CLOSE, b"")) == [ws.CloseEvent(1005, "")]
    with pytest.raises(ws.WebSocketError):
        server_parser().feed(ref_client_frame(ws.Opcode.CLOSE, b"\x03"))
    with pytest.raises(ws.WebSocketError):
        server_parser().feed(ref_client_frame(ws.Opcode.CLOSE, struct.pack(">H", 1005)))


def test_server_frames_are_unmasked_and_parse_on_the_client() -> None:
    raw = ws.serialize_frame(ws.Opcode.BINARY, b"\x01out") + ws.serialize_frame(ws.Opcode.PONG, b"x")
    assert raw[1] & 0x80 == 0
    assert ws.FrameParser(expect_masked=False).feed(raw) == [
        ws.Message(ws.Opcode.BINARY, b"\x01out"),
        ws.PongEvent(b"x"),
    ]
    masked = ws.serialize_frame(ws.Opcode.BINARY, b"data", masked=True)
    assert server_parser().feed(masked) == [ws.Message(ws.Opcode.BINARY, b"data")]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (ws.serialize_frame(ws.Opcode.BINARY, b"x"), ws.CloseCode.PROTOCOL_ERROR),  # unmasked from a client
        (ref_client_frame(ws.Opcode.CONTINUATION, b"x"), ws.CloseCode.PROTOCOL_ERROR),
        (ref_client_frame(ws.Opcode.PING, b"x", fin=False), ws.CloseCode.PROTOCOL_ERROR),
        (ref_client_frame(ws.Opcode.PING, b"x" * 126), ws.CloseCode.PROTOCOL_ERROR),
        (ref_client_frame(0x3, b"x"), ws.CloseCode.PROTOCOL_ERROR),
        (ref_client_frame(0xB, b"x"), ws.CloseCode.PROTOCOL_ERROR),
        (ref_client_frame(ws.Opcode.TEXT, b"\xff\xfe"), ws.CloseCode.INVALID_DATA),
        (bytes([0xC2]) + ref_client_frame(ws.Opcode.BINARY, b"x")[1:], ws.CloseCode.PROTOCOL_ERROR),  # RSV1
        (
            ref_client_frame(ws.Opcode.TEXT, b"a", fin=False) + ref_client_frame(ws.Opcode.BINARY, b"b"),
            ws.CloseCode.PROTOCOL_ERROR,
        ),
    ],
)
def test_protocol_violations(raw: bytes, code: int) -> None:
    with pytest.raises(ws.WebSocketError) as info:
        server_parser().feed(raw)
    assert info.value.code == code


def test_message_size_limit() -> None:
    parser = ws.FrameParser(expect_masked=True, max_message=100)
    with pytest.raises(ws.WebSocketError) as info:
        parser.feed(ref_client_frame(ws.Opcode.BINARY, b"x" * 101))
    assert info.value.code == ws.CloseCode.MESSAGE_TOO_BIG
    parser = ws.FrameParser(expect_masked=True, max_message=100)
    raw = ref_client_frame(ws.Opcode.BINARY, b"x" * 60, fin=False) + ref_client_frame(0, b"y" * 60)
    with pytest.raises(ws.WebSocketError):
        parser.feed(raw)


def test_control_frame_serialisation_limits() -> None:
    with pytest.raises(ValueError):
        ws.serialize_frame(ws.Opcode.PING, b"x" * 126)
    assert ws.frame_header(ws.Opcode.BINARY, 70000)[1] == 127
    assert len(ws.close_payload(1000, "é" * 200)) <= 125
