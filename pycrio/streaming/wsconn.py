"""asyncio WebSocket endpoint over a :class:`ByteTransport`, plus a SPDY tunnel transport."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Iterable

from pycrio.streaming import websocket as ws
from pycrio.streaming.transport import Buffer, ByteTransport

READ_SIZE = 256 * 1024
# Large outgoing messages are split into frames of this size.
MAX_FRAME = 1024 * 1024


class WebSocketConnection:
    def __init__(
        self,
        transport: ByteTransport,
        *,
        client: bool,
        max_message: int = ws.DEFAULT_MAX_MESSAGE,
        initial: bytes = b"",
    ) -> None:
        self.transport = transport
        self.client = client
        self._parser = ws.FrameParser(expect_masked=not client, max_message=max_message)
        self._events: deque[ws.Event] = deque()
        self._pending = initial
        self.close_sent = False
        self.close_received: ws.CloseEvent | None = None
        self.closed = asyncio.Event()
        self.last_activity = time.monotonic()
        self._receiving = False

    async def receive(self) -> ws.Message | None:
        """The next data message; None once the connection is closed (pings answered inline)."""
        self._receiving = True
        try:
            return await self._receive()
        finally:
            self._receiving = False

    async def _receive(self) -> ws.Message | None:
        while True:
            while self._events:
                ev = self._events.popleft()
                if isinstance(ev, ws.Message):
                    return ev
                if isinstance(ev, ws.PingEvent):
                    self._write_frame(ws.Opcode.PONG, ev.payload)
                elif isinstance(ev, ws.CloseEvent):
                    self.close_received = ev
                    if not self.close_sent:
                        code = ev.code if ev.code != ws.CloseCode.NO_STATUS else ws.CloseCode.NORMAL
                        self._write_frame(ws.Opcode.CLOSE, ws.close_payload(code))
                        self.close_sent = True
                    self._finish()
                    return None
            if self.closed.is_set():
                return None
            if self._pending:
                data, self._pending = self._pending, b""
            else:
                data = await self.transport.read(READ_SIZE)
            if not data:
                self._finish()
                return None
            self.last_activity = time.monotonic()
            try:
                self._events.extend(self._parser.feed(data))
            except ws.WebSocketError as exc:
                await self.close(exc.code, str(exc))
                return None

    def send_nowait(self, data: Buffer, *, binary: bool = True) -> None:
        """Queue one message (split into frames of at most MAX_FRAME bytes)."""
        if self.close_sent or self.closed.is_set():
            raise ConnectionResetError("websocket closed")
        opcode = ws.Opcode.BINARY if binary else ws.Opcode.TEXT
        view = memoryview(data)
        n = len(view)
        if n <= MAX_FRAME:
            self._write_frame(opcode, view)
            return
        parts: list[Buffer] = []
        for pos in range(0, n, MAX_FRAME):
            chunk = view[pos : pos + MAX_FRAME]
            last = pos + MAX_FRAME >= n
            parts += self._frame_parts(opcode if pos == 0 else ws.Opcode.CONTINUATION, chunk, last)
        self.transport.writelines(parts)

    async def send(self, data: Buffer, *, binary: bool = True) -> None:
        self.send_nowait(data, binary=binary)
        await self.transport.drain()

    async def drain(self) -> None:
        await self.transport.drain()

    def ping(self, payload: bytes = b"") -> None:
        if not self.close_sent:
            self._write_frame(ws.Opcode.PING, payload)

    async def close(self, code: int = ws.CloseCode.NORMAL, reason: str = "", *, linger: float = 2.0) -> None:
        """Send a close frame, wait briefly for the peer's, then drop the transport."""
        if not self.close_sent and not self.closed.is_set():
            with contextlib.suppress(ConnectionError, OSError):
                self._write_frame(ws.Opcode.CLOSE, ws.close_payload(code, reason))
                self.close_sent = True
                await self.transport.drain()
        if self.close_received is None and not self.closed.is_set():
            with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                async with asyncio.timeout(linger):
                    if self._receiving:
                        # Another task is reading; it sees the peer's close frame.
                        await self.closed.wait()
                    else:
                        while await self._receive() is not None:
                            pass
        self._finish()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(linger):
                await self.transport.wait_closed()

    def abort(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.transport.close()

    def _frame_parts(self, opcode: int, payload: Buffer, fin: bool) -> list[Buffer]:
        if self.client:
            mask = os.urandom(4)
            masked = ws.mask_bytes(bytes(payload), mask)
            return [ws.frame_header(opcode, len(payload), fin=fin, mask=mask), masked]
        return [ws.frame_header(opcode, len(payload), fin=fin), payload]

    def _write_frame(self, opcode: int, payload: Buffer) -> None:
        self.last_activity = time.monotonic()
        self.transport.writelines(self._frame_parts(opcode, payload, True))


class WebSocketTransport:
    """A :class:`ByteTransport` whose bytes travel as binary WebSocket messages
    (``SPDY/3.1+portforward.k8s.io`` tunnelling)."""

    def __init__(self, conn: WebSocketConnection) -> None:
        self.conn = conn

    async def read(self, n: int) -> bytes:
        while True:
            msg = await self.conn.receive()
            if msg is None:
                return b""
            if msg.data:
                return msg.data

    def writelines(self, parts: Iterable[Buffer]) -> None:
        data = b"".join(parts)
        if data and not self.conn.close_sent and not self.conn.closed.is_set():
            self.conn.send_nowait(data)

    async def drain(self) -> None:
        if self.conn.closed.is_set():
            raise ConnectionResetError("websocket closed")
        await self.conn.drain()

    def write_eof(self) -> None:
        # No half-close in WebSocket: a close frame ends our direction; the peer echoes it.
        if not self.conn.close_sent and not self.conn.closed.is_set():
            with contextlib.suppress(ConnectionError, OSError):
                self.conn._write_frame(ws.Opcode.CLOSE, ws.close_payload(ws.CloseCode.NORMAL))
                self.conn.close_sent = True

    def close(self) -> None:
        if not self.conn.closed.is_set():
            with contextlib.suppress(ConnectionError, OSError):
                if not self.conn.close_sent:
                    self.conn._write_frame(ws.Opcode.CLOSE, ws.close_payload(ws.CloseCode.NORMAL))
                    self.conn.close_sent = True
            self.conn.abort()

    async def wait_closed(self) -> None:
        await self.conn.transport.wait_closed()
