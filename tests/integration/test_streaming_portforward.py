"""port-forward end to end into a real network namespace (``ip netns add``), SPDY, SPDY-over-WS
tunnelling and WebSocket channels; plus connect_in_netns itself."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from pycrio.streaming import client as sc
from pycrio.streaming.netns import connect_in_netns, socket_in_netns
from pycrio.streaming.server import StreamingServer
from tests.integration.test_streaming_exec import LocalRuntime, running_server

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pycrio-pf-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    finally:
        writer.close()


@pytest.fixture
async def echo_port(netns: str) -> AsyncIterator[int]:
    """An echo server listening on 127.0.0.1 inside the namespace."""
    sock = await socket_in_netns(netns)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    srv = await asyncio.start_server(_echo, sock=sock)
    try:
        yield port
    finally:
        srv.close()
        await srv.wait_closed()


@pytest.fixture
async def pf_server(netns: str) -> AsyncIterator[StreamingServer]:
    async with running_server(LocalRuntime(netns=netns)) as srv:
        yield srv


CLOSED_PORT = 9  # nothing listens in a fresh namespace


def ns_inode() -> int:
    return os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino


@pytest.mark.parametrize("tunnel", [False, True], ids=["spdy", "ws-tunnel"])
async def test_spdy_port_forward_concurrent_and_closed_port(
    pf_server: StreamingServer, echo_port: int, tunnel: bool
) -> None:
    pf = await sc.SpdyPortForward.connect(pf_server.get_portforward_url("pod"), tunnel=tunnel)
    try:

        async def one(i: int) -> None:
            st = await pf.open(echo_port)
            payload = os.urandom(1000 + i * 5000)
            await st.write(payload)
            await st.close_write()
            got = b""
            while chunk := await st.read():
                got += chunk
            assert got == payload
            assert await st.error() == ""

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(20))), 30)
        st = await pf.open(CLOSED_PORT)
        message = await asyncio.wait_for(st.error(), 10)
        assert "error forwarding port 9 to pod pod" in message and "refused" in message.lower()
        assert await st.read() == b""
        # The connection still serves new requests afterwards.
        st = await pf.open(echo_port)
        await st.write(b"again")
        await st.close_write()
        assert await st.read() == b"again"
    finally:
        await pf.close()


async def test_ws_channel_port_forward(pf_server: StreamingServer, echo_port: int) -> None:
    wp = await sc.WsPortForward.connect(pf_server.get_portforward_url("pod"), [echo_port, CLOSED_PORT])
    try:
        await wp.write(0, b"hello ")
        await wp.write(0, b"world")
        await wp.close_write(0)
        got = b""
        while chunk := await asyncio.wait_for(wp.read(0), 10):
            got += chunk
        assert got == b"hello world"
        await asyncio.wait_for(wp.wait_closed(), 10)
        assert b"error forwarding port 9" in wp.errors[1]
        assert wp.errors[0] == b""
    finally:
        await wp.close()


async def test_ws_port_forward_ports_from_the_request(netns: str, echo_port: int) -> None:
    async with running_server(LocalRuntime(netns=netns)) as srv:
        url = srv.get_portforward_url("pod", [echo_port])
        transport, proto = await sc.dial(url, websocket=True, protocols=["v4.channel.k8s.io"])
        wp = sc.WsPortForward(sc.WebSocketConnection(transport, client=True), proto, [echo_port])
        try:
            await wp.write(0, b"ping")
            assert await asyncio.wait_for(wp.read(0), 10) == b"ping"
        finally:
            await wp.close()


async def test_connect_in_netns_reaches_only_the_namespace(netns: str, echo_port: int) -> None:
    before = ns_inode()
    reader, writer = await connect_in_netns(netns, "127.0.0.1", echo_port)
    try:
        writer.write(b"x")
        await writer.drain()
        assert await reader.read(1) == b"x"
    finally:
        writer.close()
    assert ns_inode() == before  # the event loop thread never left the host namespace
    with pytest.raises(FileNotFoundError):
        await connect_in_netns("/var/run/netns/does-not-exist-pycrio", "127.0.0.1", echo_port)
    with pytest.raises(ConnectionRefusedError):
        await connect_in_netns(netns, "127.0.0.1", CLOSED_PORT)
    # Host namespace when no path is given.
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        reader, writer = await connect_in_netns(None, "localhost", listener.getsockname()[1])
        writer.close()
    finally:
        listener.close()


async def test_ws_channel_port_forward_many_sessions(pf_server: StreamingServer, echo_port: int) -> None:
    async def one(i: int) -> None:
        wp = await sc.WsPortForward.connect(pf_server.get_portforward_url("pod"), [echo_port])
        try:
            payload = os.urandom(2000 + 3000 * i)
            await wp.write(0, payload)
            await wp.close_write(0)
            got = b""
            while chunk := await wp.read(0):
                got += chunk
            assert got == payload
        finally:
            await wp.close()

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(20))), 30)
