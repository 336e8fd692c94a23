"""A minimal byte-transport interface so SPDY can run over TCP/TLS or inside a WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

Buffer = bytes | bytearray | memoryview


class ByteTransport(Protocol):
    async def read(self, n: int) -> bytes:
        """Up to n bytes; b"" at end of stream."""
        ...

    def writelines(self, parts: Iterable[Buffer]) -> None: ...

    async def drain(self) -> None: ...

    def write_eof(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class StreamTransport:
    """asyncio streams as a :class:`ByteTransport`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self, n: int) -> bytes:
        try:
            return await self.reader.read(n)
        except (ConnectionError, OSError):
            return b""

    def writelines(self, parts: Iterable[Buffer]) -> None:
        if not self.writer.is_closing():
            self.writer.write(b"".join(parts))

    async def drain(self) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("transport closed")
        await self.writer.drain()

    def write_eof(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            if self.writer.can_write_eof() and not self.writer.is_closing():
                self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def idle_watchdog(
    last_activity: Callable[[], float], idle_timeout: float, on_idle: Callable[[], None]
) -> None:
    """Call on_idle once nothing happened for idle_timeout seconds (run as a task, cancel to stop)."""
    while True:
        remaining = last_activity() + idle_timeout - time.monotonic()
        if remaining <= 0:
            on_idle()
            return
        await asyncio.sleep(remaining)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-connection knobs shared by the exec/attach and port-forward handlers."""

    idle_timeout: float | None = 4 * 3600.0
    stream_creation_timeout: float = 30.0
    # What we grant a SPDY peer per stream / per session (SPDY default: 64 KiB each).
    spdy_receive_window: int = 1024 * 1024
    spdy_session_window: int = 8 * 1024 * 1024


class InputBuffer:
    """Bytes pushed by a demultiplexing read loop, read by one consumer (an InputStream)."""

    def __init__(self, high_water: int = 1024 * 1024) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self.high_water = high_water

    @property
    def eof(self) -> bool:
        return self._eof

    def feed(self, data: bytes) -> None:
        if self._eof or not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        self._readable.set()
        if self._size > self.high_water:
            self._drained.clear()

    def feed_eof(self) -> None:
        self._eof = True
        self._readable.set()
        self._drained.set()

    def discard(self) -> None:
        """The consumer is gone: drop what is buffered and stop holding the producer back."""
        self._chunks.clear()
        self._size = 0
        self.feed_eof()

    async def wait_drained(self) -> None:
        """For the producer: wait while more than high_water bytes are unread."""
        await self._drained.wait()

    async def read(self, n: int = 65536) -> bytes:
        while not self._chunks:
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks[0]
        if len(chunk) <= n:
            self._chunks.popleft()
        else:
            self._chunks[0] = chunk[n:]
            chunk = chunk[:n]
        self._size -= len(chunk)
        if self._size <= self.high_water // 2:
            self._drained.set()
        return chunk
