"""SPDY/3 framing: hand-built frames, an independent encoder/decoder, round-trips."""

from __future__ import annotations

import hashlib
import random
import struct
import zlib

import pytest

from pycrio.streaming import spdy
from pycrio.streaming.spdy_dictionary import HEADER_DICTIONARY

# ---------------------------------------------------------------- an independent encoder/decoder
# Written straight from the SPDY/3 draft with struct and zlib, sharing no code with the module.


def ref_header_block(pairs: list[tuple[str, str]]) -> bytes:
    out = struct.pack(">I", len(pairs))
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name.encode() + struct.pack(">I", len(value)) + value.encode()
    return out


class RefCompressor:
    def __init__(self) -> None:
        self.z = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, HEADER_DICTIONARY)

    def block(self, pairs: list[tuple[str, str]]) -> bytes:
        return self.z.compress(ref_header_block(pairs)) + self.z.flush(zlib.Z_SYNC_FLUSH)


def ref_control(ftype: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8003, ftype, (flags << 24) | len(payload)) + payload


def ref_syn_stream(comp: RefCompressor, sid: int, pairs: list[tuple[str, str]], flags: int = 0) -> bytes:
    return ref_control(1, flags, struct.pack(">IIBB", sid, 0, 3 << 5, 0) + comp.block(pairs))


def ref_data(sid: int, data: bytes, fin: bool = False) -> bytes:
    return struct.pack(">II", sid, ((1 if fin else 0) << 24) | len(data)) + data


def ref_parse(raw: bytes, decomp: zlib._Decompress) -> list[tuple[object, ...]]:
    """Decode frames into plain tuples (control: type, flags, fields; data: 'data', id, flags, bytes)."""
    out: list[tuple[object, ...]] = []
    pos = 0
    while pos < len(raw):
        w1, w2 = struct.unpack_from(">II", raw, pos)
        length, flags = w2 & 0xFFFFFF, w2 >> 24
        payload = raw[pos + 8 : pos + 8 + length]
        pos += 8 + length
        if not w1 & 0x80000000:
            out.append(("data", w1, flags, payload))
            continue
        assert (w1 >> 16) & 0x7FFF == 3
        ftype = w1 & 0xFFFF
        if ftype in (2, 8):
            (sid,) = struct.unpack_from(">I", payload)
            block = decomp.decompress(payload[4:])
            (count,) = struct.unpack_from(">I", block)
            pairs, p = [], 4
            for _ in range(count):
                (n,) = struct.unpack_from(">I", block, p)
                name = block[p + 4 : p + 4 + n].decode()
                p += 4 + n
                (n,) = struct.unpack_from(">I", block, p)
                pairs.append((name, block[p + 4 : p + 4 + n].decode()))
                p += 4 + n
            out.append((ftype, flags, sid, pairs))
        else:
            out.append((ftype, flags, payload))
    return out


# ---------------------------------------------------------------- tests


def test_dictionary_is_the_spdy3_dictionary() -> None:
    assert len(HEADER_DICTIONARY) == 1423
    assert hashlib.sha256(HEADER_DICTIONARY).hexdigest() == (
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    )
    assert HEADER_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert HEADER_DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


def test_parse_frames_from_independent_encoder() -> None:
    comp = RefCompressor()
    raw = (
        ref_syn_stream(comp, 1, [("streamtype", "error")])
        + ref_syn_stream(comp, 3, [("streamtype", "stdin"), ("x-multi", "a\x00b")], flags=spdy.FLAG_FIN)
        + ref_data(3, b"hello", fin=True)
        + ref_control(spdy.PING, 0, struct.pack(">I", 7))
        + ref_control(spdy.WINDOW_UPDATE, 0, struct.pack(">II", 3, 1000))
        + ref_control(spdy.SETTINGS, 0, struct.pack(">III", 1, 0x01000007, 131072))
        + ref_control(spdy.RST_STREAM, 0, struct.pack(">II", 1, 5))
        + ref_control(spdy.GOAWAY, 0, struct.pack(">II", 3, 0))
        + ref_control(0x55, 0, b"whatever")
    )
    reader = spdy.FrameReader()
    frames = reader.feed(raw)
    assert frames[0] == spdy.SynStream(1, {"streamtype": ["error"]}, 0, 0, 3, 0)
    assert frames[1] == spdy.SynStream(3, {"streamtype": ["stdin"], "x-multi": ["a", "b"]}, 1, 0, 3, 0)
    assert frames[1].fin
    assert frames[2] == spdy.DataFrame(3, b"hello", spdy.FLAG_FIN)
    assert frames[3] == spdy.Ping(7)
    assert frames[4] == spdy.WindowUpdate(3, 1000)
    assert frames[5].entries == [(1, spdy.SettingId.INITIAL_WINDOW_SIZE, 131072)]  # type: ignore[union-attr]
    assert frames[6] == spdy.RstStream(1, spdy.RstStatus.CANCEL)
    assert frames[7] == spdy.GoAway(3, 0)
    assert frames[8] == spdy.UnknownControl(0x55, 0, b"whatever")
    assert reader.buffered == 0


def test_parse_byte_by_byte_matches_whole() -> None:
    comp = RefCompressor()
    raw = ref_syn_stream(comp, 1, [("port", "80"), ("streamtype", "data")]) + ref_data(1, b"x" * 300)
    whole = spdy.FrameReader().feed(raw)
    reader = spdy.FrameReader()
    pieces = [f for i in range(len(raw)) for f in reader.feed(raw[i : i + 1])]
    assert pieces == whole
    assert len(whole) == 2


def test_serialized_frames_decode_with_independent_decoder() -> None:
    writer = spdy.FrameWriter()
    raw = b"".join(
        writer.serialize(f)
        for f in [
            spdy.SynReply(1, {"a": ["1"]}),
            spdy.HeadersFrame(1, {"b": ["x", "y"]}, spdy.FLAG_FIN),
            spdy.DataFrame(5, b"payload", spdy.FLAG_FIN),
            spdy.WindowUpdate(0, 65536),
            spdy.Ping(2),
        ]
    )
    decomp = zlib.decompressobj(15, HEADER_DICTIONARY)
    frames = ref_parse(raw, decomp)
    assert frames[0] == (2, 0, 1, [("a", "1")])
    assert frames[1] == (8, 1, 1, [("b", "x\x00y")])
    assert frames[2] == ("data", 5, 1, b"payload")
    assert frames[3] == (9, 0, struct.pack(">II", 0, 65536))
    assert frames[4] == (6, 0, struct.pack(">I", 2))


def test_header_compression_context_spans_frames() -> None:
    # The second block is compressed against the first: decoding it alone must fail.
    writer = spdy.FrameWriter()
    first = writer.serialize(spdy.SynStream(1, {"streamtype": ["stdout"]}))
    second = writer.serialize(spdy.SynStream(3, {"streamtype": ["stdout"]}))
    reader = spdy.FrameReader()
    assert [f.headers for f in reader.feed(first + second)] == [{"streamtype": ["stdout"]}] * 2  # type: ignore[union-attr]
    with pytest.raises(spdy.SpdyError):
        spdy.FrameReader().feed(second)


def test_random_round_trips() -> None:
    rnd = random.Random(1234)
    writer, reader = spdy.FrameWriter(), spdy.FrameReader()
    sent: list[spdy.Frame] = []
    for _ in range(300):
        kind = rnd.randrange(6)
        sid = rnd.randrange(1, 1 << 31)
        if kind == 0:
            sent.append(spdy.DataFrame(sid, rnd.randbytes(rnd.randrange(0, 5000)), rnd.choice([0, 1])))
        elif kind == 1:
            headers = {
                f"h{i}": [rnd.choice(["v", "w", "ünï"]) for _ in range(rnd.randrange(1, 3))] for i in range(3)
            }
            sent.append(
                spdy.SynStream(sid, headers, rnd.choice([0, 1, 2]), rnd.randrange(0, sid), rnd.randrange(8))
            )
        elif kind == 2:
            sent.append(spdy.WindowUpdate(rnd.randrange(0, 1 << 31), rnd.randrange(1, 1 << 31)))
        elif kind == 3:
            sent.append(spdy.RstStream(sid, rnd.randrange(1, 12)))
        elif kind == 4:
            sent.append(spdy.Settings([(0, rnd.randrange(1, 9), rnd.randrange(1 << 32)) for _ in range(3)]))
        else:
            sent.append(spdy.SynReply(sid, {"k": [str(rnd.random())]}, 1))
    raw = b"".join(writer.serialize(f) for f in sent)
    got: list[spdy.Frame] = []
    pos = 0
    while pos < len(raw):
        step = rnd.randrange(1, 4000)
        got += reader.feed(raw[pos : pos + step])
        pos += step
    assert got == sent


@pytest.mark.parametrize(
    "raw",
    [
        ref_control(spdy.RST_STREAM, 0, b"\x00\x00\x00\x01"),  # wrong length
        ref_control(spdy.PING, 0, b"\x00\x00"),
        ref_control(spdy.SETTINGS, 0, struct.pack(">I", 2) + b"\x00" * 8),
        ref_control(spdy.SYN_STREAM, 0, struct.pack(">IIBB", 0, 0, 0, 0)),  # stream id 0
        ref_control(spdy.SYN_REPLY, 0, struct.pack(">I", 1) + b"not zlib at all"),
        ref_data(0, b"x"),
        struct.pack(">HHI", 0x8002, spdy.PING, 4) + b"\x00\x00\x00\x01",  # SPDY/2
    ],
)
def test_malformed_frames_raise(raw: bytes) -> None:
    with pytest.raises(spdy.SpdyError):
        spdy.FrameReader().feed(raw)


def test_frame_size_limit() -> None:
    with pytest.raises(spdy.SpdyError):
        spdy.FrameReader(max_frame=1000).feed(struct.pack(">II", 1, 5000))


def test_header_bomb_rejected() -> None:
    comp = RefCompressor()
    huge = [("x", "a" * (spdy.MAX_HEADER_BLOCK + 10))]
    with pytest.raises(spdy.SpdyError, match="too large"):
        spdy.FrameReader().feed(ref_syn_stream(comp, 1, huge))


def test_truncated_header_block_rejected() -> None:
    with pytest.raises(spdy.SpdyError):
        spdy.decode_header_block(struct.pack(">II", 1, 50) + b"short")
    with pytest.raises(spdy.SpdyError):
        spdy.decode_header_block(ref_header_block([("a", "b")]) + b"trailing")


def test_serialize_validates() -> None:
    writer = spdy.FrameWriter()
    with pytest.raises(ValueError):
        writer.serialize(spdy.DataFrame(0, b""))
    with pytest.raises(ValueError):
        writer.serialize(spdy.RstStream(1, 0))
    with pytest.raises(ValueError):
        writer.serialize(spdy.WindowUpdate(1, 0))
    with pytest.raises(ValueError):
        spdy.data_frame_header(1, spdy.MAX_FRAME_LENGTH + 1)


def test_uppercase_header_names_are_lowered() -> None:
    assert spdy.decode_header_block(ref_header_block([("StreamType", "stdin")])) == {"streamtype": ["stdin"]}
    assert spdy.header_value({"port": ["80"]}, "Port") == "80"
    assert spdy.header_value({}, "port") == ""
