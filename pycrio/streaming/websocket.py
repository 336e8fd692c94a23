"""Sans-IO WebSocket (RFC 6455): handshake key, frame parsing and serialisation.

Frame: ``FIN RSV1-3 opcode:4 | MASK len:7 [len:16|len:64] [mask:32] payload``.  Clients
must mask, servers must not.  Control frames (close/ping/pong) carry at most 125 bytes, are
never fragmented and may arrive between the fragments of a data message.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass
from enum import IntEnum

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024

_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")


class Opcode(IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


class WebSocketError(Exception):
    """A protocol violation; the connection should be closed with :attr:`code`."""

    def __init__(self, message: str, code: int = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True


@dataclass(slots=True)
class Message:
    """A complete data message (TEXT or BINARY)."""

    opcode: int
    data: bytes

    @property
    def binary(self) -> bool:
        return self.opcode == Opcode.BINARY


@dataclass(slots=True)
class PingEvent:
    payload: bytes


@dataclass(slots=True)
class PongEvent:
    payload: bytes


@dataclass(slots=True)
class CloseEvent:
    code: int
    reason: str


Event = Message | PingEvent | PongEvent | CloseEvent


# ---------------------------------------------------------------- handshake


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key."""
    digest = hashlib.sha1((key.strip() + GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def valid_client_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except ValueError:
        return False


def new_client_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def parse_protocols(values: list[str]) -> list[str]:
    """Sec-WebSocket-Protocol values (possibly repeated, comma separated), in client order."""
    out: list[str] = []
    for value in values:
        out.extend(p.strip() for p in value.split(",") if p.strip())
    return out


# ---------------------------------------------------------------- framing


def mask_bytes(data: bytes, mask: bytes) -> bytes:
    """XOR data with the repeating 4-byte mask, using big-int arithmetic (no byte loop)."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def frame_header(opcode: int, length: int, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    first = (0x80 if fin else 0) | (opcode & 0x0F)
    mbit = 0x80 if mask is not None else 0
    if length < 126:
        head = bytes((first, mbit | length))
    elif length < 65536:
        head = bytes((first, mbit | 126)) + _U16.pack(length)
    else:
        head = bytes((first, mbit | 127)) + _U64.pack(length)
    return head + mask if mask is not None else head


def serialize_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = False) -> bytes:
    """One frame; ``masked=True`` for client-to-server frames (a fresh random mask)."""
    if opcode >= 0x8 and (len(payload) > 125 or not fin):
        raise ValueError("control frames carry at most 125 bytes and cannot be fragmented")
    if masked:
        mask = os.urandom(4)
        return frame_header(opcode, len(payload), fin=fin, mask=mask) + mask_bytes(payload, mask)
    return frame_header(opcode, len(payload), fin=fin) + payload


def close_payload(code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
    raw = reason.encode("utf-8")[:123]
    return _U16.pack(code) + raw


def _parse_close(payload: bytes) -> CloseEvent:
    if not payload:
        return CloseEvent(CloseCode.NO_STATUS, "")
    if len(payload) == 1:
        raise WebSocketError("close frame with a 1-byte payload")
    (code,) = _U16.unpack_from(payload, 0)
    if code < 1000 or code in (1004, 1005, 1006, 1015) or 1016 <= code < 3000 or code >= 5000:
        raise WebSocketError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebSocketError("close reason is not UTF-8", CloseCode.INVALID_DATA) from exc
    return CloseEvent(code, reason)


class FrameParser:
    """Incremental frame parser for one direction.

    ``expect_masked``: True on the server (client frames must be masked), False on the client.
    """

    def __init__(self, *, expect_masked: bool, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._expect_masked = expect_masked
        self._max = max_message
        self._frag_opcode: int | None = None
        self._frag_parts: list[bytes] = []
        self._frag_size = 0

    def feed(self, data: bytes) -> list[Event]:
        buf = self._buf
        buf += data
        events: list[Event] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                (length,) = _U16.unpack_from(buf, pos + 2)
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = _U64.unpack_from(buf, pos + 2)
                head = 10
            masked = bool(b1 & 0x80)
            if masked != self._expect_masked:
                raise WebSocketError("frame masking does not match the endpoint role")
            if b0 & 0x70:
                raise WebSocketError("reserved bits set without a negotiated extension")
            if length > self._max:
                raise WebSocketError("frame too large", CloseCode.MESSAGE_TOO_BIG)
            if masked:
                head += 4
            if end - pos < head + length:
                break
            start = pos + head
            payload = bytes(buf[start : start + length])
            if masked:
                payload = mask_bytes(payload, bytes(buf[start - 4 : start]))
            pos = start + length
            self._frame(Frame(b0 & 0x0F, payload, bool(b0 & 0x80)), events)
        if pos:
            del buf[:pos]
        return events

    def _frame(self, frame: Frame, events: list[Event]) -> None:
        op = frame.opcode
        if op >= 0x8:
            if not frame.fin or len(frame.payload) > 125:
                raise WebSocketError("invalid control frame")
            if op == Opcode.CLOSE:
                events.append(_parse_close(frame.payload))
            elif op == Opcode.PING:
                events.append(PingEvent(frame.payload))
            elif op == Opcode.PONG:
                events.append(PongEvent(frame.payload))
            else:
                raise WebSocketError(f"unknown control opcode {op}")
            return
        if op == Opcode.CONTINUATION:
            if self._frag_opcode is None:
                raise WebSocketError("continuation frame without a message to continue")
        elif op in (Opcode.TEXT, Opcode.BINARY):
            if self._frag_opcode is not None:
                raise WebSocketError("new data frame inside a fragmented message")
            if frame.fin:
                events.append(self._message(op, frame.payload))
                return
            self._frag_opcode = op
        else:
            raise WebSocketError(f"unknown data opcode {op}")
        self._frag_parts.append(frame.payload)
        self._frag_size += len(frame.payload)
        if self._frag_size > self._max:
            raise WebSocketError("message too large", CloseCode.MESSAGE_TOO_BIG)
        if frame.fin:
            opcode = self._frag_opcode
            data = b"".join(self._frag_parts)
            self._frag_opcode = None
            self._frag_parts = []
            self._frag_size = 0
            events.append(self._message(opcode, data))

    @staticmethod
    def _message(opcode: int, data: bytes) -> Message:
        if opcode == Opcode.TEXT:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise WebSocketError("text message is not UTF-8", CloseCode.INVALID_DATA) from exc
        return Message(opcode, data)
