"""pycrio.cli.streamclient: exec against local fds, terminal helpers, local port-forward listeners."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import struct
import termios
from collections.abc import AsyncIterator

import pytest

from pycrio.cli import streamclient
from pycrio.streaming.backend import TerminalSize
from pycrio.streaming.server import StreamingServer
from tests.integration.test_streaming_exec import BUSYBOX, LocalRuntime, running_server, server, sh

__all__ = ["server"]


def read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


@pytest.mark.parametrize("websocket", [False, True], ids=["spdy", "ws"])
async def test_stream_exec_with_pipes(server: StreamingServer, websocket: bool) -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        os.write(in_w, b"from stdin\n")
        os.close(in_w)
        in_w = -1
        url = server.get_exec_url("c", sh("cat; echo oops >&2; exit 2"), stdin=True)
        code = await streamclient.stream_exec(
            url, stdin=True, websocket=websocket, stdin_fd=in_r, stdout_fd=out_w, stderr_fd=err_w
        )
        os.close(out_w)
        os.close(err_w)
        out_w = err_w = -1
        assert code == 2
        assert read_all(out_r) == b"from stdin\n"
        assert read_all(err_r) == b"oops\n"
    finally:
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            if fd >= 0:
                os.close(fd)


async def test_stream_exec_stdin_from_a_file(server: StreamingServer, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "input")
    with open(path, "wb") as f:
        f.write(b"x" * 300000)
    out_r, out_w = os.pipe()
    fd = os.open(path, os.O_RDONLY)
    try:
        url = server.get_exec_url("c", [BUSYBOX, "wc", "-c"], stdin=True)
        reader = asyncio.get_running_loop().run_in_executor(None, read_all, out_r)
        code = await streamclient.stream_exec(url, stdin=True, stdin_fd=fd, stdout_fd=out_w, stderr_fd=out_w)
        os.close(out_w)
        out_w = -1
        assert code == 0
        assert (await reader).strip() == b"300000"
    finally:
        os.close(fd)
        os.close(out_r)
        if out_w >= 0:
            os.close(out_w)


async def test_terminal_helpers() -> None:
    master, slave = os.openpty()
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
        assert streamclient.terminal_size(slave) == TerminalSize(90, 30)
        r, w = os.pipe()
        assert streamclient.terminal_size(r) is None
        os.close(r)
        os.close(w)
        before = termios.tcgetattr(slave)
        with streamclient.raw_terminal(slave):
            assert not termios.tcgetattr(slave)[3] & termios.ICANON
        assert termios.tcgetattr(slave) == before
        seen: list[TerminalSize] = []
        got = asyncio.Event()

        def on_size(size: TerminalSize) -> None:
            seen.append(size)
            got.set()

        stop = streamclient.watch_resize(slave, on_size)
        try:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 31, 91, 0, 0))
            os.kill(os.getpid(), signal.SIGWINCH)
            await asyncio.wait_for(got.wait(), 5)
        finally:
            stop()
        assert seen == [TerminalSize(91, 31)]
    finally:
        os.close(master)
        os.close(slave)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    srv = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        await srv.wait_closed()


@pytest.mark.parametrize("tunnel", [False, True], ids=["spdy", "ws-tunnel"])
async def test_port_forward_local(echo_port: int, tunnel: bool) -> None:
    async with running_server(LocalRuntime()) as srv:
        bound: asyncio.Future[list[tuple[int, int]]] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            streamclient.port_forward_local(
                srv.get_portforward_url("pod"), [(0, echo_port)], tunnel=tunnel, ready=bound.set_result
            )
        )
        try:
            ((local, remote),) = await asyncio.wait_for(bound, 10)
            assert remote == echo_port

            async def one(i: int) -> None:
                reader, writer = await asyncio.open_connection("127.0.0.1", local)
                payload = os.urandom(10000 + i)
                writer.write(payload)
                writer.write_eof()
                got = await asyncio.wait_for(reader.read(-1), 10)
                writer.close()
                assert got == payload

            await asyncio.gather(*(one(i) for i in range(10)))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
