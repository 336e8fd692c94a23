"""Child reaping for a daemon that is a child subreaper.

pycrio marks itself ``PR_SET_CHILD_SUBREAPER`` so that processes orphaned
below it (conmon after it daemonizes, processes left by a killed exec) are
re-parented to pycrio instead of to a PID 1 that may reap slowly. That means
pycrio has children asyncio never started, and they must be reaped too.

:class:`ReapingChildWatcher` replaces asyncio's child watcher: on SIGCHLD
it reaps every exited child with ``waitpid(-1)``. Exits of processes asyncio
is waiting for go to their callbacks; exits of unknown pids (orphans) are
counted and forgotten. Their status must not be kept: pids are reused, and a
stale status handed to a new child with the same pid is a wrong exit code.
Nothing is lost by forgetting: asyncio registers a child in the same loop
step that spawns it, and this watcher reaps only from the loop, so a child
cannot be reaped before it is registered.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("pycrio.reaper")

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants."""
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return status


class ReapingChildWatcher(asyncio.AbstractChildWatcher):
    """Reap all children on SIGCHLD; dispatch exits of known pids."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        # Orphans somebody waits for, named by the pid file their starter writes.
        self._claims: dict[str, asyncio.Future[int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reaped_orphans = 0

    # -- orphans with an owner ---------------------------------------------
    def claim(self, pidfile: Path) -> asyncio.Future[int]:
        """A future for the exit code of the orphan whose pid ``pidfile`` will name.

        For a process started detached by a helper that exits (``runc exec
        --detach``): it is re-parented to this subreaper, and its status must
        reach the caller instead of being dropped as an orphan's. The helper
        writes the pid file before it exits, so before the process can be
        re-parented and reaped here; a pid reused by anyone else cannot match
        while the file names a process that is still ours. Call before starting
        the helper; :meth:`release` when done.
        """
        assert self._loop is not None, "the watcher is not attached to a loop"
        fut: asyncio.Future[int] = self._loop.create_future()
        with self._lock:
            self._claims[str(pidfile)] = fut
        return fut

    def release(self, pidfile: Path) -> None:
        with self._lock:
            self._claims.pop(str(pidfile), None)

    def _claimed(self, pid: int, code: int) -> bool:
        with self._lock:
            claims = list(self._claims.items())
        for path, fut in claims:
            try:
                owner = int(Path(path).read_text().strip())
            except (OSError, ValueError):
                continue
            if owner == pid:
                self.release(Path(path))
                if not fut.done():
                    fut.set_result(code)
                return True
        return False

    # -- AbstractChildWatcher ---------------------------------------------
    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        if self._loop is not None and loop is None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
        self._loop = loop
        if loop is not None:
            loop.add_signal_handler(signal.SIGCHLD, self._reap_all)
            # Children may have exited before the handler was installed.
            self._reap_all()

    def add_child_handler(  # type: ignore[override]
        self, pid: int, callback: Callable[..., Any], *args: Any
    ) -> None:
        with self._lock:
            self._callbacks[pid] = (callback, args)
        # The child may already be a zombie (exited before we were told of it).
        self._reap_all()

    def remove_child_handler(self, pid: int) -> bool:
        with self._lock:
            return self._callbacks.pop(pid, None) is not None

    def close(self) -> None:
        self.attach_loop(None)

    def is_active(self) -> bool:
        return self._loop is not None

    def __enter__(self) -> ReapingChildWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    # -- reaping ----------------------------------------------------------
    def _reap_all(self) -> None:
        # Bounded: there cannot be more zombies than children.
        for _ in range(1 << 16):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self._dispatch(pid, _exit_code(status))
        self._find_reaped_elsewhere()

    def _find_reaped_elsewhere(self) -> None:
        """Dispatch registered children that someone else already reaped.

        asyncio's ``Process.kill()`` polls its ``Popen`` first, and that poll
        reaps a child that has just exited; its status then never reaches
        ``waitpid(-1)``. Without this the process's ``wait()`` never returns.
        """
        with self._lock:
            pids = list(self._callbacks)
        for pid in pids:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                with self._lock:
                    entry = self._callbacks.pop(pid, None)
                if entry is not None:
                    callback, args = entry
                    callback(pid, _code_known_to(args), *args)
                continue
            if done:
                self._dispatch(pid, _exit_code(status))

    def _dispatch(self, pid: int, code: int) -> None:
        with self._lock:
            entry = self._callbacks.pop(pid, None)
        if entry is not None:
            callback, args = entry
            callback(pid, code, *args)
            return
        if not self._claimed(pid, code):
            self.reaped_orphans += 1


def _code_known_to(args: tuple[Any, ...]) -> int:
    """The exit code a subprocess transport's Popen recorded when it reaped the child."""
    popen = getattr(args[0], "_proc", None) if args else None
    code = getattr(popen, "returncode", None)
    return code if isinstance(code, int) else 255


def current() -> ReapingChildWatcher | None:
    """The daemon's watcher when it is installed (pycrio's daemon always installs it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            watcher = asyncio.get_child_watcher()
        except Exception:
            return None
    return watcher if isinstance(watcher, ReapingChildWatcher) and watcher.is_active() else None


def install(loop: asyncio.AbstractEventLoop) -> ReapingChildWatcher:
    """Become a subreaper and route asyncio's child handling through us."""
    become_subreaper()
    watcher = ReapingChildWatcher()
    watcher.attach_loop(loop)
    asyncio.set_child_watcher(watcher)
    return watcher
