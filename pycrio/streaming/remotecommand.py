"""Kubernetes remotecommand (exec/attach) over SPDY streams or WebSocket channels.

SPDY: the client opens one stream per ``streamType`` header (error, stdin, stdout, stderr,
and resize with a tty from v3 on); we reply to each and wait (30 s) for all expected ones.
WebSocket: fixed channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize, one prefix byte
per message ('0'..'4' plus base64 for ``base64.channel.k8s.io``); v5 adds the client's
CLOSE signal ``[255, channel]`` (used to end stdin).

When the command ends we send the rest of its output, its status on the error stream
(v4+: a JSON ``metav1.Status`` with the exit code; earlier: the bare error text), and end
the session.  When the client goes away first, the backend task is cancelled (it kills
the process).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from pycrio.streaming import status as kstatus
from pycrio.streaming.backend import StreamIO, TerminalSize
from pycrio.streaming.spdyconn import SpdyStream, accept_streams
from pycrio.streaming.transport import ByteTransport, InputBuffer, SessionLimits, idle_watchdog
from pycrio.streaming.wsconn import WebSocketConnection

log = logging.getLogger(__name__)

SPDY_PROTOCOLS = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
)
WS_PROTOCOLS = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
)
STREAM_TYPES = ("error", "stdin", "stdout", "stderr", "resize")
CH_STDIN, CH_STDOUT, CH_STDERR, CH_ERROR, CH_RESIZE = 0, 1, 2, 3, 4
CH_CLOSE = 255
MAX_RESIZE_BUFFER = 64 * 1024
INITIAL_SIZE_WAIT = 0.25

Runner = Callable[[StreamIO], Coroutine[Any, Any, int | None]]


@dataclass(frozen=True, slots=True)
class Options:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool

    def normalized(self) -> Options:
        # A terminal merges stderr into stdout.
        return Options(self.stdin, self.stdout, self.stderr and not self.tty, self.tty)


def protocol_version(name: str) -> int:
    for version in (5, 4, 3, 2):
        if name.startswith(f"v{version}."):
            return version
    return 1


class ResizeDecoder:
    """Splits a byte stream of concatenated JSON objects into terminal sizes."""

    def __init__(self) -> None:
        self._buf = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[TerminalSize]:
        self._buf += data.decode("utf-8", errors="replace")
        out: list[TerminalSize] = []
        while True:
            text = self._buf.lstrip()
            if not text:
                self._buf = ""
                return out
            try:
                obj, end = self._decoder.raw_decode(text)
            except ValueError:
                if len(text) > MAX_RESIZE_BUFFER:
                    raise ValueError("resize stream is not JSON") from None
                self._buf = text
                return out
            self._buf = text[end:]
            size = _terminal_size(obj)
            if size is not None:
                out.append(size)


def _terminal_size(obj: Any) -> TerminalSize | None:
    if not isinstance(obj, dict):
        return None
    # Go's JSON decoding matches field names case-insensitively.
    low = {str(k).lower(): v for k, v in obj.items()}
    width, height = low.get("width", 0), low.get("height", 0)
    if not isinstance(width, int) or not isinstance(height, int):
        return None
    return TerminalSize(width & 0xFFFF, height & 0xFFFF)


async def execute(io: StreamIO, runner: Runner) -> dict[str, Any] | None:
    """Run the backend; its status, or None when the client went away first."""
    task = asyncio.create_task(runner(io))
    gone = asyncio.create_task(io.client_gone.wait())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return None
    exc = task.exception()
    if exc is not None:
        log.warning("streaming backend failed: %s", exc, exc_info=exc)
        return kstatus.internal_error(str(exc))
    code = task.result()
    return kstatus.success() if not code else kstatus.exit_code(code)


# ---------------------------------------------------------------- SPDY


class _SpdyOutput:
    def __init__(self, stream: SpdyStream) -> None:
        self.stream = stream

    async def write(self, data: bytes) -> None:
        await self.stream.write(data)

    async def close(self) -> None:
        await self.stream.close()


async def _pump_resize(
    source: SpdyStream | InputBuffer, queue: asyncio.Queue[TerminalSize | None], first: asyncio.Event
) -> None:
    decoder = ResizeDecoder()
    try:
        while data := await source.read(65536):
            for size in decoder.feed(data):
                queue.put_nowait(size)
                first.set()
    except ValueError as exc:
        log.info("ignoring resize stream: %s", exc)
    finally:
        queue.put_nowait(None)
        first.set()


async def _await_initial_size(first: asyncio.Event) -> None:
    """Give the client a moment to send the terminal size before the process starts, so the
    command sees the right size from its first instruction (clients send it right away)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(INITIAL_SIZE_WAIT):
            await first.wait()


async def _collect_spdy_streams(
    queue: asyncio.Queue[SpdyStream | None], expected: int, version: int
) -> dict[str, SpdyStream] | None:
    streams: dict[str, SpdyStream] = {}
    received = 0
    while received < expected:
        st = await queue.get()
        if st is None:
            return None
        kind = st.header("streamtype")
        if kind not in STREAM_TYPES or (kind == "resize" and version < 3):
            log.info("rejecting stream with unexpected type %r", kind)
            st.reject()
            continue
        if kind in streams:
            streams[kind].reset()
        st.accept()
        streams[kind] = st
        received += 1
    return streams


async def serve_spdy(
    transport: ByteTransport, protocol: str, opts: Options, runner: Runner, limits: SessionLimits
) -> None:
    opts = opts.normalized()
    version = protocol_version(protocol)
    conn, queue, reader = accept_streams(transport, limits)
    resize_task: asyncio.Task[None] | None = None
    try:
        expected = 1 + opts.stdin + opts.stdout + opts.stderr + (opts.tty and version >= 3)
        try:
            async with asyncio.timeout(limits.stream_creation_timeout):
                streams = await _collect_spdy_streams(queue, expected, version)
        except TimeoutError:
            log.info("timed out waiting for the client to create streams")
            return
        if streams is None:
            return
        resize: asyncio.Queue[TerminalSize | None] = asyncio.Queue()
        if "resize" in streams:
            first_size = asyncio.Event()
            resize_task = asyncio.create_task(_pump_resize(streams["resize"], resize, first_size))
            await _await_initial_size(first_size)
        else:
            resize.put_nowait(None)
        gone = asyncio.Event()
        conn_watch = asyncio.create_task(_set_when(conn.closed, gone))
        io = StreamIO(
            stdin=streams.get("stdin") if opts.stdin else None,
            stdout=_SpdyOutput(streams["stdout"]) if opts.stdout and "stdout" in streams else None,
            stderr=_SpdyOutput(streams["stderr"]) if opts.stderr and "stderr" in streams else None,
            tty=opts.tty,
            resize=resize,
            client_gone=gone,
        )
        try:
            result = await execute(io, runner)
        finally:
            conn_watch.cancel()
        if result is None or conn.closed.is_set():
            return
        with contextlib.suppress(ConnectionError):
            for kind in ("stdout", "stderr"):
                if kind in streams:
                    await streams[kind].close()
            if "error" in streams:
                payload = kstatus.encode(result, json_status=version >= 4)
                if payload:
                    await streams["error"].write(payload)
                await streams["error"].close()
    finally:
        if resize_task is not None:
            resize_task.cancel()
        await conn.shutdown()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


# ---------------------------------------------------------------- WebSocket


class _WsOutput:
    def __init__(self, conn: WebSocketConnection, channel: int, b64: bool) -> None:
        self.conn = conn
        self.channel = channel
        self.b64 = b64

    async def write(self, data: bytes) -> None:
        await send_channel(self.conn, self.channel, data, self.b64)

    async def close(self) -> None:
        return None


async def send_channel(conn: WebSocketConnection, channel: int, data: bytes, b64: bool) -> None:
    if b64:
        await conn.send(str(channel).encode() + base64.b64encode(data), binary=False)
    else:
        await conn.send(bytes((channel,)) + data)


def decode_channel_message(data: bytes, b64: bool) -> tuple[int, bytes]:
    """(channel, payload) of one channel-protocol message; raises ValueError if malformed."""
    if not data:
        raise ValueError("empty message")
    if b64:
        channel = data[0] - ord("0")
        return channel, base64.b64decode(data[1:], validate=False)
    return data[0], data[1:]


async def serve_ws(
    conn: WebSocketConnection, protocol: str, opts: Options, runner: Runner, limits: SessionLimits
) -> None:
    opts = opts.normalized()
    version = protocol_version(protocol)
    b64 = "base64" in protocol
    stdin = InputBuffer()
    resize_bytes = InputBuffer()
    resize: asyncio.Queue[TerminalSize | None] = asyncio.Queue()
    gone = asyncio.Event()

    async def read_loop() -> None:
        try:
            while (msg := await conn.receive()) is not None:
                try:
                    channel, payload = decode_channel_message(msg.data, b64)
                except ValueError:
                    continue
                if channel == CH_CLOSE and payload:
                    if payload[0] == CH_STDIN:
                        stdin.feed_eof()
                    elif payload[0] == CH_RESIZE:
                        resize_bytes.feed_eof()
                elif channel == CH_STDIN and opts.stdin:
                    stdin.feed(payload)
                    await stdin.wait_drained()
                elif channel == CH_RESIZE and opts.tty:
                    resize_bytes.feed(payload)
        finally:
            stdin.feed_eof()
            resize_bytes.feed_eof()
            gone.set()

    reader = asyncio.create_task(read_loop())
    first_size = asyncio.Event()
    resize_task = asyncio.create_task(_pump_resize(resize_bytes, resize, first_size))
    watchdog = None
    if limits.idle_timeout:
        watchdog = asyncio.create_task(
            idle_watchdog(lambda: conn.last_activity, limits.idle_timeout, conn.abort)
        )
    try:
        # Tell the client the session is up: an empty message on the lowest writable channel.
        first = CH_STDOUT if opts.stdout else CH_STDERR if opts.stderr else CH_ERROR
        await send_channel(conn, first, b"", b64)
        if opts.tty:
            await _await_initial_size(first_size)
        io = StreamIO(
            stdin=stdin if opts.stdin else None,
            stdout=_WsOutput(conn, CH_STDOUT, b64) if opts.stdout else None,
            stderr=_WsOutput(conn, CH_STDERR, b64) if opts.stderr else None,
            tty=opts.tty,
            resize=resize,
            client_gone=gone,
        )
        result = await execute(io, runner)
        stdin.discard()  # nobody reads stdin any more: never let it stall the read loop
        if result is not None and not conn.closed.is_set():
            payload = kstatus.encode(result, json_status=version >= 4)
            if payload:
                with contextlib.suppress(ConnectionError):
                    await send_channel(conn, CH_ERROR, payload, b64)
    except ConnectionError:
        pass
    finally:
        resize_task.cancel()
        if watchdog is not None:
            watchdog.cancel()
        await conn.close()
        reader.cancel()
        await asyncio.gather(reader, resize_task, return_exceptions=True)
