"""The streaming HTTP server: ``/exec/<token>``, ``/attach/<token>``, ``/portforward/<token>``.

The CRI Exec/Attach/PortForward handlers call :meth:`StreamingServer.get_exec_url` (etc.),
which stores the request under a single-use token and returns an absolute URL.  The client
then connects and upgrades to SPDY/3.1 (``X-Stream-Protocol-Version`` negotiation) or to a
WebSocket (``Sec-WebSocket-Protocol``).  Anything else is answered with 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from pycrio.errors import InvalidArgument
from pycrio.streaming import portforward, remotecommand
from pycrio.streaming import websocket as ws
from pycrio.streaming.backend import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    StreamingRequest,
    StreamingRuntime,
    StreamIO,
)
from pycrio.streaming.http import BadRequest, Request, read_request, response
from pycrio.streaming.tokens import DEFAULT_MAX_IN_FLIGHT, DEFAULT_TTL, RequestCache
from pycrio.streaming.transport import SessionLimits, StreamTransport
from pycrio.streaming.wsconn import WebSocketConnection, WebSocketTransport

log = logging.getLogger(__name__)

NOT_FOUND_BODY = b"404 page not found\n"
READER_LIMIT = 1024 * 1024


@dataclass
class StreamingConfig:
    address: str = "127.0.0.1"
    port: int = 0  # 0: a free port is picked
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Host (and port) for the URLs handed out; default: the listening address.
    advertise_address: str | None = None
    token_ttl: float = DEFAULT_TTL
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    idle_timeout: float | None = 4 * 3600.0
    stream_creation_timeout: float = 30.0
    spdy_receive_window: int = 1024 * 1024
    spdy_session_window: int = 8 * 1024 * 1024

    def limits(self) -> SessionLimits:
        return SessionLimits(
            idle_timeout=self.idle_timeout,
            stream_creation_timeout=self.stream_creation_timeout,
            spdy_receive_window=self.spdy_receive_window,
            spdy_session_window=self.spdy_session_window,
        )


def _url_host(host: str) -> str:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    if addr.is_unspecified:
        addr = ipaddress.ip_address("::1" if addr.version == 6 else "127.0.0.1")
    return f"[{addr}]" if addr.version == 6 else str(addr)


class StreamingServer:
    def __init__(self, config: StreamingConfig, runtime: StreamingRuntime) -> None:
        self.config = config
        self.runtime = runtime
        self.cache: RequestCache[StreamingRequest] = RequestCache(config.token_ttl, config.max_in_flight)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._base_url = ""
        self.port = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        tls: ssl.SSLContext | None = None
        if self.config.tls_cert_file:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self.config.tls_cert_file, self.config.tls_key_file)
        self._server = await asyncio.start_server(
            self._on_client,
            self.config.address,
            self.config.port,
            ssl=tls,
            limit=READER_LIMIT,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if tls is not None else "http"
        host = self.config.advertise_address or f"{_url_host(self.config.address)}:{self.port}"
        self._base_url = f"{scheme}://{host}"
        log.info("streaming server listening on %s", self._base_url)

    async def stop(self) -> None:
        """Stop listening and end every session (backends are cancelled: processes die)."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()
            self._server = None

    @property
    def base_url(self) -> str:
        return self._base_url

    # ------------------------------------------------------------ URLs for the CRI handlers

    def get_exec_url(
        self,
        container_id: str,
        cmd: Sequence[str],
        *,
        tty: bool = False,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
    ) -> str:
        if not container_id:
            raise InvalidArgument("missing required container_id")
        if not cmd:
            raise InvalidArgument("missing required cmd")
        _check_stdio(tty, stdin, stdout, stderr)
        return self._url("exec", ExecRequest(container_id, tuple(cmd), tty, stdin, stdout, stderr))

    def get_attach_url(
        self,
        container_id: str,
        *,
        tty: bool = False,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
    ) -> str:
        if not container_id:
            raise InvalidArgument("missing required container_id")
        _check_stdio(tty, stdin, stdout, stderr)
        return self._url("attach", AttachRequest(container_id, tty, stdin, stdout, stderr))

    def get_portforward_url(self, pod_sandbox_id: str, ports: Sequence[int] = ()) -> str:
        if not pod_sandbox_id:
            raise InvalidArgument("missing required pod_sandbox_id")
        return self._url("portforward", PortForwardRequest(pod_sandbox_id, tuple(int(p) for p in ports)))

    def _url(self, kind: str, request: StreamingRequest) -> str:
        if not self._base_url:
            raise RuntimeError("streaming server is not started")
        return f"{self._base_url}/{kind}/{self.cache.insert(request)}"

    # ------------------------------------------------------------ connections

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Server shutdown: the session is cleaned up; end the task quietly.
        except Exception:
            log.exception("streaming session failed")
        finally:
            self._sessions.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(30):
                req = await read_request(reader)
        except (BadRequest, TimeoutError, ConnectionError) as exc:
            log.debug("bad streaming request: %s", exc)
            with contextlib.suppress(ConnectionError):
                writer.write(response(400, body=b"bad request\n"))
                await writer.drain()
            return
        parts = req.path.split("/")
        request: StreamingRequest | None = None
        if req.method in ("GET", "POST") and len(parts) == 3 and parts[0] == "" and parts[2]:
            request = self.cache.consume(parts[2])
        kind = parts[1] if len(parts) == 3 else ""
        expected = {"exec": ExecRequest, "attach": AttachRequest, "portforward": PortForwardRequest}.get(kind)
        if request is None or expected is None or not isinstance(request, expected):
            await _reply(writer, 404, body=NOT_FOUND_BODY)
            return
        transport = StreamTransport(reader, writer)
        if "websocket" in req.header_tokens("upgrade") and "upgrade" in req.header_tokens("connection"):
            await self._serve_websocket(req, request, transport)
        elif "spdy/3.1" in req.header_tokens("upgrade") and "upgrade" in req.header_tokens("connection"):
            await self._serve_spdy(req, request, transport)
        else:
            await _reply(writer, 400, body=b"unable to upgrade: missing upgrade headers in request\n")

    async def _serve_spdy(self, req: Request, request: StreamingRequest, transport: StreamTransport) -> None:
        writer = transport.writer
        supported = (
            portforward.SPDY_PROTOCOLS
            if isinstance(request, PortForwardRequest)
            else remotecommand.SPDY_PROTOCOLS
        )
        offered = [
            p
            for v in req.header_values("x-stream-protocol-version")
            for p in (x.strip() for x in v.split(","))
            if p
        ]
        chosen = next((p for p in offered if p in supported), None)
        if offered and chosen is None:
            headers = [("X-Accepted-Stream-Protocol-Versions", p) for p in supported]
            msg = (
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                f"server accepts {list(supported)}\n"
            )
            await _reply(writer, 403, headers, msg.encode())
            return
        log.debug("%s %s: SPDY/3.1 upgrade, protocol %r", req.method, req.path.rsplit("/", 1)[0], chosen)
        headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
        if chosen:
            headers.append(("X-Stream-Protocol-Version", chosen))
        writer.write(response(101, headers))
        limits = self.config.limits()
        if isinstance(request, PortForwardRequest):
            await portforward.serve_spdy(transport, request.pod_sandbox_id, self.runtime, limits)
            return
        opts = remotecommand.Options(request.stdin, request.stdout, request.stderr, request.tty)
        await remotecommand.serve_spdy(transport, chosen or "", opts, self._runner(request), limits)

    async def _serve_websocket(
        self, req: Request, request: StreamingRequest, transport: StreamTransport
    ) -> None:
        writer = transport.writer
        key = req.header("sec-websocket-key")
        if req.header("sec-websocket-version") != "13":
            await _reply(writer, 426, [("Sec-WebSocket-Version", "13")], b"unsupported websocket version\n")
            return
        if not ws.valid_client_key(key):
            await _reply(writer, 400, body=b"missing or invalid Sec-WebSocket-Key\n")
            return
        is_pf = isinstance(request, PortForwardRequest)
        supported = portforward.WS_PROTOCOLS if is_pf else remotecommand.WS_PROTOCOLS
        offered = ws.parse_protocols(req.header_values("sec-websocket-protocol"))
        chosen = next((p for p in offered if p in supported), None)
        if offered and chosen is None:
            await _reply(writer, 403, body=f"requested protocol(s) are not supported: {offered}\n".encode())
            return
        ports: list[int] = []
        if isinstance(request, PortForwardRequest) and chosen != portforward.TUNNEL_PROTOCOL:
            try:
                ports = [
                    portforward.parse_port(p)
                    for v in req.query.get("port", []) + req.query.get("ports", [])
                    for p in v.split(",")
                ] or list(request.ports)
            except ValueError as exc:
                await _reply(writer, 400, body=f"{exc}\n".encode())
                return
            if not ports:
                await _reply(writer, 400, body=b'query parameter "port" is required\n')
                return
        log.debug("%s %s: WebSocket upgrade, protocol %r", req.method, req.path.rsplit("/", 1)[0], chosen)
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", ws.accept_key(key)),
        ]
        if chosen:
            headers.append(("Sec-WebSocket-Protocol", chosen))
        writer.write(response(101, headers))
        conn = WebSocketConnection(transport, client=False)
        limits = self.config.limits()
        if isinstance(request, PortForwardRequest):
            if chosen == portforward.TUNNEL_PROTOCOL:
                await portforward.serve_spdy(
                    WebSocketTransport(conn), request.pod_sandbox_id, self.runtime, limits
                )
                await conn.close()
            else:
                await portforward.serve_ws(
                    conn, chosen or "", ports, request.pod_sandbox_id, self.runtime, limits
                )
            return
        opts = remotecommand.Options(request.stdin, request.stdout, request.stderr, request.tty)
        await remotecommand.serve_ws(conn, chosen or "", opts, self._runner(request), limits)

    def _runner(self, request: ExecRequest | AttachRequest) -> remotecommand.Runner:
        runtime = self.runtime

        if isinstance(request, ExecRequest):

            async def run_exec(io: StreamIO) -> int | None:
                return await runtime.exec(request.container_id, request.cmd, request.tty, request.stdin, io)

            return run_exec

        async def run_attach(io: StreamIO) -> int | None:
            await runtime.attach(request.container_id, request.tty, request.stdin, io)
            return None

        return run_attach


def _check_stdio(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    if tty and stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (stdin or stdout or stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")


async def _reply(
    writer: asyncio.StreamWriter, status: int, headers: list[tuple[str, str]] | None = None, body: bytes = b""
) -> None:
    with contextlib.suppress(ConnectionError):
        writer.write(response(status, headers, body))
        await writer.drain()
