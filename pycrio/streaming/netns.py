"""TCP connections (and listening sockets) inside another network namespace.

A socket belongs to the namespace it was created in, whatever thread later uses it.  So a
fresh, dedicated thread enters the target namespace, creates the socket, and switches back
before it ends; no pooled thread ever runs in a foreign namespace.  Connecting then happens
on the event loop like any other socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from pycrio.setns import CLONE_NEWNET, setns

T = TypeVar("T")



def _in_netns(netns_path: str, fn: Callable[[], T]) -> T:
    """Run fn in the namespace, on the calling thread (must be a throwaway thread)."""
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        original = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target, CLONE_NEWNET)
            try:
                return fn()
            finally:
                # If this fails the thread stays foreign, but it is about to exit anyway.
                setns(original, CLONE_NEWNET)
        finally:
            os.close(original)
    finally:
        os.close(target)


async def run_in_netns(netns_path: str, fn: Callable[[], T]) -> T:
    """Run a short blocking fn inside the namespace on a dedicated thread."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, exc: BaseException | None) -> None:
        if fut.cancelled():
            if isinstance(result, socket.socket):
                result.close()
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def worker() -> None:
        try:
            result = _in_netns(netns_path, fn)
        except BaseException as exc:
            loop.call_soon_threadsafe(deliver, None, exc)
        else:
            loop.call_soon_threadsafe(deliver, result, None)

    threading.Thread(target=worker, name="pycrio-netns", daemon=True).start()
    return await fut


def _resolve(host: str, port: int) -> list[tuple[int, tuple[str, int] | tuple[str, int, int, int]]]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: list[tuple[int, tuple[str, int] | tuple[str, int, int, int]]] = []
    for family, _, _, _, addr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, addr) not in seen:
            seen.append((family, addr))  # type: ignore[arg-type]
    return seen


async def socket_in_netns(
    netns_path: str | None, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new non-blocking socket that lives in the namespace (host namespace when None)."""
    if not netns_path:
        sock = socket.socket(family, kind)
    else:
        sock = await run_in_netns(netns_path, lambda: socket.socket(family, kind))
    sock.setblocking(False)
    return sock


async def connect_in_netns(
    netns_path: str | None, host: str, port: int, *, limit: int = 256 * 1024
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TCP connection to host:port as seen from inside the namespace.

    ``netns_path`` is a namespace file such as ``/var/run/netns/<name>`` or
    ``/proc/<pid>/ns/net``; None means the host namespace.  Every address of host is tried
    in order (``localhost`` covers 127.0.0.1 and ::1).
    """
    loop = asyncio.get_running_loop()
    addrs = await loop.run_in_executor(None, _resolve, host, port)
    if not addrs:
        raise OSError(f"cannot resolve {host!r}")
    families = sorted({family for family, _ in addrs})

    def make_sockets() -> dict[int, socket.socket]:
        out: dict[int, socket.socket] = {}
        try:
            for family in families:
                out[family] = socket.socket(family, socket.SOCK_STREAM)
        except BaseException:
            for s in out.values():
                s.close()
            raise
        return out

    if netns_path:
        if not os.path.exists(netns_path):
            raise FileNotFoundError(f"network namespace {netns_path} does not exist")
        sockets = await run_in_netns(netns_path, make_sockets)
    else:
        sockets = make_sockets()
    last_error: OSError | None = None
    try:
        for family, addr in addrs:
            sock = sockets.pop(family, None)
            if sock is None:
                # A second address of the same family needs another socket from the namespace.
                sock = await socket_in_netns(netns_path, family)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            except BaseException:
                sock.close()
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return await asyncio.open_connection(sock=sock, limit=limit)
        assert last_error is not None
        raise last_error
    finally:
        for s in sockets.values():
            with contextlib.suppress(OSError):
                s.close()
