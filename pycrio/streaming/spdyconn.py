"""asyncio driver for :class:`~pycrio.streaming.spdy_session.SpdySession`.

One task runs :meth:`SpdyConnection.run` (the read loop); any number of tasks read and
write :class:`SpdyStream` objects.  Writers wait for flow-control windows (when the peer
uses them) and for the transport to drain; readers return consumed bytes to the peer's
window.  Peers without flow control are slowed by TCP instead: the read loop stops reading
while a stream holds more than ``high_water`` unread bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pycrio.streaming import spdy_session as ss
from pycrio.streaming.spdy import DEFAULT_WINDOW, GoAwayStatus, Headers, RstStatus, SpdyError
from pycrio.streaming.transport import Buffer, ByteTransport, SessionLimits

log = logging.getLogger(__name__)

MAX_DATA_PAYLOAD = 128 * 1024
READ_SIZE = 256 * 1024
DEFAULT_HIGH_WATER = 1024 * 1024


class StreamResetError(ConnectionResetError):
    """The stream was reset by the peer or the connection is gone."""


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()  # nobody may be waiting: do not log "never retrieved"


class SpdyStream:
    def __init__(self, conn: SpdyConnection, stream_id: int, headers: Headers) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.headers = headers
        self.reply_headers: Headers | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self.reset_status: int | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._drained = asyncio.Event()
        self._replied: asyncio.Future[Headers] = asyncio.get_running_loop().create_future()

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    # -------------------------------------------------------- server side

    def accept(self, headers: Headers | None = None) -> None:
        """Send SYN_REPLY for a stream the peer opened."""
        self.conn._reply(self, headers)

    def reject(self, status: int = RstStatus.REFUSED_STREAM) -> None:
        self.reset(status)

    # -------------------------------------------------------- I/O

    async def read(self, n: int = 65536) -> bytes:
        """Up to n bytes (at most one frame's worth); b"" at FIN, reset or connection end."""
        while not self._chunks:
            if self._eof or self.reset_status is not None or self.conn.closed.is_set():
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks[0]
        if len(chunk) <= n:
            self._chunks.popleft()
        else:
            self._chunks[0] = chunk[n:]
            chunk = chunk[:n]
        self._buffered -= len(chunk)
        if self._buffered <= self.conn.high_water // 2:
            self._drained.set()
        self.conn._consumed(self, len(chunk))
        return chunk

    async def read_all(self, limit: int = 16 * 1024 * 1024) -> bytes:
        parts = []
        total = 0
        while chunk := await self.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise ValueError("stream data exceeds limit")
            parts.append(chunk)
        return b"".join(parts)

    async def write(self, data: Buffer) -> None:
        await self.conn._send(self, data, fin=False)

    async def close(self) -> None:
        """Half-close (FIN); idempotent and silent when the stream is already gone."""
        with contextlib.suppress(ConnectionError):
            await self.conn._send(self, b"", fin=True)

    def reset(self, status: int = RstStatus.CANCEL) -> None:
        self.conn._reset(self, status)

    async def wait_reply(self, reply_timeout: float | None = None) -> Headers:
        async with asyncio.timeout(reply_timeout):
            return await self._replied

    def _wake(self) -> None:
        self._readable.set()
        self._writable.set()
        self._drained.set()


class SpdyConnection:
    def __init__(
        self,
        transport: ByteTransport,
        *,
        client: bool,
        on_stream: Callable[[SpdyStream], None] | None = None,
        receive_window: int = DEFAULT_WINDOW,
        session_window: int = DEFAULT_WINDOW,
        flow_control: bool | None = None,
        idle_timeout: float | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
        announce: bool = True,
        window_updates: bool = True,
    ) -> None:
        self.transport = transport
        self.session = ss.SpdySession(
            client=client,
            receive_window=receive_window,
            session_receive_window=session_window,
            flow_control=flow_control,
            window_updates=window_updates,
        )
        self.on_stream = on_stream
        self.idle_timeout = idle_timeout
        self.high_water = max(high_water, receive_window)
        self.streams: dict[int, SpdyStream] = {}
        self.closed = asyncio.Event()
        self.goaway = asyncio.Event()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._last_activity = time.monotonic()
        self.close_reason = ""
        if announce:
            self.session.initiate()
            self._flush()

    # -------------------------------------------------------- read loop

    async def run(self) -> None:
        """Read and dispatch frames until the peer closes, an error, or the idle timeout."""
        watchdog = asyncio.create_task(self._idle_watchdog()) if self.idle_timeout else None
        try:
            while True:
                data = await self.transport.read(READ_SIZE)
                if not data:
                    self.close_reason = self.close_reason or "peer closed the connection"
                    break
                self._last_activity = time.monotonic()
                for ev in self.session.receive_data(data):
                    self._dispatch(ev)
                self._flush()
                for st in [s for s in self.streams.values() if s._buffered > self.high_water]:
                    st._drained.clear()
                    while (
                        st._buffered > self.high_water
                        and st.reset_status is None
                        and not self.closed.is_set()
                    ):
                        await st._drained.wait()
                        st._drained.clear()
        except SpdyError as exc:
            self.close_reason = f"protocol error: {exc}"
            log.info("spdy: closing session: %s", exc)
            self._flush()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self._mark_closed()
            # The session is over once the peer stops sending; release the socket.
            self.transport.close()

    async def _idle_watchdog(self) -> None:
        assert self.idle_timeout is not None
        while True:
            remaining = self._last_activity + self.idle_timeout - time.monotonic()
            if remaining <= 0:
                self.close_reason = "idle timeout"
                log.info("spdy: idle timeout after %.0f s", self.idle_timeout)
                self.abort()
                return
            await asyncio.sleep(remaining)

    def _dispatch(self, ev: ss.Event) -> None:
        if isinstance(ev, ss.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is None:
                self.session.acknowledge(ev.stream_id, len(ev.data))
                return
            if ev.data:
                st._chunks.append(ev.data)
                st._buffered += len(ev.data)
            if ev.fin:
                st._eof = True
            st._readable.set()
        elif isinstance(ev, ss.StreamOpened):
            st = SpdyStream(self, ev.stream_id, ev.headers)
            st._eof = ev.fin
            self.streams[ev.stream_id] = st
            if self.on_stream is None:
                st.reject()
            else:
                self.on_stream(st)
        elif isinstance(ev, ss.ReplyReceived | ss.HeadersReceived):
            st = self.streams.get(ev.stream_id)
            if st is None:
                return
            if isinstance(ev, ss.ReplyReceived) and not st._replied.done():
                st.reply_headers = ev.headers
                st._replied.set_result(ev.headers)
            if ev.fin:
                st._eof = True
                st._readable.set()
        elif isinstance(ev, ss.StreamReset):
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                # Data that arrived before the reset stays readable: servers (the kubelet's too)
                # reset every stream right after sending the last bytes and FIN.
                st.reset_status = ev.status
                _fail(st._replied, StreamResetError(f"stream reset ({ev.status})"))
                st._wake()
        elif isinstance(ev, ss.WindowOpened):
            if ev.stream_id == 0:
                for st in self.streams.values():
                    st._writable.set()
            elif (st := self.streams.get(ev.stream_id)) is not None:
                st._writable.set()
        elif isinstance(ev, ss.PingAcknowledged):
            fut = self._pings.pop(ev.ping_id, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif isinstance(ev, ss.GoAwayReceived):
            self.goaway.set()

    def _discard(self, st: SpdyStream) -> None:
        # Unread data of a dead stream still counts against the session window.
        if st._buffered:
            self.session.acknowledge(st.stream_id, st._buffered)
        st._chunks.clear()
        st._buffered = 0

    def _mark_closed(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for st in self.streams.values():
            _fail(st._replied, StreamResetError("connection closed"))
            st._wake()
        for fut in self._pings.values():
            _fail(fut, ConnectionResetError("connection closed"))

    # -------------------------------------------------------- sending

    def _flush(self) -> None:
        parts = self.session.pending_output()
        if parts:
            self._last_activity = time.monotonic()
            self.transport.writelines(parts)

    def _forget_if_done(self, st: SpdyStream) -> None:
        if not self.session.is_open(st.stream_id) and not st._chunks:
            self.streams.pop(st.stream_id, None)

    def _reply(self, st: SpdyStream, headers: Headers | None) -> None:
        if self.closed.is_set() or not self.session.is_open(st.stream_id):
            return
        self.session.reply(st.stream_id, headers or {})
        self._flush()

    def _reset(self, st: SpdyStream, status: int) -> None:
        if st.reset_status is None:
            st.reset_status = status
        if not self.closed.is_set():
            self.session.reset_stream(st.stream_id, status)
            self._discard(st)
            self._flush()
        self.streams.pop(st.stream_id, None)
        st._wake()

    def _consumed(self, st: SpdyStream, n: int) -> None:
        if self.closed.is_set():
            return
        self.session.acknowledge(st.stream_id, n)
        self._flush()
        if st._eof and not st._chunks:
            self._forget_if_done(st)

    async def _send(self, st: SpdyStream, data: Buffer, *, fin: bool) -> None:
        view = memoryview(data)
        total = len(view)
        pos = 0
        while True:
            if self.closed.is_set():
                raise StreamResetError("connection closed")
            if st.reset_status is not None or not self.session.is_open(st.stream_id):
                if fin and total == 0 and st.reset_status is None:
                    return  # already half-closed
                raise StreamResetError(f"stream {st.stream_id} is closed")
            window = self.session.send_window(st.stream_id)
            if window is not None and window <= 0 and pos < total:
                st._writable.clear()
                await st._writable.wait()
                continue
            size = min(total - pos, MAX_DATA_PAYLOAD, window if window is not None else MAX_DATA_PAYLOAD)
            last = pos + size >= total
            try:
                self.session.send_data(st.stream_id, view[pos : pos + size], fin=fin and last)
            except ss.StreamClosedError as exc:
                raise StreamResetError(str(exc)) from exc
            pos += size
            self._flush()
            if fin and last:
                self._forget_if_done(st)
            await self.transport.drain()
            if last:
                return

    # -------------------------------------------------------- client side / control

    async def open_stream(self, headers: Headers, *, reply_timeout: float | None = 30.0) -> SpdyStream:
        """Open a stream and wait for the peer's SYN_REPLY."""
        if self.closed.is_set():
            raise ConnectionResetError("connection closed")
        sid = self.session.open_stream(headers)
        st = SpdyStream(self, sid, headers)
        self.streams[sid] = st
        self._flush()
        await self.transport.drain()
        await st.wait_reply(reply_timeout)
        return st

    async def ping(self, ping_timeout: float = 10.0) -> float:
        start = time.monotonic()
        ping_id = self.session.ping()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[ping_id] = fut
        self._flush()
        async with asyncio.timeout(ping_timeout):
            await fut
        return time.monotonic() - start

    def send_goaway(self, status: int = GoAwayStatus.OK) -> None:
        if not self.closed.is_set():
            self.session.goaway(status)
            self._flush()

    async def shutdown(self, *, reset_streams: bool = True, linger: float = 2.0) -> None:
        """End the session like the kubelet's server does: reset what is left, GOAWAY,
        half-close, wait briefly for the peer to finish reading, then close."""
        if not self.closed.is_set():
            if reset_streams:
                for st in list(self.streams.values()):
                    if self.session.is_open(st.stream_id):
                        self._reset(st, RstStatus.CANCEL)
            self.send_goaway()
            with contextlib.suppress(ConnectionError, OSError):
                await self.transport.drain()
            self.transport.write_eof()
            if not self.goaway.is_set():
                # The peer has not said goodbye: let it finish reading before we drop the socket.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(linger):
                        await self.closed.wait()
        self.transport.close()
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            async with asyncio.timeout(linger):
                await self.transport.wait_closed()

    def abort(self) -> None:
        self.transport.close()
        self._mark_closed()


def accept_streams(
    transport: ByteTransport, limits: SessionLimits
) -> tuple[SpdyConnection, asyncio.Queue[SpdyStream | None], asyncio.Task[None]]:
    """Serve a SPDY connection whose peer opens the streams.

    Returns the connection, a queue that receives each stream the client
    opens (and None once the connection is over), and the task reading the
    connection; the caller cancels that task when it is done.
    """
    queue: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
    conn = SpdyConnection(
        transport,
        client=False,
        on_stream=queue.put_nowait,
        idle_timeout=limits.idle_timeout,
        receive_window=limits.spdy_receive_window,
        session_window=limits.spdy_session_window,
    )

    async def read_loop() -> None:
        try:
            await conn.run()
        finally:
            queue.put_nowait(None)

    return conn, queue, asyncio.get_running_loop().create_task(read_loop())
