"""ExecSync by running ``<runtime> exec --detach`` directly, without conmon.

For a command without a terminal, conmon adds nothing pycrio cannot do
itself, and skipping it saves a process and a few milliseconds per probe.
The runtime starts the command detached, writes its pid file and exits; the
command is re-parented to the daemon, a child subreaper, whose child watcher
hands its exit status to this call (:meth:`pycrio.reaper.ReapingChildWatcher.claim`).
The output comes straight through pipes of our own (no temporary CRI log to
write and parse back). As with conmon, the call ends when the command exits,
even if it left background children holding its stdout. Commands with a
terminal go through conmon (:mod:`pycrio.oci.execsync`), which holds the pty.

Timeouts: at the deadline pycrio SIGKILLs the command, everything it forked
and every member of its session in the container's pid namespace, waits
until the command is reaped, and fails with ``ExecTimeout``, so no zombie is
left behind. A cancelled call is cleaned up the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrio.oci import procs
from pycrio.oci.conmon import EXEC_SYNC_MAX_OUTPUT, clean_runtime_message
from pycrio.oci.execsync import (
    REAP_TIMEOUT,
    ExecResult,
    ExecTimeout,
    exec_work_dir,
    kill_exec_tree,
    process_spec,
    read_pid_file,
)
from pycrio.oci.runc import OCIRuntimeError, RuntimeHandlerSpec, base_argv
from pycrio.reaper import ReapingChildWatcher

_READ = 65536


class _Capture:
    """Output of the command through a pipe of our own, read as it arrives.

    asyncio's own pipes would hold back the exit until every writer closed
    them, and a command that leaves a background child behind (``cmd &``)
    would then hang the call. Here the exit is awaited on its own; the pipe
    is drained of what is in it at that moment and closed, as conmon does.
    At most ``limit`` bytes are kept; the rest is read and dropped.
    """

    def __init__(self, limit: int) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(self.write_fd, True)
        self.limit = limit
        self.chunks: list[bytes] = []
        self.kept = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Close our copy of the write end (the child has its own) and start reading."""
        os.close(self.write_fd)
        self.write_fd = -1
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.read_fd, self._drain)

    def _drain(self) -> None:
        # Bounded by what the pipe holds now: it never blocks (O_NONBLOCK).
        while True:
            try:
                data = os.read(self.read_fd, _READ)
            except BlockingIOError:
                return
            if not data:
                if self._loop is not None:
                    self._loop.remove_reader(self.read_fd)
                    self._loop = None
                return
            if self.kept < self.limit:
                piece = data[: self.limit - self.kept]
                self.chunks.append(piece)
                self.kept += len(piece)

    def finish(self) -> bytes:
        """Take what is in the pipe now, stop reading and close it."""
        if self.read_fd >= 0:
            self._drain()
            if self._loop is not None:
                self._loop.remove_reader(self.read_fd)
                self._loop = None
            os.close(self.read_fd)
            self.read_fd = -1
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
        return b"".join(self.chunks)


@dataclass
class DirectExecSync:
    """One ExecSync call through ``runc exec``; :meth:`run` does it and cleans up."""

    cid: str
    handler: RuntimeHandlerSpec
    work_root: Path
    cmd: list[str]
    base_spec: dict[str, Any]
    timeout: float
    #: the daemon's child watcher, which reaps the detached command.
    watcher: ReapingChildWatcher
    systemd: bool = False
    #: pid namespace inode of the container, to scope the post-timeout kill.
    container_pidns: int | None = None

    async def run(self) -> ExecResult:
        async with exec_work_dir(self.work_root, self.cid) as work:
            return await self._run(work)

    async def _run(self, work: Path) -> ExecResult:
        spec_path = work / "process.json"
        spec_path.write_text(json.dumps(process_spec(self.base_spec, self.cmd, False)))
        pidfile = work / "pid"
        argv = [
            *base_argv(self.handler, self.systemd),
            "exec", "--detach", "--process", str(spec_path), "--pid-file", str(pidfile), self.cid,
        ]  # fmt: skip
        out, err = _Capture(EXEC_SYNC_MAX_OUTPUT), _Capture(EXEC_SYNC_MAX_OUTPUT)
        exited = self.watcher.claim(pidfile)
        started = False
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out.write_fd,
                    stderr=err.write_fd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise OCIRuntimeError(f"cannot run {self.handler.path}: {exc}")
            out.start()
            err.start()
            try:
                started = await proc.wait() == 0
                if started:
                    code = await self._wait(exited)
            except BaseException:
                # Cancelled: nothing of this exec may outlive the call.
                await asyncio.shield(self._kill_and_reap(pidfile, exited))
                raise
            if started and code is None:
                await asyncio.shield(self._kill_and_reap(pidfile, exited))
        finally:
            self.watcher.release(pidfile)
            stdout, stderr = out.finish(), err.finish()
        if not started:
            # The command never started (no such binary, container gone): the
            # runtime's own complaint is all there is on stderr.
            text = stderr.decode("utf-8", "replace")
            raise OCIRuntimeError(
                f"exec in {self.cid} failed: {clean_runtime_message(text) or 'unknown error'}", text
            )
        if code is None:
            raise ExecTimeout(f"command {self.cmd[0]!r} timed out after {self.timeout}s", stdout, stderr)
        return ExecResult(code if code >= 0 else 128 - code, stdout, stderr)

    async def _wait(self, exited: asyncio.Future[int]) -> int | None:
        """The command's exit code, or None at the deadline."""
        limit = self.timeout if self.timeout > 0 else None
        try:
            return await asyncio.wait_for(asyncio.shield(exited), limit)
        except TimeoutError:
            return None

    async def _kill_and_reap(self, pidfile: Path, exited: asyncio.Future[int]) -> None:
        """Kill the command's tree and wait until the command itself is reaped."""
        pid = read_pid_file(pidfile)
        # The command and what it forked (never the daemon, its parent now).
        killed = kill_exec_tree(pidfile, pid, self.container_pidns) if pid is not None else []
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), REAP_TIMEOUT)
        await asyncio.gather(*(procs.wait_exit(p.pid, p.start_time, REAP_TIMEOUT) for p in killed))
