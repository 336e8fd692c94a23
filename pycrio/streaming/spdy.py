"""Sans-IO SPDY/3.1 framing: frame types, parsing, serialisation and header compression.

Wire layout (all integers big-endian):

* control frame: ``1 | version:15 | type:16 | flags:8 | length:24 | payload``
* data frame:    ``0 | stream-id:31 | flags:8 | length:24 | payload``

Header blocks are ``count:32 (name-len:32 name value-len:32 value)*`` where several values
of one name are joined by NUL; each direction compresses its blocks with one continuous
zlib stream primed with :data:`HEADER_DICTIONARY` and sync-flushed after every block.
The flow-control state machine lives in :mod:`pycrio.streaming.spdy_session`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

from pycrio.streaming.spdy_dictionary import HEADER_DICTIONARY

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01

MAX_FRAME_LENGTH = (1 << 24) - 1
MAX_STREAM_ID = (1 << 31) - 1
MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 64 * 1024
# Refuse header blocks that inflate past this many bytes (decompression bombs).
MAX_HEADER_BLOCK = 256 * 1024

Headers = dict[str, list[str]]

_U32 = struct.Struct(">I")
_U32x2 = struct.Struct(">II")
_CTRL = struct.Struct(">HHI")


class RstStatus(IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class SettingId(IntEnum):
    UPLOAD_BANDWIDTH = 1
    DOWNLOAD_BANDWIDTH = 2
    ROUND_TRIP_TIME = 3
    MAX_CONCURRENT_STREAMS = 4
    CURRENT_CWND = 5
    DOWNLOAD_RETRANS_RATE = 6
    INITIAL_WINDOW_SIZE = 7
    CLIENT_CERTIFICATE_VECTOR_SIZE = 8


class SpdyError(Exception):
    """A session-level protocol violation: the session must end with GOAWAY."""


# ---------------------------------------------------------------- frames


@dataclass(slots=True)
class SynStream:
    stream_id: int
    headers: Headers
    flags: int = 0
    associated_id: int = 0
    priority: int = 0
    slot: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(slots=True)
class SynReply:
    stream_id: int
    headers: Headers
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(slots=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(slots=True)
class Settings:
    # (flags, id, value) triples in wire order.
    entries: list[tuple[int, int, int]] = field(default_factory=list)
    flags: int = 0

    def as_dict(self) -> dict[int, int]:
        return {sid: value for _, sid, value in self.entries}


@dataclass(slots=True)
class Ping:
    ping_id: int


@dataclass(slots=True)
class GoAway:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(slots=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(slots=True)
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass(slots=True)
class DataFrame:
    stream_id: int
    data: bytes
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(slots=True)
class UnknownControl:
    """A control frame of a type we do not know; SPDY says to ignore it."""

    frame_type: int
    flags: int
    payload: bytes


Frame = (
    SynStream
    | SynReply
    | RstStream
    | Settings
    | Ping
    | GoAway
    | HeadersFrame
    | WindowUpdate
    | DataFrame
    | UnknownControl
)


# ---------------------------------------------------------------- header blocks


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed SPDY/3 name/value block; names are lower-cased."""
    parts = [_U32.pack(len(headers))]
    for name, values in headers.items():
        raw_name = name.lower().encode("utf-8")
        raw_value = "\x00".join(values).encode("utf-8")
        parts += (_U32.pack(len(raw_name)), raw_name, _U32.pack(len(raw_value)), raw_value)
    return b"".join(parts)


def decode_header_block(raw: bytes) -> Headers:
    """Parse an uncompressed name/value block (lenient about upper-case names)."""
    total = len(raw)
    try:
        (count,) = _U32.unpack_from(raw, 0)
        pos = 4
        headers: Headers = {}
        for _ in range(count):
            (n,) = _U32.unpack_from(raw, pos)
            if n == 0 or pos + 4 + n > total:
                raise SpdyError("truncated or empty header name")
            name = raw[pos + 4 : pos + 4 + n]
            pos += 4 + n
            (v,) = _U32.unpack_from(raw, pos)
            if pos + 4 + v > total:
                raise SpdyError("truncated header value")
            value = raw[pos + 4 : pos + 4 + v]
            pos += 4 + v
            headers.setdefault(name.decode("utf-8").lower(), []).extend(value.decode("utf-8").split("\x00"))
    except (struct.error, UnicodeDecodeError) as exc:
        raise SpdyError(f"malformed header block: {exc}") from exc
    if pos != len(raw):
        raise SpdyError("trailing bytes after header block")
    return headers


def header_value(headers: Headers, name: str) -> str:
    """First value of a header, or "" when absent."""
    values = headers.get(name.lower())
    return values[0] if values else ""


class HeaderCompressor:
    """One direction's continuous zlib stream for header blocks."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(
            zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_DICTIONARY
        )

    def compress(self, headers: Headers) -> bytes:
        raw = encode_header_block(headers)
        return self._z.compress(raw) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """Inflates the peer's header blocks; the zlib state carries across frames."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(15, HEADER_DICTIONARY)

    def decompress(self, block: bytes) -> Headers:
        try:
            raw = self._z.decompress(block, MAX_HEADER_BLOCK + 1)
        except zlib.error as exc:
            raise SpdyError(f"header block does not inflate: {exc}") from exc
        if len(raw) > MAX_HEADER_BLOCK or self._z.unconsumed_tail:
            raise SpdyError("header block too large")
        return decode_header_block(raw)


# ---------------------------------------------------------------- serialisation


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise ValueError("control frame too large")
    return _CTRL.pack(0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


def _check_id(stream_id: int, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= stream_id <= MAX_STREAM_ID:
        raise ValueError(f"invalid stream id {stream_id}")


def data_frame_header(stream_id: int, length: int, fin: bool = False) -> bytes:
    """The 8-byte header of a DATA frame; the caller writes the payload after it."""
    _check_id(stream_id)
    if not 0 <= length <= MAX_FRAME_LENGTH:
        raise ValueError("data frame too large")
    return _U32x2.pack(stream_id, ((FLAG_FIN if fin else 0) << 24) | length)


class FrameWriter:
    """Serialises frames; owns the outbound header compressor."""

    def __init__(self) -> None:
        self._compressor = HeaderCompressor()

    def serialize(self, frame: Frame) -> bytes:
        if isinstance(frame, DataFrame):
            return data_frame_header(frame.stream_id, len(frame.data), frame.fin) + frame.data
        if isinstance(frame, SynStream):
            _check_id(frame.stream_id)
            _check_id(frame.associated_id, allow_zero=True)
            head = _U32x2.pack(frame.stream_id, frame.associated_id)
            head += bytes(((frame.priority & 0x7) << 5, frame.slot & 0xFF))
            return _control(SYN_STREAM, frame.flags, head + self._compressor.compress(frame.headers))
        if isinstance(frame, SynReply):
            _check_id(frame.stream_id)
            block = self._compressor.compress(frame.headers)
            return _control(SYN_REPLY, frame.flags, _U32.pack(frame.stream_id) + block)
        if isinstance(frame, HeadersFrame):
            _check_id(frame.stream_id)
            block = self._compressor.compress(frame.headers)
            return _control(HEADERS, frame.flags, _U32.pack(frame.stream_id) + block)
        if isinstance(frame, RstStream):
            _check_id(frame.stream_id)
            if frame.status == 0:
                raise ValueError("RST_STREAM status 0 is invalid")
            return _control(RST_STREAM, 0, _U32x2.pack(frame.stream_id, frame.status))
        if isinstance(frame, Settings):
            body = [_U32.pack(len(frame.entries))]
            for flags, sid, value in frame.entries:
                body.append(_U32x2.pack(((flags & 0xFF) << 24) | (sid & 0xFFFFFF), value))
            return _control(SETTINGS, frame.flags, b"".join(body))
        if isinstance(frame, Ping):
            return _control(PING, 0, _U32.pack(frame.ping_id))
        if isinstance(frame, GoAway):
            _check_id(frame.last_good_stream_id, allow_zero=True)
            return _control(GOAWAY, 0, _U32x2.pack(frame.last_good_stream_id, frame.status))
        if isinstance(frame, WindowUpdate):
            _check_id(frame.stream_id, allow_zero=True)
            if not 1 <= frame.delta <= MAX_WINDOW:
                raise ValueError("window delta out of range")
            return _control(WINDOW_UPDATE, 0, _U32x2.pack(frame.stream_id, frame.delta))
        if isinstance(frame, UnknownControl):
            return _control(frame.frame_type, frame.flags, frame.payload)
        raise TypeError(f"not a SPDY frame: {frame!r}")


# ---------------------------------------------------------------- parsing


class FrameReader:
    """Incremental parser: :meth:`feed` bytes, get back complete frames."""

    def __init__(self, max_frame: int = MAX_FRAME_LENGTH) -> None:
        self._buf = bytearray()
        self._decompressor = HeaderDecompressor()
        self._max_frame = max_frame

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        while end - pos >= 8:
            word, flags_len = _U32x2.unpack_from(buf, pos)
            length = flags_len & 0xFFFFFF
            if length > self._max_frame:
                raise SpdyError(f"frame of {length} bytes exceeds limit")
            if end - pos - 8 < length:
                break
            flags = flags_len >> 24
            start = pos + 8
            payload = bytes(buf[start : start + length])
            pos = start + length
            if word & 0x80000000:
                frames.append(self._control(word, flags, payload))
            else:
                stream_id = word & 0x7FFFFFFF
                if stream_id == 0:
                    raise SpdyError("data frame on stream 0")
                frames.append(DataFrame(stream_id, payload, flags))
        if pos:
            del buf[:pos]
        return frames

    def _control(self, word: int, flags: int, payload: bytes) -> Frame:
        version = (word >> 16) & 0x7FFF
        frame_type = word & 0xFFFF
        if version != VERSION:
            raise SpdyError(f"unsupported SPDY version {version}")
        n = len(payload)
        try:
            if frame_type == SYN_STREAM:
                if n < 10:
                    raise SpdyError("short SYN_STREAM")
                sid, assoc = _U32x2.unpack_from(payload, 0)
                sid &= MAX_STREAM_ID
                if sid == 0:
                    raise SpdyError("SYN_STREAM with stream id 0")
                headers = self._decompressor.decompress(payload[10:])
                return SynStream(sid, headers, flags, assoc & MAX_STREAM_ID, payload[8] >> 5, payload[9])
            if frame_type in (SYN_REPLY, HEADERS):
                if n < 4:
                    raise SpdyError("short SYN_REPLY/HEADERS")
                sid = _U32.unpack_from(payload, 0)[0] & MAX_STREAM_ID
                if sid == 0:
                    raise SpdyError("SYN_REPLY/HEADERS with stream id 0")
                headers = self._decompressor.decompress(payload[4:])
                if frame_type == SYN_REPLY:
                    return SynReply(sid, headers, flags)
                return HeadersFrame(sid, headers, flags)
            if frame_type == RST_STREAM:
                if n != 8:
                    raise SpdyError("RST_STREAM length must be 8")
                sid, status = _U32x2.unpack(payload)
                return RstStream(sid & MAX_STREAM_ID, status)
            if frame_type == SETTINGS:
                (count,) = _U32.unpack_from(payload, 0)
                if n != 4 + 8 * count:
                    raise SpdyError("SETTINGS length does not match its entry count")
                entries = []
                for i in range(count):
                    fid, value = _U32x2.unpack_from(payload, 4 + 8 * i)
                    entries.append((fid >> 24, fid & 0xFFFFFF, value))
                return Settings(entries, flags)
            if frame_type == PING:
                if n != 4:
                    raise SpdyError("PING length must be 4")
                return Ping(_U32.unpack(payload)[0])
            if frame_type == GOAWAY:
                # SPDY/2 peers send 4 bytes; accept both.
                if n not in (4, 8):
                    raise SpdyError("GOAWAY length must be 8")
                last = _U32.unpack_from(payload, 0)[0] & MAX_STREAM_ID
                status = _U32.unpack_from(payload, 4)[0] if n == 8 else 0
                return GoAway(last, status)
            if frame_type == WINDOW_UPDATE:
                if n != 8:
                    raise SpdyError("WINDOW_UPDATE length must be 8")
                sid, delta = _U32x2.unpack(payload)
                return WindowUpdate(sid & MAX_STREAM_ID, delta & MAX_WINDOW)
        except struct.error as exc:
            raise SpdyError(f"malformed control frame type {frame_type}: {exc}") from exc
        return UnknownControl(frame_type, flags, payload)
