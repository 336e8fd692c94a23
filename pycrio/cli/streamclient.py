"""Streaming client helpers for ``pycrioctl exec/attach/port-forward``.

The protocol clients live in :mod:`pycrio.streaming.client`; this module wires them to a
real terminal: local stdin/stdout/stderr file descriptors, raw mode, SIGWINCH resizes, and
local TCP listeners for port-forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import stat
import struct
import termios
import threading
import tty
from collections.abc import Callable, Iterator

from pycrio.streaming.backend import TerminalSize
from pycrio.streaming.client import (
    PortForwardStream,
    SpdyPortForward,
    SpdyRemoteCommand,
    WsRemoteCommand,
    dial,
)

log = logging.getLogger(__name__)

__all__ = [
    "dial",
    "port_forward_local",
    "raw_terminal",
    "stream_exec",
    "terminal_size",
    "watch_resize",
]


# ---------------------------------------------------------------- terminal


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put a terminal into raw mode for the duration (no-op when fd is not a tty)."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size(fd: int) -> TerminalSize | None:
    """The terminal's size, or None when fd is not a terminal."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return TerminalSize(cols, rows)


def watch_resize(fd: int, callback: Callable[[TerminalSize], None]) -> Callable[[], None]:
    """Call callback with the new size on every SIGWINCH; returns a function that stops it."""
    loop = asyncio.get_running_loop()

    def on_winch() -> None:
        size = terminal_size(fd)
        if size is not None:
            callback(size)

    def stop() -> None:
        loop.remove_signal_handler(signal.SIGWINCH)

    loop.add_signal_handler(signal.SIGWINCH, on_winch)
    return stop


# ---------------------------------------------------------------- local fds


def _read_fd_into(fd: int, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes]) -> None:
    """Thread body: blocking reads (works for ttys, pipes and regular files alike)."""
    try:
        while True:
            data = os.read(fd, 65536)
            loop.call_soon_threadsafe(queue.put_nowait, data)
            if not data:
                return
    except (OSError, RuntimeError):  # RuntimeError: the loop is closed
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, b"")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _copy_local_stdin(fd: int, session: SpdyRemoteCommand | WsRemoteCommand) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    if stat.S_ISREG(os.fstat(fd).st_mode):
        with open(os.dup(fd), "rb") as f:  # a file: plain reads, no thread needed
            while data := f.read(1 << 20):
                await session.write_stdin(data)
    else:
        # A daemon thread, so a read blocked on a terminal never holds up exit.
        threading.Thread(
            target=_read_fd_into, args=(fd, asyncio.get_running_loop(), queue), daemon=True
        ).start()
        while data := await queue.get():
            await session.write_stdin(data)
    await session.close_stdin()


async def _copy_to_fd(source: object, fd: int) -> None:
    reader = getattr(source, "read", None)
    if reader is None:
        return
    while data := await reader(1 << 20):
        _write_all(fd, data)


async def stream_exec(
    url: str,
    *,
    tty: bool = False,
    stdin: bool = False,
    websocket: bool = False,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    stderr_fd: int = 2,
) -> int:
    """Run an exec/attach session against the local terminal; returns the remote exit code."""
    session: SpdyRemoteCommand | WsRemoteCommand
    if websocket:
        session = await WsRemoteCommand.connect(url, stdin=stdin, tty=tty)
    else:
        session = await SpdyRemoteCommand.connect(url, stdin=stdin, tty=tty, stderr=not tty)
    tasks: list[asyncio.Task[None]] = []
    stop_watch: Callable[[], None] | None = None
    try:
        with raw_terminal(stdin_fd) if tty and stdin else contextlib.nullcontext():
            if tty:
                size = terminal_size(stdout_fd if os.isatty(stdout_fd) else stdin_fd)
                if size is not None:
                    await session.resize(size.width, size.height)

                def on_resize(new: TerminalSize) -> None:
                    tasks.append(asyncio.create_task(session.resize(new.width, new.height)))

                with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
                    stop_watch = watch_resize(stdout_fd, on_resize)
            if stdin:
                tasks.append(asyncio.create_task(_copy_local_stdin(stdin_fd, session)))
            await asyncio.gather(
                _copy_to_fd(session.stdout, stdout_fd), _copy_to_fd(session.stderr, stderr_fd)
            )
            return await session.wait()
    finally:
        if stop_watch is not None:
            stop_watch()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()


# ---------------------------------------------------------------- port-forward


async def _pipe_connection(
    stream: PortForwardStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    async def upstream() -> None:
        while data := await reader.read(256 * 1024):
            await stream.write(data)
        await stream.close_write()

    async def downstream() -> None:
        while data := await stream.read(256 * 1024):
            writer.write(data)
            await writer.drain()

    up = asyncio.create_task(upstream())
    try:
        await downstream()
    finally:
        stream.reset()  # like kubectl: once the remote side is done, drop what is unsent
        up.cancel()
        await asyncio.gather(up, return_exceptions=True)
        message = await stream.error()
        if message:
            log.error("port-forward: %s", message.strip())
        writer.close()


async def port_forward_local(
    url: str,
    ports: list[tuple[int, int]],
    *,
    address: str = "127.0.0.1",
    tunnel: bool = False,
    ready: Callable[[list[tuple[int, int]]], None] | None = None,
) -> None:
    """Listen on address:local for each (local, remote) pair and forward every accepted
    connection to the remote port over one SPDY session (local 0 picks a free port).
    Runs until cancelled or the session ends."""
    pf = await SpdyPortForward.connect(url, tunnel=tunnel)
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()
    try:
        bound: list[tuple[int, int]] = []
        for local, remote in ports:

            async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, remote: int = remote) -> None:
                task = asyncio.current_task()
                assert task is not None
                handlers.add(task)
                try:
                    stream = await pf.open(remote)
                    await _pipe_connection(stream, r, w)
                except (ConnectionError, OSError) as exc:
                    log.error("port-forward to %d: %s", remote, exc)
                    w.close()
                finally:
                    handlers.discard(task)

            server = await asyncio.start_server(handle, address, local)
            servers.append(server)
            bound.append((server.sockets[0].getsockname()[1], remote))
        if ready is not None:
            ready(bound)
        await pf.conn.closed.wait()
    finally:
        for server in servers:
            server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await pf.close()
