"""ExecSync through ``conmon --exec``, the way CRI-O runs it, with a stricter timeout.

Used for commands with a terminal (conmon holds the pty); commands without one
run the OCI runtime directly (:mod:`pycrio.oci.execdirect`).

conmon runs ``<runtime> exec --pid-file P --process process.json --detach``,
captures the command's output into a temporary CRI-format log and reports the
exit code on the sync pipe.

Timeouts: CRI-O relies on conmon's ``-T``, which kills only the command's
process group after whole seconds. pycrio keeps ``-T`` one second later as a
backstop and acts itself at the deadline, while the command's process tree
is still intact: it SIGKILLs the exec process, all its descendants and every
member of its session in the container's pid namespace (so children that
moved to another process group die too). conmon then reports the kill, and
pycrio waits until the exec process is reaped before failing with
:class:`ExecTimeout`. Orphans re-parented to the container's init before the
deadline are out of reach (as with CRI-O); their zombies are init's to reap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrio.errors import DeadlineExceeded
from pycrio.oci import procs
from pycrio.oci.conmon import (
    EXEC_SYNC_MAX_OUTPUT,
    TIMED_OUT_MESSAGE,
    ExecArgs,
    SyncPipe,
    child_env,
    clean_runtime_message,
    exec_argv,
)
from pycrio.oci.crilog import split_streams
from pycrio.oci.runc import OCIRuntimeError, RuntimeHandlerSpec

# Seconds conmon's own -T fires after pycrio's deadline.
BACKSTOP = 1
# How long past its own -T conmon may take before pycrio kills it.
CONMON_GRACE = 5.0
# Rescans for processes forked while the tree was being killed.
KILL_ROUNDS = 5
# How long pycrio waits for killed exec processes to disappear.
REAP_TIMEOUT = 5.0


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class ExecTimeout(DeadlineExceeded):
    """The command ran past its timeout and was killed; partial output attached."""

    def __init__(self, message: str, stdout: bytes = b"", stderr: bytes = b"") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


def process_spec(base: dict[str, Any], cmd: list[str], tty: bool) -> dict[str, Any]:
    """The container's process spec with the exec's command; terminal as asked."""
    # A shallow copy is enough: only top-level keys are replaced.
    spec = dict(base)
    spec["args"] = list(cmd)
    spec["terminal"] = bool(tty)
    if not tty:
        spec.pop("consoleSize", None)
    return spec


def read_output(path: Path) -> tuple[bytes, bytes]:
    """stdout and stderr from conmon's exec log, at most 16 MiB of it."""
    try:
        with open(path, "rb") as f:
            data = f.read(EXEC_SYNC_MAX_OUTPUT)
    except FileNotFoundError:
        return b"", b""
    return split_streams(data)


@contextlib.asynccontextmanager
async def exec_work_dir(work_root: Path, cid: str) -> AsyncIterator[Path]:
    """A private directory for one exec (its process.json, pid file, log), removed after."""
    work_root.mkdir(parents=True, exist_ok=True)
    work = work_root / f"{cid[:16]}-{secrets.token_hex(6)}"
    work.mkdir(mode=0o700)
    try:
        yield work
    finally:
        # Off the event loop: removing the work dir is a handful of syscalls
        # that showed up in profiles of busy daemons.
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, work, True))


def read_pid_file(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def kill_exec_tree(pidfile: Path, root_pid: int, container_pidns: int | None) -> list[procs.ProcStat]:
    """SIGKILL everything of an exec except ``root_pid`` itself (conmon or the runtime).

    That is every descendant of the root (the runtime, the exec process and its
    children, found by ancestry even before the runtime wrote the pid file) and
    every member of the exec's session or process group in the container's pid
    namespace (children that left the process tree). Rescans catch processes
    forked while the tree was being killed.
    """
    pid = read_pid_file(pidfile)
    victims: dict[int, procs.ProcStat] = {}
    for _ in range(KILL_ROUNDS):
        found = procs.family([root_pid], pid if container_pidns else None, container_pidns)
        fresh = [p for p in found if p.pid not in victims and not p.zombie]
        if not fresh:
            break
        for p in fresh:
            procs.kill(p.pid, signal.SIGKILL, p.start_time)
            victims[p.pid] = p
    return list(victims.values())


@dataclass
class ExecSync:
    """One ExecSync call; :meth:`run` does it and cleans up after itself."""

    conmon: str
    cid: str
    handler: RuntimeHandlerSpec
    work_root: Path
    socket_dir: Path
    cmd: list[str]
    base_spec: dict[str, Any]
    timeout: float
    tty: bool = False
    log_level: str = "info"
    systemd: bool = False
    #: pid namespace inode of the container, to scope the post-timeout kill.
    container_pidns: int | None = None

    async def run(self) -> ExecResult:
        if not self.cmd:
            raise ValueError("exec command is empty")
        async with exec_work_dir(self.work_root, self.cid) as work:
            return await self._run(work)

    async def _run(self, work: Path) -> ExecResult:
        spec_path = work / "process.json"
        spec_path.write_text(json.dumps(process_spec(self.base_spec, self.cmd, self.tty)))
        log_path = work / "log"
        pidfile = work / "pid"
        # conmon's -T is the backstop should pycrio itself be too slow.
        secs = math.ceil(self.timeout) + BACKSTOP if self.timeout > 0 else 0
        argv = exec_argv(
            ExecArgs(
                conmon=self.conmon,
                cid=self.cid,
                runtime_path=self.handler.path,
                runtime_root=self.handler.root,
                socket_dir=self.socket_dir,
                process_spec=spec_path,
                log_path=log_path,
                container_pidfile=pidfile,
                timeout=secs,
                log_level=self.log_level,
                terminal=self.tty,
                systemd_cgroup=self.systemd,
            )
        )
        sync = SyncPipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=child_env(sync.child_fd, None),
                pass_fds=(sync.child_fd,),
                start_new_session=True,
            )
        except OSError as exc:
            sync.close()
            raise OCIRuntimeError(f"cannot run conmon ({self.conmon}): {exc}")
        sync.close_child()
        try:
            return await self._wait(proc, sync, secs, pidfile, log_path)
        except asyncio.CancelledError:
            # The caller gave up: nothing of this exec may outlive the call.
            await asyncio.shield(self._kill_all(proc, pidfile, []))
            raise
        finally:
            sync.close()

    async def _wait(
        self,
        proc: asyncio.subprocess.Process,
        sync: SyncPipe,
        secs: int,
        pidfile: Path,
        log_path: Path,
    ) -> ExecResult:
        waiter = asyncio.ensure_future(proc.communicate())
        try:
            killed: list[procs.ProcStat] = []
            if self.timeout > 0:
                done, _ = await asyncio.wait({waiter}, timeout=self.timeout)
                if not done:
                    killed = self._kill_tree(pidfile, proc.pid)
            limit = secs + CONMON_GRACE if secs > 0 else None
            try:
                _, err = await asyncio.wait_for(asyncio.shield(waiter), limit)
            except TimeoutError:
                await self._kill_all(proc, pidfile, killed)
                out, errout = read_output(log_path)
                raise ExecTimeout(f"command timed out after {self.timeout}s (conmon hung)", out, errout)
        finally:
            if not waiter.done():
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)
        msg = await sync.read_message(1.0)
        stdout, stderr = read_output(log_path)
        if killed or (msg is not None and msg.get("message") == TIMED_OUT_MESSAGE):
            await self._reap(pidfile, killed)
            raise ExecTimeout(f"command {self.cmd[0]!r} timed out after {self.timeout}s", stdout, stderr)
        if msg is None:
            text = clean_runtime_message(err.decode("utf-8", "replace"))
            raise OCIRuntimeError(
                f"exec in {self.cid} failed: conmon exited with {proc.returncode} without a result: {text}",
                err.decode("utf-8", "replace"),
            )
        code = msg.get("exit_code")
        message = str(msg.get("message") or "")
        if not isinstance(code, int) or code < 0:
            # The runtime could not start the command (no such binary, container gone).
            await self._reap(pidfile, self._kill_tree(pidfile, proc.pid))
            raise OCIRuntimeError(
                f"exec in {self.cid} failed: {clean_runtime_message(message) or 'unknown error'}", message
            )
        return ExecResult(code, stdout, stderr)

    def _kill_tree(self, pidfile: Path, conmon_pid: int) -> list[procs.ProcStat]:
        return kill_exec_tree(pidfile, conmon_pid, self.container_pidns)

    async def _kill_all(
        self, proc: asyncio.subprocess.Process, pidfile: Path, killed: list[procs.ProcStat]
    ) -> None:
        """Kill conmon and everything of the exec (cancelled call, hung conmon)."""
        killed = killed + self._kill_tree(pidfile, proc.pid)
        if proc.returncode is None:
            procs.kill_child(proc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), REAP_TIMEOUT)
        await self._reap(pidfile, killed)

    async def _reap(self, pidfile: Path, killed: list[procs.ProcStat]) -> None:
        """Wait until the killed processes are dead and the exec process is reaped.

        The exec process is conmon's child (runc exec --detach re-parents it to
        conmon, a subreaper); should conmon be gone first, the zombie lands on
        the daemon (also a subreaper) and its reaper collects it. Other killed
        processes belong to the container's init by now: wait for death only.
        """
        pid = read_pid_file(pidfile)
        # A last sweep: anything left in the session (conmon's -T kills only the group).
        if pid is not None and self.container_pidns is not None:
            seen = {p.pid for p in killed}
            for m in procs.session_members(pid, self.container_pidns):
                if m.pid not in seen:
                    procs.kill(m.pid, signal.SIGKILL, m.start_time)
                    killed.append(m)
        waits = [
            procs.wait_gone(p.pid, p.start_time, REAP_TIMEOUT)
            if p.pid == pid
            else procs.wait_exit(p.pid, p.start_time, REAP_TIMEOUT)
            for p in killed
        ]
        await asyncio.gather(*waits)


def stale_work_dirs(work_root: Path) -> list[Path]:
    """Exec work dirs left by a daemon that died mid-exec."""
    try:
        return [p for p in work_root.iterdir() if p.is_dir()]
    except OSError:
        return []


def remove_stale(work_root: Path) -> None:
    for p in stale_work_dirs(work_root):
        shutil.rmtree(p, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.makedirs(work_root, exist_ok=True)
