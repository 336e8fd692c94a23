"""The seams between the streaming server and the runtime.

The server speaks SPDY/WebSocket to the client and hands each session to a backend through
a :class:`StreamIO`; the backend runs the command (``runc exec``, the conmon attach socket,
a TCP connection in the pod's netns) and never sees a protocol frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TerminalSize:
    width: int
    height: int


class InputStream(Protocol):
    """Bytes from the client (stdin)."""

    async def read(self, n: int = 65536) -> bytes:
        """Up to n bytes; b"" once the client closed its stdin (or went away)."""
        ...


class OutputStream(Protocol):
    """Bytes to the client (stdout/stderr)."""

    async def write(self, data: bytes) -> None:
        """Send data, waiting while the client is slow; raises ConnectionError once it is gone."""
        ...

    async def close(self) -> None:
        """Signal end of output on this stream (idempotent)."""
        ...


class StreamIO:
    """One exec/attach session as the backend sees it.

    ``stdin``/``stdout``/``stderr`` are None when the request did not ask for them (with a tty
    there is never a stderr).  ``client_gone`` is set when the client connection ended; the
    backend task is also cancelled then, so backends must clean up in ``finally``.
    """

    def __init__(
        self,
        *,
        stdin: InputStream | None,
        stdout: OutputStream | None,
        stderr: OutputStream | None,
        tty: bool,
        resize: asyncio.Queue[TerminalSize | None] | None = None,
        client_gone: asyncio.Event | None = None,
    ) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.tty = tty
        self._resize: asyncio.Queue[TerminalSize | None] = resize if resize is not None else asyncio.Queue()
        self._resize_done = resize is None
        self.client_gone = client_gone if client_gone is not None else asyncio.Event()

    def pending_resizes(self) -> list[TerminalSize]:
        """Resize requests already received, without waiting (e.g. the initial size)."""
        out: list[TerminalSize] = []
        while not self._resize_done:
            try:
                item = self._resize.get_nowait()
            except asyncio.QueueEmpty:
                break
            if item is None:
                self._resize_done = True
            else:
                out.append(item)
        return out

    async def resize_events(self) -> AsyncIterator[TerminalSize]:
        """Terminal size changes from the client, until its resize stream ends."""
        while not self._resize_done:
            item = await self._resize.get()
            if item is None:
                self._resize_done = True
                return
            yield item


class ExecBackend(Protocol):
    async def exec(self, container_id: str, cmd: Sequence[str], tty: bool, stdin: bool, io: StreamIO) -> int:
        """Run cmd in the container wired to io; return its exit code."""
        ...


class AttachBackend(Protocol):
    async def attach(self, container_id: str, tty: bool, stdin: bool, io: StreamIO) -> None:
        """Connect io to the container's main process until either side ends."""
        ...


class PortForwardBackend(Protocol):
    async def port_forward(self, pod_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to port inside the pod's network namespace (raise on failure)."""
        ...


class StreamingRuntime(ExecBackend, AttachBackend, PortForwardBackend, Protocol):
    """Everything the streaming server needs from the runtime."""


# Requests kept in the token cache between the CRI RPC and the HTTP request.


@dataclass(frozen=True, slots=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True, slots=True)
class AttachRequest:
    container_id: str
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True, slots=True)
class PortForwardRequest:
    pod_sandbox_id: str
    ports: tuple[int, ...] = field(default_factory=tuple)


StreamingRequest = ExecRequest | AttachRequest | PortForwardRequest
