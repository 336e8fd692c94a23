"""Client side of the streaming protocols (tests and ``pycrioctl``): dial with an HTTP upgrade,
then exec/attach or port-forward over SPDY/3.1 or WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from pycrio.streaming import status as kstatus
from pycrio.streaming import websocket as ws
from pycrio.streaming.http import parse_head
from pycrio.streaming.portforward import TUNNEL_PROTOCOL
from pycrio.streaming.remotecommand import (
    CH_CLOSE,
    CH_ERROR,
    CH_RESIZE,
    CH_STDERR,
    CH_STDIN,
    CH_STDOUT,
    decode_channel_message,
    protocol_version,
    send_channel,
)
from pycrio.streaming.spdyconn import SpdyConnection, SpdyStream
from pycrio.streaming.transport import ByteTransport, InputBuffer, StreamTransport
from pycrio.streaming.wsconn import WebSocketConnection, WebSocketTransport

SPDY_EXEC_PROTOCOLS = ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]
WS_EXEC_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
CLIENT_WINDOW = 1024 * 1024
CLIENT_SESSION_WINDOW = 8 * 1024 * 1024


class UpgradeError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"upgrade failed: HTTP {status}: {body.decode(errors='replace').strip()}")
        self.status = status
        self.body = body


async def dial(
    url: str,
    *,
    websocket: bool,
    protocols: list[str],
    method: str = "POST",
    ssl_context: ssl.SSLContext | None = None,
    query: str = "",
) -> tuple[StreamTransport, str]:
    """Connect and upgrade; returns the transport and the negotiated protocol ("" if none)."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    if tls and ssl_context is None:
        ssl_context = ssl.create_default_context()
    reader, writer = await asyncio.open_connection(
        parts.hostname, parts.port or (443 if tls else 80), ssl=ssl_context if tls else None, limit=1 << 20
    )
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if query:
        target += ("&" if "?" in target else "?") + query
    host = parts.netloc
    key = ws.new_client_key()
    lines = [f"{'GET' if websocket else method} {target} HTTP/1.1", f"Host: {host}", "Connection: Upgrade"]
    if websocket:
        lines += ["Upgrade: websocket", "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Key: {key}"]
        if protocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    else:
        lines += ["Upgrade: SPDY/3.1", "Content-Length: 0"]
        lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        status = int(status_line.split(" ")[1])
        resp = parse_head(b"GET / HTTP/1.1\r\n" + head.split(b"\r\n", 1)[1][:-4])
        if status != 101:
            n = int(resp.header("content-length") or 0)
            body = await reader.readexactly(n) if n else b""
            raise UpgradeError(status, body)
        if websocket:
            if resp.header("sec-websocket-accept") != ws.accept_key(key):
                raise UpgradeError(status, b"bad Sec-WebSocket-Accept")
            chosen = resp.header("sec-websocket-protocol")
        else:
            chosen = resp.header("x-stream-protocol-version")
    except BaseException:
        writer.close()
        raise
    return StreamTransport(reader, writer), chosen


class _Runner:
    """Owns the read-loop task of a client connection."""

    task: asyncio.Task[None] | None = None

    async def _stop_task(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


# ---------------------------------------------------------------- remote command


class SpdyRemoteCommand(_Runner):
    def __init__(self, conn: SpdyConnection, protocol: str) -> None:
        self.conn = conn
        self.protocol = protocol
        self.task = asyncio.create_task(conn.run())
        self.error: SpdyStream | None = None
        self.stdin: SpdyStream | None = None
        self.stdout: SpdyStream | None = None
        self.stderr: SpdyStream | None = None
        self.resize_stream: SpdyStream | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
        tty: bool = False,
        protocols: list[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> SpdyRemoteCommand:
        transport, chosen = await dial(
            url, websocket=False, protocols=protocols or SPDY_EXEC_PROTOCOLS, ssl_context=ssl_context
        )
        conn = SpdyConnection(
            transport, client=True, receive_window=CLIENT_WINDOW, session_window=CLIENT_SESSION_WINDOW
        )
        self = cls(conn, chosen)
        try:
            self.error = await conn.open_stream({"streamtype": ["error"]})
            await self.error.close()  # we never write to it
            if stdin:
                self.stdin = await conn.open_stream({"streamtype": ["stdin"]})
            if stdout:
                self.stdout = await conn.open_stream({"streamtype": ["stdout"]})
            if stderr and not tty:
                self.stderr = await conn.open_stream({"streamtype": ["stderr"]})
            if tty and protocol_version(chosen) >= 3:
                self.resize_stream = await conn.open_stream({"streamtype": ["resize"]})
        except BaseException:
            await self.close()
            raise
        return self

    async def write_stdin(self, data: bytes) -> None:
        assert self.stdin is not None
        await self.stdin.write(data)

    async def close_stdin(self) -> None:
        if self.stdin is not None:
            await self.stdin.close()

    async def resize(self, width: int, height: int) -> None:
        if self.resize_stream is not None:
            await self.resize_stream.write(json.dumps({"Width": width, "Height": height}).encode())

    async def wait(self) -> int:
        """The exit code from the error stream (after it ends)."""
        assert self.error is not None
        raw = await self.error.read_all()
        if protocol_version(self.protocol) >= 4:
            return kstatus.decode_exit_code(raw)
        if raw:
            raise RuntimeError(f"error executing remote command: {raw.decode(errors='replace')}")
        return 0

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.conn.shutdown(reset_streams=True, linger=1.0)
        await self._stop_task()


class WsRemoteCommand(_Runner):
    def __init__(self, conn: WebSocketConnection, protocol: str, stdin: bool, tty: bool) -> None:
        self.conn = conn
        self.protocol = protocol
        self.b64 = "base64" in protocol
        self.has_stdin = stdin
        self.tty = tty
        self.stdout = InputBuffer(high_water=1 << 30)
        self.stderr = InputBuffer(high_water=1 << 30)
        self._error = bytearray()
        self.task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        stdin: bool = False,
        tty: bool = False,
        protocols: list[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> WsRemoteCommand:
        transport, chosen = await dial(
            url, websocket=True, protocols=protocols or WS_EXEC_PROTOCOLS, ssl_context=ssl_context
        )
        return cls(WebSocketConnection(transport, client=True), chosen, stdin, tty)

    async def _read_loop(self) -> None:
        try:
            while (msg := await self.conn.receive()) is not None:
                with contextlib.suppress(ValueError):
                    channel, payload = decode_channel_message(msg.data, self.b64)
                    if channel == CH_STDOUT:
                        self.stdout.feed(payload)
                    elif channel == CH_STDERR:
                        self.stderr.feed(payload)
                    elif channel == CH_ERROR:
                        self._error += payload
        finally:
            self.stdout.feed_eof()
            self.stderr.feed_eof()

    async def write_stdin(self, data: bytes) -> None:
        await send_channel(self.conn, CH_STDIN, data, self.b64)

    async def close_stdin(self) -> None:
        if protocol_version(self.protocol) >= 5:
            await self.conn.send(bytes((CH_CLOSE, CH_STDIN)))

    async def resize(self, width: int, height: int) -> None:
        payload = json.dumps({"Width": width, "Height": height}).encode()
        await send_channel(self.conn, CH_RESIZE, payload, self.b64)

    async def wait(self) -> int:
        if self.task is not None:
            await asyncio.shield(self.task)
        if protocol_version(self.protocol) >= 4:
            return kstatus.decode_exit_code(bytes(self._error))
        if self._error:
            raise RuntimeError(f"error executing remote command: {self._error.decode(errors='replace')}")
        return 0

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.conn.close()
        await self._stop_task()


@dataclass
class CommandResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


async def run_command(
    url: str,
    *,
    websocket: bool = False,
    stdin_data: bytes | None = None,
    tty: bool = False,
    size: tuple[int, int] | None = None,
    protocols: list[str] | None = None,
) -> CommandResult:
    """Run a whole exec/attach session and collect its output in memory."""
    session: SpdyRemoteCommand | WsRemoteCommand
    if websocket:
        session = await WsRemoteCommand.connect(
            url, stdin=stdin_data is not None, tty=tty, protocols=protocols
        )
    else:
        session = await SpdyRemoteCommand.connect(
            url, stdin=stdin_data is not None, tty=tty, stderr=not tty, protocols=protocols
        )
    try:
        if size is not None:
            await session.resize(*size)
        if stdin_data is not None:
            await session.write_stdin(stdin_data)
            await session.close_stdin()
        outs = await asyncio.gather(_read_all(session.stdout), _read_all(session.stderr))
        code = await session.wait()
        return CommandResult(code, outs[0], outs[1])
    finally:
        await session.close()


async def _read_all(source: SpdyStream | InputBuffer | None) -> bytes:
    if source is None:
        return b""
    parts = []
    while chunk := await source.read(1 << 20):
        parts.append(chunk)
    return b"".join(parts)


# ---------------------------------------------------------------- port-forward


class PortForwardStream:
    """One forwarded TCP connection (a data/error stream pair)."""

    def __init__(self, data: SpdyStream, error: SpdyStream) -> None:
        self.data = data
        self.error_stream = error

    async def read(self, n: int = 65536) -> bytes:
        return await self.data.read(n)

    async def write(self, data: bytes) -> None:
        await self.data.write(data)

    async def close_write(self) -> None:
        await self.data.close()

    async def error(self) -> str:
        """Everything the server wrote on the error stream (waits for its end)."""
        return (await self.error_stream.read_all()).decode(errors="replace")

    def reset(self) -> None:
        self.data.reset()


class SpdyPortForward(_Runner):
    def __init__(self, conn: SpdyConnection, ws_conn: WebSocketConnection | None = None) -> None:
        self.conn = conn
        self.ws_conn = ws_conn
        self.task = asyncio.create_task(conn.run())
        self._next_request = 0

    @classmethod
    async def connect(
        cls, url: str, *, tunnel: bool = False, ssl_context: ssl.SSLContext | None = None
    ) -> SpdyPortForward:
        ws_conn = None
        transport: ByteTransport
        if tunnel:
            raw, _ = await dial(url, websocket=True, protocols=[TUNNEL_PROTOCOL], ssl_context=ssl_context)
            ws_conn = WebSocketConnection(raw, client=True)
            transport = WebSocketTransport(ws_conn)
        else:
            transport, _ = await dial(
                url, websocket=False, protocols=["portforward.k8s.io"], ssl_context=ssl_context
            )
        conn = SpdyConnection(
            transport, client=True, receive_window=CLIENT_WINDOW, session_window=CLIENT_SESSION_WINDOW
        )
        return cls(conn, ws_conn)

    async def open(self, port: int) -> PortForwardStream:
        request_id = str(self._next_request)
        self._next_request += 1
        headers = {"streamtype": ["error"], "port": [str(port)], "requestid": [request_id]}
        error = await self.conn.open_stream(headers)
        await error.close()
        data = await self.conn.open_stream({**headers, "streamtype": ["data"]})
        return PortForwardStream(data, error)

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.conn.shutdown(reset_streams=True, linger=1.0)
        await self._stop_task()


class WsPortForward(_Runner):
    """Channel-style WebSocket port-forward: channel 2i data, 2i+1 errors, per port."""

    def __init__(self, conn: WebSocketConnection, protocol: str, ports: list[int]) -> None:
        self.conn = conn
        self.b64 = "base64" in protocol
        self.ports = ports
        self.data = [InputBuffer(high_water=1 << 30) for _ in ports]
        self.errors = [bytearray() for _ in ports]
        self._prefix_left = [2] * (2 * len(ports))
        self.task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(
        cls, url: str, ports: list[int], *, protocol: str = "portforward.k8s.io"
    ) -> WsPortForward:
        query = "&".join(f"port={p}" for p in ports)
        transport, chosen = await dial(url, websocket=True, protocols=[protocol], query=query)
        return cls(WebSocketConnection(transport, client=True), chosen, ports)

    async def _read_loop(self) -> None:
        try:
            while (msg := await self.conn.receive()) is not None:
                with contextlib.suppress(ValueError):
                    channel, payload = decode_channel_message(msg.data, self.b64)
                    if channel >= len(self._prefix_left):
                        continue
                    skip = min(self._prefix_left[channel], len(payload))
                    self._prefix_left[channel] -= skip
                    payload = payload[skip:]
                    if channel % 2 == 0:
                        self.data[channel // 2].feed(payload)
                    else:
                        self.errors[channel // 2] += payload
        finally:
            for buf in self.data:
                buf.feed_eof()

    async def write(self, index: int, data: bytes) -> None:
        await send_channel(self.conn, 2 * index, data, self.b64)

    async def close_write(self, index: int) -> None:
        await self.conn.send(bytes((CH_CLOSE, 2 * index)))

    async def read(self, index: int, n: int = 65536) -> bytes:
        return await self.data[index].read(n)

    async def wait_closed(self) -> None:
        if self.task is not None:
            await asyncio.shield(self.task)

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.conn.close()
        await self._stop_task()
