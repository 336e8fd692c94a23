"""exec/attach end to end: a real server, real host processes (busybox), SPDY and WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence

import pytest

from pycrio.streaming import client as sc
from pycrio.streaming.backend import StreamIO
from pycrio.streaming.netns import connect_in_netns
from pycrio.streaming.process import run_bridged
from pycrio.streaming.server import StreamingConfig, StreamingServer

BUSYBOX = "/bin/busybox"
# A clean environment: busybox lets LINES/COLUMNS override the terminal's real size.
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TERM": "xterm"}
pytestmark = pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="needs busybox-static")


class LocalRuntime:
    """A test backend: 'containers' are the host, exec runs argv locally, port-forward dials
    the given network namespace (or the host)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.attach_cmd: list[str] = [BUSYBOX, "cat"]

    async def exec(self, container_id: str, cmd: Sequence[str], tty: bool, stdin: bool, io: StreamIO) -> int:
        return await run_bridged(cmd, tty, stdin, io, env=ENV)

    async def attach(self, container_id: str, tty: bool, stdin: bool, io: StreamIO) -> None:
        await run_bridged(self.attach_cmd, tty, stdin, io, env=ENV)

    async def port_forward(self, pod_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await connect_in_netns(self.netns, "127.0.0.1", port)


@contextlib.asynccontextmanager
async def running_server(runtime: LocalRuntime, **config: object) -> AsyncIterator[StreamingServer]:
    server = StreamingServer(StreamingConfig(**config), runtime)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def server() -> AsyncIterator[StreamingServer]:
    async with running_server(LocalRuntime()) as srv:
        yield srv


def sh(script: str) -> list[str]:
    return [BUSYBOX, "sh", "-c", script]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


async def wait_gone(pid: int, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if not alive(pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} still running")


TRANSPORTS = pytest.mark.parametrize("websocket", [False, True], ids=["spdy", "ws"])


@TRANSPORTS
async def test_exec_separates_streams_and_reports_exit_code(server: StreamingServer, websocket: bool) -> None:
    url = server.get_exec_url("c", sh("echo out; echo err >&2; exit 3"))
    result = await sc.run_command(url, websocket=websocket)
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    url = server.get_exec_url("c", sh("true"))
    assert (await sc.run_command(url, websocket=websocket)).exit_code == 0


@TRANSPORTS
async def test_exec_stdin_is_piped_and_closed(server: StreamingServer, websocket: bool) -> None:
    url = server.get_exec_url("c", [BUSYBOX, "cat"], stdin=True)
    data = b"".join(b"line %d\n" % i for i in range(5000))
    protocols = ["v5.channel.k8s.io"] if websocket else None
    result = await sc.run_command(url, websocket=websocket, stdin_data=data, protocols=protocols)
    assert result.exit_code == 0 and result.stdout == data


@TRANSPORTS
async def test_exec_tty_resize_changes_stty_size(server: StreamingServer, websocket: bool) -> None:
    url = server.get_exec_url("c", sh(f"read x; {BUSYBOX} stty size"), tty=True, stdin=True, stderr=False)
    result = await sc.run_command(url, websocket=websocket, tty=True, stdin_data=b"go\n", size=(123, 45))
    assert result.exit_code == 0
    assert b"45 123" in result.stdout
    assert result.stderr == b""


@TRANSPORTS
async def test_exec_tty_resize_mid_session(server: StreamingServer, websocket: bool) -> None:
    script = f"read x; {BUSYBOX} stty size; read x; {BUSYBOX} stty size"
    url = server.get_exec_url("c", sh(script), tty=True, stdin=True, stderr=False)
    session: sc.SpdyRemoteCommand | sc.WsRemoteCommand
    if websocket:
        session = await sc.WsRemoteCommand.connect(url, stdin=True, tty=True)
    else:
        session = await sc.SpdyRemoteCommand.connect(url, stdin=True, tty=True, stderr=False)
    try:
        await session.resize(80, 24)
        await session.write_stdin(b"\n")  # applied before this input reaches the shell
        assert session.stdout is not None
        seen = b""
        while b"24 80" not in seen:
            chunk = await asyncio.wait_for(session.stdout.read(), 10)
            assert chunk, seen
            seen += chunk
        await session.resize(132, 50)
        await session.write_stdin(b"x\n")
        while chunk := await asyncio.wait_for(session.stdout.read(), 10):
            seen += chunk
        assert b"50 132" in seen
        assert await session.wait() == 0
    finally:
        await session.close()


@TRANSPORTS
async def test_exec_ten_megabytes_arrive_whole_and_in_order(server: StreamingServer, websocket: bool) -> None:
    url = server.get_exec_url("c", [BUSYBOX, "seq", "1", "1400000"])
    result = await sc.run_command(url, websocket=websocket)
    expected = b"".join(b"%d\n" % i for i in range(1, 1400001))
    assert len(expected) > 10_000_000
    assert result.exit_code == 0 and result.stdout == expected


async def test_exec_old_protocols_report_errors_as_text(server: StreamingServer) -> None:
    for proto in ("v3.channel.k8s.io", "v2.channel.k8s.io"):
        url = server.get_exec_url("c", sh("echo x; exit 5"))
        session = await sc.SpdyRemoteCommand.connect(url, protocols=[proto])
        try:
            assert session.protocol == proto
            assert session.stdout is not None
            assert await session.stdout.read() == b"x\n"
            with pytest.raises(RuntimeError, match="non-zero exit code"):
                await session.wait()
        finally:
            await session.close()


@TRANSPORTS
async def test_exec_backend_failure_is_an_internal_error(server: StreamingServer, websocket: bool) -> None:
    url = server.get_exec_url("c", ["/nonexistent/binary"])
    with pytest.raises(RuntimeError, match="Internal error occurred"):
        await sc.run_command(url, websocket=websocket)


async def test_ws_base64_protocol(server: StreamingServer) -> None:
    url = server.get_exec_url("c", sh("printf '\\001\\377'; echo e >&2"))
    result = await sc.run_command(url, websocket=True, protocols=["v4.base64.channel.k8s.io"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"\x01\xff", b"e\n")


@TRANSPORTS
async def test_client_vanishing_kills_the_process(server: StreamingServer, websocket: bool) -> None:
    # A chatty process (fails on write) and a silent one with a background child (connection loss).
    for script in ("echo $$; while :; do echo y; done", f"{BUSYBOX} sleep 1000 & echo $!; wait"):
        url = server.get_exec_url("c", sh(script))
        session: sc.SpdyRemoteCommand | sc.WsRemoteCommand
        if websocket:
            session = await sc.WsRemoteCommand.connect(url)
        else:
            session = await sc.SpdyRemoteCommand.connect(url)
        assert session.stdout is not None
        first = b""
        while b"\n" not in first:
            first += await asyncio.wait_for(session.stdout.read(), 10)
        pid = int(first.split(b"\n")[0])
        assert alive(pid)
        # Vanish: drop the TCP connection without any goodbye.
        session.conn.transport.close()  # type: ignore[union-attr]
        await session._stop_task()
        await wait_gone(pid)


async def test_attach_uses_the_attach_backend(server: StreamingServer) -> None:
    url = server.get_attach_url("c", stdin=True, stdout=True, stderr=True)
    result = await sc.run_command(url, stdin_data=b"attached\n")
    assert result.stdout == b"attached\n" and result.exit_code == 0


async def test_stream_creation_timeout_closes_the_connection() -> None:
    async with running_server(LocalRuntime(), stream_creation_timeout=0.3) as srv:
        url = srv.get_exec_url("c", sh("echo never"))
        transport, proto = await sc.dial(url, websocket=False, protocols=["v4.channel.k8s.io"])
        assert proto == "v4.channel.k8s.io"
        try:
            async with asyncio.timeout(10):
                while await transport.read(65536):
                    pass  # GOAWAY and then EOF
        finally:
            transport.close()


@TRANSPORTS
async def test_idle_timeout_ends_session_and_process(websocket: bool) -> None:
    async with running_server(LocalRuntime(), idle_timeout=0.5) as srv:
        url = srv.get_exec_url("c", sh(f"echo $$; exec {BUSYBOX} sleep 1000"))
        session: sc.SpdyRemoteCommand | sc.WsRemoteCommand
        if websocket:
            session = await sc.WsRemoteCommand.connect(url)
        else:
            session = await sc.SpdyRemoteCommand.connect(url)
        try:
            assert session.stdout is not None
            pid = int(await asyncio.wait_for(session.stdout.read(), 10))
            async with asyncio.timeout(10):
                while await session.stdout.read():
                    pass
            await wait_gone(pid)
        finally:
            await session.close()


async def test_server_stop_kills_running_sessions() -> None:
    srv = StreamingServer(StreamingConfig(), LocalRuntime())
    await srv.start()
    session = None
    try:
        session = await sc.SpdyRemoteCommand.connect(
            srv.get_exec_url("c", sh(f"echo $$; exec {BUSYBOX} sleep 1000"))
        )
        assert session.stdout is not None
        pid = int(await asyncio.wait_for(session.stdout.read(), 10))
    finally:
        await srv.stop()
        if session is not None:
            await session.close()
    await wait_gone(pid)


async def test_legacy_spdy_peer_without_flow_control(server: StreamingServer) -> None:
    """A peer like moby/spdystream: no SETTINGS, no WINDOW_UPDATE, ignores windows both ways."""
    url = server.get_exec_url("c", [BUSYBOX, "cat"], stdin=True)
    transport, proto = await sc.dial(url, websocket=False, protocols=["v4.channel.k8s.io"])
    conn = sc.SpdyConnection(transport, client=True, flow_control=False, announce=False, window_updates=False)
    session = sc.SpdyRemoteCommand(conn, proto)
    try:
        session.error = await conn.open_stream({"streamtype": ["error"]})
        session.stdin = await conn.open_stream({"streamtype": ["stdin"]})
        session.stdout = await conn.open_stream({"streamtype": ["stdout"]})
        session.stderr = await conn.open_stream({"streamtype": ["stderr"]})
        data = os.urandom(20 * 1024 * 1024)

        async def feed() -> None:
            await session.write_stdin(data)
            await session.close_stdin()

        feeder = asyncio.create_task(feed())
        got = bytearray()
        while chunk := await asyncio.wait_for(session.stdout.read(1 << 20), 20):
            got += chunk
        await feeder
        assert len(got) == len(data), (len(got), len(data))
        first = next((i for i in range(0, len(data), 4096) if got[i : i + 4096] != data[i : i + 4096]), None)
        assert first is None, first
        assert await session.wait() == 0
    finally:
        await session.close()


async def test_server_respects_the_clients_window(server: StreamingServer) -> None:
    url = server.get_exec_url("c", [BUSYBOX, "head", "-c", "50000000", "/dev/zero"])
    session = await sc.SpdyRemoteCommand.connect(url)
    try:
        assert session.stdout is not None
        assert await asyncio.wait_for(session.stdout.read(), 10)
        await asyncio.sleep(0.3)  # a server ignoring windows would push megabytes meanwhile
        assert session.stdout._buffered <= sc.CLIENT_WINDOW
        total = 0
        while chunk := await asyncio.wait_for(session.stdout.read(1 << 20), 20):
            total += len(chunk)
        assert total > 49_000_000
        assert await session.wait() == 0
    finally:
        await session.close()
