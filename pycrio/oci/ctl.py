"""Talking to a running conmon: the ctl fifo (resize, log reopen) and the attach socket.

conmon reads text lines ``"<type> <height> <width>\\n"`` from ``<bundle>/ctl``:
type 1 resizes the container's terminal, type 2 reopens the log file (conmon
writes ``<log>.tmp`` and renames it over ``<log>``).

The attach socket is an ``AF_UNIX SOCK_SEQPACKET`` socket. conmon sends
packets ``[pipe id][data]`` (1 stdin, 2 stdout, 3 stderr); the client writes
raw stdin bytes and ends stdin with ``shutdown(SHUT_WR)``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from pycrio import inotify
from pycrio.errors import DeadlineExceeded
from pycrio.oci.runc import ContainerNotRunning

RESIZE = 1
REOPEN_LOG = 2


def ctl_line(kind: int, height: int = 0, width: int = 0) -> bytes:
    return b"%d %d %d\n" % (kind, height, width)


def write_ctl(bundle: Path, cid: str, line: bytes) -> None:
    """Write one line to conmon's ctl fifo; ContainerNotRunning if conmon is gone."""
    try:
        # Non-blocking: with no reader (conmon gone) this fails instead of hanging.
        fd = os.open(bundle / "ctl", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ContainerNotRunning(f"container {cid}: conmon is not running ({exc.strerror})")
    try:
        os.write(fd, line)
    except BlockingIOError:
        raise ContainerNotRunning(f"container {cid}: conmon is not reading its control fifo")
    finally:
        os.close(fd)


async def reopen_log(
    bundle: Path, log_path: Path, cid: str, limit: float, conmon_gone: Awaitable[object] | None = None
) -> None:
    """Ask conmon to reopen ``log_path``; return once a new file is in place.

    ``conmon_gone`` (resolving when conmon exits) ends the wait early with
    ContainerNotRunning: a conmon on its way out no longer reads the fifo.
    """
    loop = asyncio.get_running_loop()
    changed: asyncio.Future[None] = loop.create_future()
    try:
        before: int | None = os.stat(log_path).st_ino
    except OSError:
        before = None

    def check(_events: list[inotify.Event] | None = None) -> None:
        try:
            ino = os.stat(log_path).st_ino
        except OSError:
            return
        if ino != before and not changed.done():
            changed.set_result(None)

    with inotify.Inotify() as ino:
        # Watch before asking, so the rename cannot slip by unseen.
        ino.add_watch(log_path.parent, inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_ONLYDIR)
        ino.attach(loop, check)
        write_ctl(bundle, cid, ctl_line(REOPEN_LOG))
        check()
        gone = asyncio.ensure_future(conmon_gone) if conmon_gone is not None else None
        try:
            waiting: set[asyncio.Future[Any]] = {changed} if gone is None else {changed, gone}
            await asyncio.wait(waiting, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if gone is not None:
                gone.cancel()
                await asyncio.gather(gone, return_exceptions=True)
        if changed.done():
            return
        if gone is not None and gone.done() and not gone.cancelled():
            raise ContainerNotRunning(f"container {cid}: conmon exited before reopening the log")
        raise DeadlineExceeded(f"conmon did not reopen the log of {cid} within {limit}s")


def connect_attach(path: Path, cid: str) -> socket.socket:
    """A connected, non-blocking attach socket; paths over 108 bytes work too."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        if len(os.fsencode(path)) < 100:
            sock.connect(str(path))
        else:
            # sun_path is short: reach the socket through an fd of its directory.
            dfd = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{dfd}/{path.name}")
            finally:
                os.close(dfd)
    except OSError as exc:
        sock.close()
        raise ContainerNotRunning(f"cannot attach to {cid}: {exc.strerror or exc}")
    sock.setblocking(False)
    return sock
