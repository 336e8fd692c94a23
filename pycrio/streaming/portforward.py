"""Kubernetes port-forward over SPDY (``portforward.k8s.io``) or WebSocket channels.

SPDY: per forwarded connection the client opens an ``error`` and a ``data`` stream carrying
the headers ``port`` and ``requestID``; many pairs may be live at once.  Data flows between
the data stream and a TCP connection the backend opens in the pod; a failure is written to
the error stream as ``{"closeConnection":…,"message":…}``.  The client may also reach us
through ``SPDY/3.1+portforward.k8s.io`` (the same frames inside WebSocket messages).

WebSocket channels: for the i-th requested port, channel 2i carries data and 2i+1 errors;
each starts with the port as 2 little-endian bytes.  ``[255, ch]`` from the client ends its
data on channel ch.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os

from pycrio.streaming.backend import PortForwardBackend
from pycrio.streaming.remotecommand import decode_channel_message, send_channel
from pycrio.streaming.spdyconn import SpdyStream, StreamResetError, accept_streams
from pycrio.streaming.transport import ByteTransport, InputBuffer, SessionLimits, idle_watchdog
from pycrio.streaming.wsconn import WebSocketConnection

log = logging.getLogger(__name__)

SPDY_PROTOCOLS = ("portforward.k8s.io",)
TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
WS_PROTOCOLS = (
    TUNNEL_PROTOCOL,
    "portforward.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
)
COPY_SIZE = 256 * 1024
_BENIGN = (errno.EPIPE, errno.ECONNRESET)


def parse_port(value: str) -> int:
    port = int(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {value!r} out of range")
    return port


def error_message(pod_id: str, port: int, exc: BaseException) -> str:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno:
        detail = os.strerror(exc.errno).lower()
    return f"error forwarding port {port} to pod {pod_id}, uid : {detail}"


async def _copy_out(reader: asyncio.StreamReader, sink: SpdyStream | _WsData) -> None:
    """Pod -> client until the pod closes its side."""
    while data := await reader.read(COPY_SIZE):
        await sink.write(data)


async def _copy_in(source: SpdyStream | InputBuffer, writer: asyncio.StreamWriter) -> None:
    """Client -> pod until the client ends its data; then half-close towards the pod."""
    while data := await source.read(COPY_SIZE):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        async with asyncio.timeout(2):
            await writer.wait_closed()


# ---------------------------------------------------------------- SPDY


class _Pair:
    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.data: SpdyStream | None = None
        self.error: SpdyStream | None = None
        self.complete = asyncio.Event()


async def _pump_pair(data: SpdyStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy both ways until both directions ended or the client reset the data stream."""
    out = asyncio.create_task(_copy_out(reader, data))
    inn = asyncio.create_task(_copy_in(data, writer))
    pending: set[asyncio.Task[None]] = {out, inn}
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if isinstance(exc, StreamResetError):
                    return  # the client ended the stream; nothing to report
                if exc is not None:
                    raise exc
            if out in done:
                await data.close()
            if data.reset_status is not None:
                return
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _forward_spdy_pair(pair: _Pair, pod_id: str, backend: PortForwardBackend) -> None:
    data, err = pair.data, pair.error
    assert data is not None and err is not None
    port = parse_port(data.header("port"))
    failure: BaseException | None = None
    try:
        reader, writer = await backend.port_forward(pod_id, port)
    except Exception as exc:
        failure = exc
    else:
        try:
            await _pump_pair(data, reader, writer)
        except Exception as exc:
            failure = exc
        finally:
            await _close_writer(writer)
    with contextlib.suppress(ConnectionError):
        if failure is not None and data.reset_status is None:
            log.info("port-forward %s:%d failed: %s", pod_id, port, failure)
            benign = isinstance(failure, OSError) and failure.errno in _BENIGN
            body = {"closeConnection": not benign, "message": error_message(pod_id, port, failure)}
            await err.write(json.dumps(body).encode() + b"\n")
        await err.close()
        await data.close()


async def serve_spdy(
    transport: ByteTransport, pod_id: str, backend: PortForwardBackend, limits: SessionLimits
) -> None:
    conn, queue, reader = accept_streams(transport, limits)
    pairs: dict[str, _Pair] = {}

    async def watch_pair(pair: _Pair) -> None:
        try:
            async with asyncio.timeout(limits.stream_creation_timeout):
                await pair.complete.wait()
        except TimeoutError:
            log.info("port-forward request %s: timed out waiting for streams", pair.request_id)
            for st in (pair.error, pair.data):
                if st is not None:
                    with contextlib.suppress(ConnectionError):
                        await st.write(f"timed out waiting for streams of request {pair.request_id}".encode())
                        await st.close()
        finally:
            pairs.pop(pair.request_id, None)

    try:
        async with asyncio.TaskGroup() as tg:
            while (st := await queue.get()) is not None:
                kind = st.header("streamtype")
                try:
                    parse_port(st.header("port"))
                except ValueError:
                    st.reject()
                    continue
                if kind not in ("data", "error"):
                    st.reject()
                    continue
                request_id = st.header("requestid")
                if not request_id:
                    # Old clients: pair consecutive stream ids (error n, data n+2).
                    request_id = str(st.stream_id if kind == "error" else st.stream_id - 2)
                pair = pairs.get(request_id)
                if pair is None:
                    pair = pairs[request_id] = _Pair(request_id)
                    tg.create_task(watch_pair(pair))
                if getattr(pair, kind) is not None:
                    st.reject()
                    continue
                st.accept()
                setattr(pair, kind, st)
                if pair.data is not None and pair.error is not None:
                    pair.complete.set()
                    tg.create_task(_forward_spdy_pair(pair, pod_id, backend))
            # The client is gone: stop whatever is still forwarding.
            raise _SessionOver
    except* _SessionOver:
        pass
    finally:
        await conn.shutdown(reset_streams=True, linger=0.5)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


class _SessionOver(Exception):
    pass


# ---------------------------------------------------------------- WebSocket channels


class _WsData:
    def __init__(self, conn: WebSocketConnection, channel: int, b64: bool) -> None:
        self.conn, self.channel, self.b64 = conn, channel, b64

    async def write(self, data: bytes) -> None:
        await send_channel(self.conn, self.channel, data, self.b64)


async def _forward_ws_port(
    conn: WebSocketConnection,
    index: int,
    port: int,
    source: InputBuffer,
    pod_id: str,
    backend: PortForwardBackend,
    b64: bool,
) -> None:
    data = _WsData(conn, 2 * index, b64)
    try:
        reader, writer = await backend.port_forward(pod_id, port)
    except Exception as exc:
        source.discard()
        await send_channel(conn, 2 * index + 1, error_message(pod_id, port, exc).encode(), b64)
        return
    inn = asyncio.create_task(_copy_in(source, writer))
    try:
        await _copy_out(reader, data)
    except (ConnectionResetError, BrokenPipeError):
        pass
    except OSError as exc:
        await send_channel(conn, 2 * index + 1, error_message(pod_id, port, exc).encode(), b64)
    finally:
        inn.cancel()
        await asyncio.gather(inn, return_exceptions=True)
        source.discard()
        await _close_writer(writer)


async def serve_ws(
    conn: WebSocketConnection,
    protocol: str,
    ports: list[int],
    pod_id: str,
    backend: PortForwardBackend,
    limits: SessionLimits,
) -> None:
    b64 = "base64" in protocol
    sources = [InputBuffer() for _ in ports]

    async def read_loop() -> None:
        try:
            while (msg := await conn.receive()) is not None:
                try:
                    channel, payload = decode_channel_message(msg.data, b64)
                except ValueError:
                    continue
                if channel == 255 and payload and payload[0] % 2 == 0 and payload[0] // 2 < len(sources):
                    sources[payload[0] // 2].feed_eof()
                elif channel % 2 == 0 and channel // 2 < len(sources):
                    src = sources[channel // 2]
                    src.feed(payload)
                    await src.wait_drained()
        finally:
            for src in sources:
                src.feed_eof()

    reader = asyncio.create_task(read_loop())
    watchdog = None
    if limits.idle_timeout:
        watchdog = asyncio.create_task(
            idle_watchdog(lambda: conn.last_activity, limits.idle_timeout, conn.abort)
        )
    try:
        for i, port in enumerate(ports):
            prefix = port.to_bytes(2, "little")
            await send_channel(conn, 2 * i, prefix, b64)
            await send_channel(conn, 2 * i + 1, prefix, b64)
        await asyncio.gather(
            *(
                _forward_ws_port(conn, i, port, sources[i], pod_id, backend, b64)
                for i, port in enumerate(ports)
            )
        )
    except ConnectionError:
        pass
    finally:
        if watchdog is not None:
            watchdog.cancel()
        await conn.close()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
