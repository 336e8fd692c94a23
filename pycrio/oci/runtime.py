"""The one place where pycrio talks to conmon and the OCI runtime.

Layout under ``runroot`` (kept short: attach socket paths must fit in 108 bytes):

* ``exits/<id>``: conmon's exit files, watched by :class:`ExitWatcher`.
* ``socks/<id>``: conmon's symlink to the bundle; the attach socket is
  ``socks/<id>/attach``. conmon 2.1.6 leaves the symlink behind; delete removes it.
* ``conmon/<id>/``: conmon's persist dir (``exit``, ``oom``) plus pycrio's own
  ``conmon.pid``, ``pidfile`` and ``pycrio.json`` (bundle, log path, handler,
  pids with start times, cgroups). Everything a restarted daemon needs.
* ``exec/``: per-ExecSync work dirs (process.json, temporary log).

conmon daemonizes out of its own session and is never a child the daemon
must keep alive: stopping pycrio leaves containers and their conmons running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrio import reaper
from pycrio.errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, InvalidArgument
from pycrio.oci import cgroups, ctl, monitor, procs
from pycrio.oci import runc as runc_cli
from pycrio.oci.conmon import CreateArgs, SyncPipe, child_env, clean_runtime_message, create_argv
from pycrio.oci.execdirect import DirectExecSync
from pycrio.oci.execsync import ExecResult, ExecSync, ExecTimeout, remove_stale
from pycrio.oci.exits import ExitInfo, ExitWatcher
from pycrio.oci.runc import (
    ContainerNotFound,
    ContainerNotRunning,
    OCIRuntimeError,
    RuntimeHandlerSpec,
)
from pycrio.oci.runtime_files import ContainerFiles

__all__ = [
    "ContainerNotFound",
    "ContainerNotRunning",
    "CreateResult",
    "ExecResult",
    "ExecTimeout",
    "ExitInfo",
    "ExitWatcher",
    "OCIRuntime",
    "OCIRuntimeError",
    "RuntimeHandlerSpec",
]

log = logging.getLogger("pycrio.oci")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
# How long delete waits for conmon to finish after the container is gone.
CONMON_EXIT_WAIT = 5.0
REOPEN_TIMEOUT = 10.0


@dataclass(frozen=True)
class CreateResult:
    pid: int
    conmon_pid: int


def _check_id(cid: str) -> None:
    if not _ID.match(cid):
        raise InvalidArgument(f"invalid container id {cid!r}")


class OCIRuntime:
    """Creates, signals, inspects and removes containers through conmon and runc/crun."""

    def __init__(
        self,
        conmon: str,
        runroot: Path,
        log_level: str = "info",
        log_size_max_getter: Callable[[], int] = lambda: -1,
        *,
        command_timeout: float = 60.0,
        conmon_cgroup: bool = True,
    ) -> None:
        self.conmon = conmon
        self.runroot = Path(runroot)
        self.log_level = log_level
        self.log_size_max_getter = log_size_max_getter
        self.command_timeout = command_timeout
        #: Move conmon into ``<cgroup_parent>/pycrio-conmon-<id>`` when a parent is given.
        self.conmon_cgroup = conmon_cgroup
        self.exits_dir = self.runroot / "exits"
        self.socket_dir = self.runroot / "socks"
        self.persist_root = self.runroot / "conmon"
        self.exec_root = self.runroot / "exec"
        self.exit_watcher = ExitWatcher(self.exits_dir)
        self._locks: dict[str, asyncio.Lock] = {}

    # -- lifecycle of the runtime object ------------------------------------
    async def startup(self) -> None:
        """Create the directories and start the exit watcher (reports old exits too)."""
        for d in (self.exits_dir, self.socket_dir, self.persist_root):
            d.mkdir(parents=True, exist_ok=True)
        remove_stale(self.exec_root)
        self.exit_watcher.start()

    async def shutdown(self) -> None:
        """Stop watching exits. Containers and their conmons keep running."""
        self.exit_watcher.close()

    def on_exit(self, callback: Callable[[str], None]) -> None:
        """``callback(cid)`` on the loop for each exit file (also those found at start)."""
        self.exit_watcher.on_exit(callback)

    def files(self, cid: str) -> ContainerFiles:
        return ContainerFiles(self.persist_root / cid)

    def known_containers(self) -> list[str]:
        """Ids with a persist dir (for recovery and garbage collection)."""
        try:
            return sorted(n for n in os.listdir(self.persist_root) if _ID.match(n))
        except OSError:
            return []

    def _lock(self, cid: str) -> asyncio.Lock:
        lock = self._locks.get(cid)
        if lock is None:
            lock = self._locks[cid] = asyncio.Lock()
        return lock

    def _record(self, cid: str) -> dict[str, Any]:
        rec = self.files(cid).load()
        if rec is None:
            raise ContainerNotFound(f"container {cid} is not known to the runtime")
        return rec

    @staticmethod
    def _systemd(rec: dict[str, Any] | None) -> bool:
        return rec is not None and rec.get("cgroup_manager") == "systemd"

    # -- create ---------------------------------------------------------------
    async def create(
        self,
        cid: str,
        handler: RuntimeHandlerSpec,
        bundle: Path,
        log_path: str,
        *,
        tty: bool = False,
        stdin: bool = False,
        stdin_once: bool = False,
        cgroup_parent: str | None = None,
        cgroup_manager: str = "cgroupfs",
        log_size_max: int | None = None,
        timeout: float = 240.0,
    ) -> CreateResult:
        """Create the container (runtime ``create`` under conmon); it is not started.

        On any failure nothing is left: conmon killed, runtime state deleted,
        pycrio's files and conmon's files in the bundle removed.
        """
        _check_id(cid)
        bundle = Path(bundle)
        if ":" in log_path or not os.path.isabs(log_path):
            raise InvalidArgument(f"log path must be absolute and contain no ':': {log_path!r}")
        if not (bundle / "config.json").is_file():
            raise InvalidArgument(f"bundle {bundle} has no config.json")
        if cgroup_manager not in ("cgroupfs", "systemd"):
            raise InvalidArgument(f"unknown cgroup manager {cgroup_manager!r}")
        if log_size_max is None:
            log_size_max = self.log_size_max_getter()
        async with self._lock(cid):
            files = self.files(cid)
            if (Path(handler.root) / cid).exists():
                raise AlreadyExists(f"container {cid} already exists in {handler.name}")
            if files.dir.exists():
                if self.conmon_alive(cid):
                    raise AlreadyExists(f"container {cid} already exists")
                shutil.rmtree(files.dir, ignore_errors=True)
            for d in (self.exits_dir, self.socket_dir, self.persist_root):
                d.mkdir(parents=True, exist_ok=True)
            log_existed = os.path.lexists(log_path)
            files.dir.mkdir(mode=0o700)
            conmon_cg = None
            if self.conmon_cgroup and cgroup_parent:
                parent = cgroups.parent_fs_path(cgroup_manager, cgroup_parent)
                conmon_cg = f"{parent.rstrip('/')}/{cgroups.CONMON_PREFIX}-{cid}"
            rec: dict[str, Any] = {
                "id": cid,
                "bundle": str(bundle),
                "log_path": log_path,
                "handler": {"name": handler.name, "path": handler.path, "root": handler.root},
                "cgroup_manager": cgroup_manager,
                "conmon_cgroup": conmon_cg,
                "tty": tty,
                "created_ns": time.time_ns(),
            }
            proc: asyncio.subprocess.Process | None = None
            try:
                files.save(rec)
                args = CreateArgs(
                    conmon=self.conmon,
                    cid=cid,
                    bundle=bundle,
                    runtime_path=handler.path,
                    runtime_root=handler.root,
                    exits_dir=self.exits_dir,
                    persist_dir=files.dir,
                    socket_dir=self.socket_dir,
                    log_path=log_path,
                    conmon_pidfile=files.conmon_pidfile,
                    container_pidfile=files.pidfile,
                    log_level=self.log_level,
                    systemd_cgroup=cgroup_manager == "systemd",
                    log_size_max=log_size_max,
                    terminal=tty,
                    stdin=stdin,
                    stdin_once=stdin_once,
                )
                sync, start = SyncPipe(), SyncPipe()
                try:
                    try:
                        proc = await asyncio.create_subprocess_exec(
                            *create_argv(args),
                            cwd=bundle,
                            stdin=asyncio.subprocess.DEVNULL,
                            stdout=asyncio.subprocess.DEVNULL,
                            stderr=asyncio.subprocess.PIPE,
                            env=child_env(sync.child_fd, start.child_fd),
                            pass_fds=(sync.child_fd, start.child_fd),
                            start_new_session=True,
                        )
                    except OSError as exc:
                        raise OCIRuntimeError(f"cannot run conmon ({self.conmon}): {exc}")
                    sync.close_child()
                    start.close_child()
                    return await self._finish_create(cid, handler, files, rec, proc, sync, start, timeout)
                finally:
                    sync.close()
                    start.close()
            except BaseException:
                await asyncio.shield(self._undo_create(cid, handler, files, rec, proc, log_existed))
                raise

    async def _finish_create(
        self,
        cid: str,
        handler: RuntimeHandlerSpec,
        files: ContainerFiles,
        rec: dict[str, Any],
        proc: asyncio.subprocess.Process,
        sync: SyncPipe,
        start: SyncPipe,
        limit: float,
    ) -> CreateResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        if rec["conmon_cgroup"]:
            try:
                cgroups.move_pid(cgroups.detect(), rec["conmon_cgroup"], proc.pid)
            except OSError as exc:
                raise OCIRuntimeError(f"cannot move conmon into cgroup {rec['conmon_cgroup']}: {exc}")
        try:
            await start.send_byte()
        except OSError:
            # conmon is already gone; its exit status and stderr tell why.
            pass
        try:
            _, err = await asyncio.wait_for(proc.communicate(), max(0.1, deadline - loop.time()))
        except TimeoutError:
            raise DeadlineExceeded(f"conmon for {cid} did not start within {limit}s")
        stderr = err.decode("utf-8", "replace")
        if proc.returncode != 0:
            raise OCIRuntimeError(
                f"container create failed: conmon exited with {proc.returncode}: "
                f"{clean_runtime_message(stderr) or 'no error output'}",
                stderr,
            )
        msg = await sync.read_message(max(0.1, deadline - loop.time()))
        if msg is None:
            raise OCIRuntimeError(f"container create failed: conmon for {cid} exited without reporting")
        pid = msg.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            text = clean_runtime_message(str(msg.get("message") or ""))
            raise OCIRuntimeError(f"container create failed: {text or 'unknown error'}", text)
        conmon_pid = files.read_conmon_pid()
        if conmon_pid is None:
            raise OCIRuntimeError(f"container create failed: conmon for {cid} wrote no pid file")
        rec.update(
            pid=pid,
            pid_start=procs.start_time(pid),
            conmon_pid=conmon_pid,
            conmon_start=procs.start_time(conmon_pid),
            cgroups=procs_cgroups(pid),
        )
        files.save(rec)
        log.debug("container created", extra={"fields": {"id": cid, "pid": pid, "conmon": conmon_pid}})
        return CreateResult(pid, conmon_pid)

    async def _undo_create(
        self,
        cid: str,
        handler: RuntimeHandlerSpec,
        files: ContainerFiles,
        rec: dict[str, Any],
        proc: asyncio.subprocess.Process | None,
        log_existed: bool,
    ) -> None:
        if proc is not None and proc.returncode is None:
            procs.kill_child(proc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5.0)
        await monitor.stop_conmon(files, rec, grace=0.0)
        # A conmon that forked but died before writing its pid file has no record.
        for st in procs.scan():
            if monitor.is_conmon_of(st.pid, cid) and procs.kill(st.pid, signal.SIGKILL, st.start_time):
                await procs.wait_exit(st.pid, st.start_time, 5.0)
        with contextlib.suppress(Exception):
            await runc_cli.run(
                handler, ["delete", "--force", cid], cid=cid,
                limit=self.command_timeout, systemd=self._systemd(rec),
            )
        self._remove_files(cid, files, rec)
        if not log_existed:
            with contextlib.suppress(OSError):
                os.unlink(rec["log_path"])

    # -- runtime commands -----------------------------------------------------
    async def _run(
        self, cid: str, handler: RuntimeHandlerSpec, args: list[str], stdin: bytes | None = None
    ) -> bytes:
        return await runc_cli.run(
            handler, args, cid=cid, stdin=stdin, limit=self.command_timeout,
            systemd=self._systemd(self.files(cid).load()),
        )

    async def start(self, cid: str, handler: RuntimeHandlerSpec) -> None:
        """Start a created container."""
        _check_id(cid)
        async with self._lock(cid):
            await self._run(cid, handler, ["start", cid])

    async def kill(
        self, cid: str, handler: RuntimeHandlerSpec, sig: int, all_processes: bool = False
    ) -> None:
        """Signal the container's init (or every process); a stopped container is fine."""
        _check_id(cid)
        args = ["kill"] + (["--all"] if all_processes else []) + [cid, str(int(sig))]
        try:
            await self._run(cid, handler, args)
        except ContainerNotRunning:
            return

    async def state(self, cid: str, handler: RuntimeHandlerSpec) -> dict[str, Any] | None:
        """The runtime's ``state`` JSON, or None when it does not know the container."""
        _check_id(cid)
        try:
            out = await self._run(cid, handler, ["state", cid])
        except ContainerNotFound:
            return None
        try:
            data = json.loads(out)
        except ValueError:
            raise OCIRuntimeError(f"{handler.name} state {cid}: unreadable output {out[:200]!r}")
        return data if isinstance(data, dict) else None

    async def update(self, cid: str, handler: RuntimeHandlerSpec, resources: dict[str, Any]) -> None:
        """``update --resources -`` with the OCI LinuxResources JSON."""
        _check_id(cid)
        async with self._lock(cid):
            body = json.dumps(resources).encode()
            await self._run(cid, handler, ["update", "--resources", "-", cid], stdin=body)

    async def delete(self, cid: str, handler: RuntimeHandlerSpec, force: bool = True) -> None:
        """Remove the container from the runtime and every file pycrio and conmon made.

        Idempotent. Record the exit (:meth:`read_exit`) before: the persist
        dir goes too. An OOM seen in the cgroup is written to ``oom`` first.
        """
        _check_id(cid)
        async with self._lock(cid):
            files = self.files(cid)
            rec = files.load() or {}
            monitor.record_oom(files, rec)
            try:
                await runc_cli.run(
                    handler, ["delete"] + (["--force"] if force else []) + [cid], cid=cid,
                    limit=self.command_timeout, systemd=self._systemd(rec),
                )
            except ContainerNotFound:
                pass
            except runc_cli.ContainerRunning:
                raise FailedPrecondition(f"container {cid} is running; stop it first")
            await monitor.stop_conmon(files, rec, grace=CONMON_EXIT_WAIT)
            self._remove_files(cid, files, rec)
        self._locks.pop(cid, None)

    def _remove_files(self, cid: str, files: ContainerFiles, rec: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.socket_dir / cid)
        with contextlib.suppress(OSError):
            os.unlink(self.exits_dir / cid)
        bundle = rec.get("bundle")
        if bundle:
            for name in ("ctl", "winsz", "attach", "oom"):
                with contextlib.suppress(OSError):
                    os.unlink(Path(bundle) / name)
        if rec.get("conmon_cgroup"):
            try:
                cgroups.remove(cgroups.detect(), rec["conmon_cgroup"])
            except OSError as exc:
                log.warning("cannot remove conmon cgroup %s: %s", rec["conmon_cgroup"], exc)
        shutil.rmtree(files.dir, ignore_errors=True)
        self.exit_watcher.forget(cid)

    # -- exec ---------------------------------------------------------------------
    async def exec_sync(
        self,
        cid: str,
        handler: RuntimeHandlerSpec,
        cmd: list[str],
        timeout: float,
        process_spec_base: dict[str, Any],
        *,
        tty: bool = False,
    ) -> ExecResult:
        """Run ``cmd`` in the container, wait, return exit code and output (16 MiB max).

        ``timeout`` <= 0 means none. Past it, the command and its session are
        killed and reaped, then :class:`ExecTimeout` (a DeadlineExceeded) is raised.
        """
        _check_id(cid)
        if not cmd:
            raise InvalidArgument("exec command must not be empty")
        rec = self._record(cid)
        pid = self.container_pid(cid)
        if pid is None:
            raise ContainerNotRunning(f"container {cid} is not running")
        watcher = reaper.current()
        if not tty and watcher is not None:
            # Without a terminal conmon adds nothing when the daemon reaps the
            # detached command itself: run the runtime directly.
            return await DirectExecSync(
                cid=cid,
                handler=handler,
                work_root=self.exec_root,
                cmd=cmd,
                base_spec=process_spec_base,
                timeout=timeout,
                watcher=watcher,
                systemd=self._systemd(rec),
                container_pidns=procs.pid_namespace(pid),
            ).run()
        return await ExecSync(
            conmon=self.conmon,
            cid=cid,
            handler=handler,
            work_root=self.exec_root,
            socket_dir=self.socket_dir,
            cmd=cmd,
            base_spec=process_spec_base,
            timeout=timeout,
            tty=tty,
            log_level=self.log_level,
            systemd=self._systemd(rec),
            container_pidns=procs.pid_namespace(pid),
        ).run()

    def exec_argv(
        self, cid: str, handler: RuntimeHandlerSpec, process_json_path: str | Path, tty: bool
    ) -> list[str]:
        """``<runtime> exec --process <file> [--tty] <id>`` for interactive exec (no conmon)."""
        _check_id(cid)
        argv = runc_cli.base_argv(handler, self._systemd(self.files(cid).load()))
        argv += ["exec", "--process", str(process_json_path)]
        if tty:
            argv.append("--tty")
        argv.append(cid)
        return argv

    # -- ctl fifo, attach -----------------------------------------------------------
    async def resize(self, cid: str, height: int, width: int) -> None:
        """Set the window size of a tty container's terminal (``1 h w`` on the ctl fifo)."""
        _check_id(cid)
        if not (0 <= height <= 0xFFFF and 0 <= width <= 0xFFFF):
            raise InvalidArgument(f"bad terminal size {height}x{width}")
        rec = self._record(cid)
        self._check_running(cid)
        ctl.write_ctl(Path(rec["bundle"]), cid, ctl.ctl_line(ctl.RESIZE, height, width))

    async def reopen_log(self, cid: str, timeout: float = REOPEN_TIMEOUT) -> None:
        """Make conmon reopen the log file (``2 0 0``); return once the new file exists."""
        _check_id(cid)
        rec = self._record(cid)
        self._check_running(cid)
        pid = rec.get("conmon_pid") or self.files(cid).read_conmon_pid()
        gone = procs.wait_exit(pid, rec.get("conmon_start"), None) if pid else None
        await ctl.reopen_log(Path(rec["bundle"]), Path(rec["log_path"]), cid, timeout, gone)

    def _check_running(self, cid: str) -> None:
        # conmon outlives the container by a moment (it writes the exit files first).
        if self.read_exit(cid) is not None or not self.conmon_alive(cid):
            raise ContainerNotRunning(f"container {cid} is not running")

    def attach_socket_path(self, cid: str) -> Path:
        """``<runroot>/socks/<id>/attach`` (SOCK_SEQPACKET; packets are [pipe id][data])."""
        return self.socket_dir / cid / "attach"

    def connect_attach(self, cid: str) -> socket.socket:
        """A connected, non-blocking attach socket (works for paths over 108 bytes too)."""
        self._record(cid)
        return ctl.connect_attach(self.attach_socket_path(cid), cid)

    # -- exits and liveness -----------------------------------------------------------
    def read_exit(self, cid: str) -> ExitInfo | None:
        """Exit code (conmon's ``exit`` file), finish time (its mtime), OOM (``oom`` file or cgroup)."""
        return monitor.read_exit(self.files(cid))

    async def wait_exit(self, cid: str, timeout: float) -> ExitInfo:
        """Wait for the container to exit; DeadlineExceeded after ``timeout`` s.

        Woken by the exit watcher (and by conmon's own death), not by polling.
        If conmon dies without writing an exit file, the wait ends when the
        container's process does, with exit code 255 (``from_conmon=False``).
        """
        self._record(cid)
        if not self.exit_watcher.running:
            self.exit_watcher.start()
        return await monitor.wait_exit(self.files(cid), cid, self.exit_watcher, timeout)

    def conmon_alive(self, cid: str) -> bool:
        return monitor.conmon_alive(self.files(cid), cid)

    def container_pid(self, cid: str) -> int | None:
        """The container's init pid while it runs (checked against its start time)."""
        return monitor.container_pid(self.files(cid))

    def cgroup_paths(self, cid: str) -> dict[str, str]:
        """The container's cgroups as its init saw them at create: controller -> path
        (``memory``, ``cpuacct``, ``pids`` on v1; ``""`` is the v2 path). For
        :func:`pycrio.stats.cgroup.resolve`.
        """
        rec = self.files(cid).load() or {}
        return dict(rec.get("cgroups") or {})


def procs_cgroups(pid: int) -> dict[str, str]:
    """The container's cgroup paths worth keeping: memory (v1) and the v2 path."""
    cg = cgroups.pid_cgroups(pid)
    return {k: v for k, v in cg.items() if k in ("memory", "cpuacct", "pids", "")}
