"""ExecSync by running ``<runtime> exec`` directly, without conmon.

For a command without a terminal, conmon adds nothing pycrio needs: the
output comes straight from the runtime's stdout and stderr pipes (no
temporary CRI log to write and parse back) and the exit code is the
runtime's own, which it takes from the command (128+N for signal N). That
saves a process and a few milliseconds on every probe. Commands with a
terminal still go through conmon (:mod:`pycrio.oci.execsync`), which holds
the pty.

Timeouts: at the deadline pycrio SIGKILLs the command, everything it forked
and every member of its session in the container's pid namespace, while the
runtime is still waiting for it; the runtime, the command's parent, then
reaps it and exits. Only then does the call fail with ``ExecTimeout``, so no
zombie is left behind. A cancelled call is cleaned up the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
)
from pycrio.oci.runc import OCIRuntimeError, RuntimeHandlerSpec, base_argv

# The runtime's exit status when it could not start the command at all.
RUNTIME_FAILED = 255
_READ = 65536


async def _collect(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Read to EOF, keeping at most ``limit`` bytes (the rest is drained and dropped)."""
    chunks: list[bytes] = []
    kept = 0
    while True:
        data = await stream.read(_READ)
        if not data:
            return b"".join(chunks)
        if kept < limit:
            piece = data[: limit - kept]
            chunks.append(piece)
            kept += len(piece)


@dataclass
class DirectExecSync:
    """One ExecSync call through ``runc exec``; :meth:`run` does it and cleans up."""

    cid: str
    handler: RuntimeHandlerSpec
    work_root: Path
    cmd: list[str]
    base_spec: dict[str, Any]
    timeout: float
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
            "exec", "--process", str(spec_path), "--pid-file", str(pidfile), self.cid,
        ]  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise OCIRuntimeError(f"cannot run {self.handler.path}: {exc}")
        assert proc.stdout is not None and proc.stderr is not None
        out_task = asyncio.ensure_future(_collect(proc.stdout, EXEC_SYNC_MAX_OUTPUT))
        err_task = asyncio.ensure_future(_collect(proc.stderr, EXEC_SYNC_MAX_OUTPUT))
        try:
            done = await self._wait(proc)
        except BaseException:
            # Cancelled: nothing of this exec may outlive the call.
            await asyncio.shield(self._kill_and_reap(proc, pidfile))
            out_task.cancel()
            err_task.cancel()
            raise
        if not done:
            await asyncio.shield(self._kill_and_reap(proc, pidfile))
        stdout, stderr = await asyncio.gather(out_task, err_task)
        if not done:
            raise ExecTimeout(f"command {self.cmd[0]!r} timed out after {self.timeout}s", stdout, stderr)
        code = proc.returncode
        assert code is not None
        if code == RUNTIME_FAILED and not pidfile.exists():
            # The command never started (no such binary, container gone): the
            # runtime's own complaint is all there is on stderr.
            text = stderr.decode("utf-8", "replace")
            raise OCIRuntimeError(
                f"exec in {self.cid} failed: {clean_runtime_message(text) or 'unknown error'}", text
            )
        return ExecResult(code if code >= 0 else 128 - code, stdout, stderr)

    async def _wait(self, proc: asyncio.subprocess.Process) -> bool:
        """True when the runtime exited on its own, False at the deadline."""
        limit = self.timeout if self.timeout > 0 else None
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), limit)
        except TimeoutError:
            return False
        return True

    async def _kill_and_reap(self, proc: asyncio.subprocess.Process, pidfile: Path) -> None:
        killed = kill_exec_tree(pidfile, proc.pid, self.container_pidns)
        # The runtime reaps the command (its child) and exits; if it does not, kill it too.
        try:
            await asyncio.wait_for(proc.wait(), REAP_TIMEOUT)
        except TimeoutError:
            procs.kill_child(proc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), REAP_TIMEOUT)
        await asyncio.gather(*(procs.wait_exit(p.pid, p.start_time, REAP_TIMEOUT) for p in killed))
