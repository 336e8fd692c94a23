"""Run a local process wired to a :class:`StreamIO` (what an exec backend needs).

Without a tty the child gets pipes (stdout and stderr separate).  With a tty we allocate the
pty ourselves (``os.openpty``); the child becomes a session leader with the slave as its
controlling terminal (via util-linux ``setsid --ctty``, so no Python runs between fork and
exec), resizes are applied with TIOCSWINSZ on the master, and the end of the client's stdin
is sent as the terminal's EOF character.  When the client goes away (``io.client_gone``,
a failed write, or cancellation) the whole process group is killed and reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import struct
import termios
from collections.abc import Mapping, Sequence

from pycrio.streaming.backend import InputStream, OutputStream, StreamIO, TerminalSize

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
_SETSID = shutil.which("setsid")


class ClientGoneError(ConnectionResetError):
    """The streaming client disconnected; the process was killed."""


class _Progress:
    def __init__(self) -> None:
        self.bytes = 0


def set_winsize(fd: int, size: TerminalSize) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


async def _pump_out(read: _Fd, sink: OutputStream, progress: _Progress) -> None:
    while data := await read.read(READ_SIZE):
        progress.bytes += len(data)
        await sink.write(data)


async def _pump_stdin_pipe(src: InputStream, pipe: _Fd) -> None:
    try:
        while data := await src.read(READ_SIZE):
            await pipe.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the process closed its stdin
    finally:
        pipe.close()  # EOF for the process


async def _supervise(
    proc: asyncio.subprocess.Process,
    outputs: list[asyncio.Task[None]],
    io: StreamIO,
    progress: _Progress,
    drain_grace: float,
) -> int:
    waiter = asyncio.create_task(proc.wait())
    gone = asyncio.create_task(io.client_gone.wait())
    try:
        while not waiter.done():
            watch = {waiter, gone, *(t for t in outputs if not t.done())}
            done, _ = await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
            if gone in done:
                raise ClientGoneError("client went away")
            for task in outputs:
                if task in done and task.exception() is not None:
                    raise ClientGoneError(f"client went away: {task.exception()}")
        # Drain what the process left in its pipes; give up when nothing moves for a while
        # (a background child may hold the pipe open).
        last = -1
        while any(not t.done() for t in outputs) and progress.bytes != last:
            last = progress.bytes
            await asyncio.wait([t for t in outputs if not t.done()], timeout=drain_grace)
        for task in outputs:
            if task.done() and task.exception() is not None:
                raise ClientGoneError(f"client went away: {task.exception()}")
        assert proc.returncode is not None
        return _exit_code(proc.returncode)
    finally:
        gone.cancel()
        _kill_group(proc)
        await proc.wait()
        waiter.cancel()


async def run_bridged(
    argv: Sequence[str],
    tty: bool,
    stdin: bool,
    io: StreamIO,
    env: Mapping[str, str] | None = None,
    *,
    cwd: str | None = None,
    drain_grace: float = 2.0,
) -> int:
    """Run argv with its stdio bridged to io; return the exit code (128+N for signal N).

    Raises :class:`ClientGoneError` (after killing the process) when the client goes away.
    """
    if not argv:
        raise ValueError("empty command")
    if tty:
        return await _run_tty(list(argv), stdin, io, env, cwd, drain_grace)
    # Our own pipes rather than asyncio's: asyncio (3.11) only reports the exit once every
    # pipe is closed, which a background grandchild can postpone forever.
    in_pipe = os.pipe() if stdin and io.stdin is not None else None
    out_pipe = os.pipe() if io.stdout is not None else None
    err_pipe = os.pipe() if io.stderr is not None else None
    pipes = [p for p in (in_pipe, out_pipe, err_pipe) if p is not None]
    parent_ends = [p[1] if p is in_pipe else p[0] for p in pipes]
    child_ends = [p[0] if p is in_pipe else p[1] for p in pipes]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=in_pipe[0] if in_pipe else asyncio.subprocess.DEVNULL,
            stdout=out_pipe[1] if out_pipe else asyncio.subprocess.DEVNULL,
            stderr=err_pipe[1] if err_pipe else asyncio.subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException:
        for fd in parent_ends:
            os.close(fd)
        raise
    finally:
        for fd in child_ends:
            os.close(fd)
    fds: list[_Fd] = []
    progress = _Progress()
    outputs: list[asyncio.Task[None]] = []
    helpers: list[asyncio.Task[None]] = []
    try:
        if out_pipe and io.stdout is not None:
            fds.append(_Fd(out_pipe[0]))
            outputs.append(asyncio.create_task(_pump_out(fds[-1], io.stdout, progress)))
        if err_pipe and io.stderr is not None:
            fds.append(_Fd(err_pipe[0]))
            outputs.append(asyncio.create_task(_pump_out(fds[-1], io.stderr, progress)))
        if in_pipe and io.stdin is not None:
            fds.append(_Fd(in_pipe[1]))
            helpers.append(asyncio.create_task(_pump_stdin_pipe(io.stdin, fds[-1])))
        helpers.append(asyncio.create_task(_drain_resizes(io)))
        return await _supervise(proc, outputs, io, progress, drain_grace)
    finally:
        _kill_group(proc)
        for task in outputs + helpers:
            task.cancel()
        await asyncio.gather(*outputs, *helpers, return_exceptions=True)
        for fdobj in fds:
            fdobj.close()


async def _drain_resizes(io: StreamIO) -> None:
    async for _ in io.resize_events():
        pass


class _Fd:
    """Non-blocking reads and writes on a pipe end or a pty master."""

    def __init__(self, fd: int, eof: bytes = b"\x04") -> None:
        self.fd = fd
        self.eof = eof
        os.set_blocking(fd, False)
        self._loop = asyncio.get_running_loop()

    async def _wait(self, writable: bool) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        if writable:
            self._loop.add_writer(self.fd, ready)
        else:
            self._loop.add_reader(self.fd, ready)
        try:
            await fut
        finally:
            if writable:
                self._loop.remove_writer(self.fd)
            else:
                self._loop.remove_reader(self.fd)

    async def read(self, n: int) -> bytes:
        while True:
            try:
                return os.read(self.fd, n)
            except BlockingIOError:
                await self._wait(writable=False)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return b""  # every slave fd is closed: the session ended
                raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
                view = view[n:]
            except BlockingIOError:
                await self._wait(writable=True)


def _eof_char(slave_fd: int) -> bytes:
    """The terminal's EOF character, read from the slave side (the master's termios differ)."""
    try:
        cc = termios.tcgetattr(slave_fd)[6][termios.VEOF]
    except termios.error:
        return b"\x04"
    value = cc if isinstance(cc, bytes) else bytes((cc,))
    return value if value != b"\x00" else b"\x04"


async def _pump_stdin_pty(src: InputStream, master: _Fd, io: StreamIO) -> None:
    with contextlib.suppress(OSError):
        while data := await src.read(READ_SIZE):
            # A resize sent before this input must take effect before the process reads it.
            for size in io.pending_resizes():
                set_winsize(master.fd, size)
            await master.write(data)
        # No way to close a terminal's input alone: send EOF (^D) like a user would.
        await master.write(master.eof)


async def _pump_resize_pty(io: StreamIO, fd: int) -> None:
    async for size in io.resize_events():
        with contextlib.suppress(OSError):
            set_winsize(fd, size)


async def _run_tty(
    argv: list[str],
    stdin: bool,
    io: StreamIO,
    env: Mapping[str, str] | None,
    cwd: str | None,
    drain_grace: float,
) -> int:
    if os.sep not in argv[0] and shutil.which(argv[0], path=(env or os.environ).get("PATH")) is None:
        raise FileNotFoundError(errno.ENOENT, "executable file not found in $PATH", argv[0])
    master_fd, slave_fd = os.openpty()
    eof = _eof_char(slave_fd)
    try:
        for size in io.pending_resizes():
            set_winsize(master_fd, size)
        if _SETSID is not None:
            spawn = [_SETSID, "--ctty", *argv]
            proc = await asyncio.create_subprocess_exec(
                *spawn,
                stdin=slave_fd,
                stdout=slave_fd,
                stderr=slave_fd,
                env=dict(env) if env is not None else None,
                cwd=cwd,
            )
        else:  # pragma: no cover - util-linux is a dependency of the host
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=slave_fd,
                stdout=slave_fd,
                stderr=slave_fd,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            )
    except BaseException:
        os.close(master_fd)
        raise
    finally:
        os.close(slave_fd)
    master = _Fd(master_fd, eof)
    progress = _Progress()
    outputs: list[asyncio.Task[None]] = []
    helpers: list[asyncio.Task[None]] = []
    try:
        if io.stdout is not None:
            outputs.append(asyncio.create_task(_pump_out(master, io.stdout, progress)))
        else:
            helpers.append(asyncio.create_task(_discard(master)))
        if stdin and io.stdin is not None:
            helpers.append(asyncio.create_task(_pump_stdin_pty(io.stdin, master, io)))
        helpers.append(asyncio.create_task(_pump_resize_pty(io, master_fd)))
        return await _supervise(proc, outputs, io, progress, drain_grace)
    finally:
        _kill_group(proc)
        for task in outputs + helpers:
            task.cancel()
        await asyncio.gather(*outputs, *helpers, return_exceptions=True)
        os.close(master_fd)


async def _discard(master: _Fd) -> None:
    while await master.read(READ_SIZE):
        pass
