"""Process facts from /proc, and waiting for a process to end (pidfd).

A pid alone is not an identity: pids are reused. pycrio records a process
as ``(pid, start time)`` (field 22 of ``/proc/<pid>/stat``, in clock ticks
since boot) and checks both before trusting or signalling it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    start_time: int

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X", "x")


def stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm is in parentheses and may itself contain spaces and parentheses.
    lpar = raw.find(b"(")
    rpar = raw.rfind(b")")
    if lpar < 0 or rpar < 0:
        return None
    rest = raw[rpar + 2 :].split()
    if len(rest) < 20:
        return None
    try:
        return ProcStat(
            pid=pid,
            comm=raw[lpar + 1 : rpar].decode("utf-8", "replace"),
            state=rest[0].decode(),
            ppid=int(rest[1]),
            pgrp=int(rest[2]),
            session=int(rest[3]),
            start_time=int(rest[19]),
        )
    except ValueError:
        return None


def start_time(pid: int) -> int | None:
    st = stat(pid)
    return None if st is None else st.start_time


def alive(pid: int, started: int | None = None) -> bool:
    """The process exists, is not a zombie and (if given) started at ``started``."""
    if pid <= 0:
        return False
    st = stat(pid)
    if st is None or st.zombie:
        return False
    return started is None or st.start_time == started


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0") if a]


def pid_namespace(pid: int) -> int | None:
    """Inode of the process's pid namespace."""
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def all_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def session_members(session: int, pidns: int | None = None) -> list[ProcStat]:
    """Live (or zombie) processes of a session, optionally in one pid namespace only."""
    out: list[ProcStat] = []
    for pid in all_pids():
        st = stat(pid)
        if st is None or st.session != session:
            continue
        if pidns is not None and pid_namespace(pid) != pidns:
            continue
        out.append(st)
    return out


def scan(pidns: int | None = None) -> list[ProcStat]:
    """Every process (optionally of one pid namespace), read once from /proc."""
    out: list[ProcStat] = []
    for pid in all_pids():
        if pidns is not None and pid_namespace(pid) != pidns:
            continue
        st = stat(pid)
        if st is not None:
            out.append(st)
    return out


def family(roots: list[int], session: int | None = None, pidns: int | None = None) -> list[ProcStat]:
    """Descendants of ``roots`` plus the members of ``session`` (session or process
    group, in pid namespace ``pidns`` only) and their descendants. Roots are
    not included unless they are session members. One /proc scan.
    """
    snapshot = scan()
    children: dict[int, list[ProcStat]] = {}
    for st in snapshot:
        children.setdefault(st.ppid, []).append(st)
    picked: dict[int, ProcStat] = {}
    if session:
        for st in snapshot:
            if session in (st.pid, st.session, st.pgrp) and (pidns is None or pid_namespace(st.pid) == pidns):
                picked[st.pid] = st
    stack = list(roots) + list(picked)
    # Bounded by the size of the snapshot: each pid is added (and expanded) once.
    while stack:
        for child in children.get(stack.pop(), ()):
            if child.pid not in picked and child.pid not in roots:
                picked[child.pid] = child
                stack.append(child.pid)
    return list(picked.values())


def kill(pid: int, sig: int = signal.SIGKILL, started: int | None = None) -> bool:
    """Signal ``pid`` if it is still the process that started at ``started``."""
    if pid <= 0:
        return False
    if started is not None and start_time(pid) != started:
        return False
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_child(proc: asyncio.subprocess.Process, sig: int = signal.SIGKILL) -> None:
    """Signal an asyncio child without ``Process.kill()``.

    ``Process.kill()`` calls ``Popen.poll()``, which reaps an already exited
    child behind the back of the daemon's SIGCHLD reaper; asyncio then never
    learns the exit and ``wait()`` hangs. Until the reaper (on this loop)
    collects it, the pid stays reserved, so plain ``kill(2)`` is safe.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


async def wait_exit(pid: int, started: int | None, limit: float | None) -> bool:
    """Wait until the process ends (zombie or gone). True if it did within ``limit``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        # No pidfd (old kernel): fall back to checking in short steps.
        return await _poll_exit(pid, started, limit)
    try:
        # The pidfd pins whatever process has the pid now; make sure it is ours.
        if not alive(pid, started):
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, ready)
        try:
            await asyncio.wait_for(fut, limit)
            return True
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


async def _poll_exit(pid: int, started: int | None, limit: float | None) -> bool:
    loop = asyncio.get_running_loop()
    end = None if limit is None else loop.time() + limit
    delay = 0.005
    while alive(pid, started):
        if end is not None and loop.time() >= end:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


async def wait_gone(pid: int, started: int | None, limit: float) -> bool:
    """Wait until the process is reaped (not even a zombie is left)."""
    if not await wait_exit(pid, started, limit):
        return False
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    delay = 0.002
    # A reaper on this loop collects the zombie on SIGCHLD; give it turns.
    while True:
        st = stat(pid)
        if st is None or (started is not None and st.start_time != started):
            return True
        if loop.time() >= end:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
