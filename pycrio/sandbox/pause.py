"""The pod's PID namespace holder, for pods whose containers share one.

A PID namespace dies with its first process, so unlike the network or IPC
namespace it cannot be kept alive by a bind mount alone. For such pods
pycrio starts ``catatonit -P`` (a reaper that only waits) as PID 1 of a new
PID namespace and pins that namespace to a file the containers join.

In a pod with its own user namespace the PID namespace must belong to that
user namespace (a container that joined it may only join namespaces it
owns): ``nsenter --user=<pinned userns>`` runs the same ``unshare`` as the
pod's root there.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from pycrio import mount
from pycrio.errors import Internal

UNSHARE = "/usr/bin/unshare"
NSENTER = "/usr/bin/nsenter"


def _first_child(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


async def start_pause(
    command: list[str], pin_path: Path, time_limit: float = 10.0, *, userns: str | None = None
) -> tuple[int, int]:
    """Start the pause process in a new PID namespace and pin the namespace.

    ``userns`` is the pod's pinned user namespace, if it has one: the PID
    namespace is created inside it. Returns (pid of the unshare parent, pid of
    the pause process). Everything started is killed again on failure.
    """
    # nsenter execs unshare in place, so the parent is "unshare" either way.
    prefix = [NSENTER, f"--user={userns}", "--"] if userns else []
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        UNSHARE,
        "--pid",
        "--fork",
        "--kill-child",
        "--",
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        child = None
        deadline = asyncio.get_running_loop().time() + time_limit
        delay = 0.0005
        while child is None:
            if proc.returncode is not None:
                raise Internal(f"pause process {command[0]} exited at once with {proc.returncode}")
            child = _first_child(proc.pid)
            if child is None:
                if asyncio.get_running_loop().time() > deadline:
                    raise Internal("pause process did not start in time")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
        # The child's PID namespace is fixed from its fork on.
        pin_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(pin_path, os.O_CREAT | os.O_RDONLY | os.O_CLOEXEC, 0o444)
        os.close(fd)
        mount.mount(f"/proc/{child}/ns/pid", pin_path, "", mount.MS_BIND)
        return proc.pid, child
    except BaseException:
        stop_pause(proc.pid, 0, pin_path, command[0])
        raise


def stop_pause(parent_pid: int, pause_pid: int, pin_path: Path | None, program: str) -> None:
    """Kill the pause process and unpin its namespace; idempotent."""
    for pid, name in ((pause_pid, os.path.basename(program)), (parent_pid, "unshare")):
        if pid > 0 and _runs(pid, name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if pin_path is not None:
        mount.umount_all(pin_path)
        pin_path.unlink(missing_ok=True)


def _runs(pid: int, program: str) -> bool:
    """Guard against pid reuse: only kill a process that still runs ``program``."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return os.path.basename(argv0.decode(errors="replace")) == program
