"""Liveness and exit of one container, from its persist dir (works across daemon restarts).

* conmon and the container's init are recorded as (pid, start time), so a
  reused pid is never mistaken for them.
* OOM: conmon 2.1.6 creates ``oom`` on an OOM event (cgroup v1
  ``cgroup.event_control`` on ``memory.oom_control``; v2 ``memory.events``).
  On v1 it can miss an event that races the container's exit, so pycrio also
  reads the ``oom_kill`` counter of the container's memory cgroup (v1
  ``memory.oom_control``, v2 ``memory.events``) while the cgroup exists, and
  writes ``oom`` itself when it sees a kill. ``delete`` does this before the
  runtime removes the cgroup, so the verdict outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

from pycrio.errors import DeadlineExceeded
from pycrio.oci import cgroups, exits, procs
from pycrio.oci.exits import ExitInfo, ExitWatcher
from pycrio.oci.runtime_files import ContainerFiles

log = logging.getLogger("pycrio.oci")


def is_conmon_of(pid: int, cid: str) -> bool:
    argv = procs.cmdline(pid)
    return bool(argv) and os.path.basename(argv[0]).startswith("conmon") and cid in argv


def conmon_alive(files: ContainerFiles, cid: str) -> bool:
    rec = files.load() or {}
    pid = rec.get("conmon_pid") or files.read_conmon_pid()
    if not pid:
        return False
    if rec.get("conmon_start") is not None:
        return procs.alive(pid, rec["conmon_start"])
    return procs.alive(pid) and is_conmon_of(pid, cid)


def container_pid(files: ContainerFiles) -> int | None:
    rec = files.load() or {}
    pid = rec.get("pid")
    if not pid or not procs.alive(pid, rec.get("pid_start")):
        return None
    return int(pid)


def record_oom(files: ContainerFiles, rec: dict[str, Any], layout: cgroups.Layout | None = None) -> bool:
    """True if the container saw an OOM kill; writes ``oom`` when the cgroup says so."""
    if (files.dir / exits.OOM_FILE).exists():
        return True
    paths = rec.get("cgroups") or {}
    rel = paths.get("memory") or paths.get("")
    if not rel or not files.dir.is_dir():
        return False
    if cgroups.read_oom_kill_count(layout or cgroups.detect(), rel):
        with contextlib.suppress(OSError):
            (files.dir / exits.OOM_FILE).touch()
        return True
    return False


def read_exit(files: ContainerFiles) -> ExitInfo | None:
    info = exits.read_exit(files.dir)
    if info is None or info.oom_killed:
        return info
    if record_oom(files, files.load() or {}):
        return ExitInfo(info.exit_code, info.finished_at_ns, True, info.from_conmon)
    return info


async def wait_exit(files: ContainerFiles, cid: str, watcher: ExitWatcher, limit: float) -> ExitInfo:
    """Until the container exits (watcher event or conmon's death); see OCIRuntime.wait_exit."""
    info = read_exit(files)
    if info is not None:
        return info
    rec = files.load() or {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    watch = asyncio.ensure_future(watcher.wait(cid, None))
    conmon_pid, conmon_start = rec.get("conmon_pid"), rec.get("conmon_start")
    conmon_done = asyncio.ensure_future(
        procs.wait_exit(conmon_pid, conmon_start, None) if conmon_pid else asyncio.sleep(0, True)
    )
    try:
        await asyncio.wait({watch, conmon_done}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (watch, conmon_done):
            t.cancel()
        await asyncio.gather(watch, conmon_done, return_exceptions=True)
    info = read_exit(files)
    if info is not None:
        return info
    if conmon_alive(files, cid):
        raise DeadlineExceeded(f"container {cid} did not exit within {limit}s")
    # conmon is gone without an exit file: follow the container process itself.
    pid, started = rec.get("pid"), rec.get("pid_start")
    if pid and not await procs.wait_exit(pid, started, max(0.0, deadline - loop.time())):
        raise DeadlineExceeded(f"container {cid} did not exit within {limit}s (its conmon is gone)")
    info = read_exit(files)
    if info is not None:
        return info
    log.warning("conmon of %s died without an exit file; reporting exit code 255", cid)
    return ExitInfo(255, time.time_ns(), record_oom(files, rec), from_conmon=False)


async def stop_conmon(files: ContainerFiles, rec: dict[str, Any], grace: float) -> None:
    """Wait up to ``grace`` s for conmon to end by itself, then SIGKILL it."""
    pid = rec.get("conmon_pid") or files.read_conmon_pid()
    if not pid:
        return
    started = rec.get("conmon_start")
    if started is None and not is_conmon_of(pid, rec.get("id", "")):
        return
    if grace > 0 and await procs.wait_exit(pid, started, grace):
        return
    if procs.kill(pid, signal.SIGKILL, started):
        await procs.wait_exit(pid, started, 5.0)
