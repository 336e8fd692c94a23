"""conmon's command line and its sync pipe, as pycrio drives conmon 2.1.x.

conmon reads two fds named by environment variables:

* ``_OCI_SYNCPIPE``: conmon writes one JSON line. For create it is
  ``{"pid": N}`` once the runtime created the container, or
  ``{"pid": -1, "message": "<runtime stderr>"}`` on failure. With ``--exec`` it
  is ``{"exit_code": N}`` when the command ended, or ``{"exit_code": -1,
  "message": "command timed out"}`` after ``-T``.
* ``_OCI_STARTPIPE``: conmon blocks until its parent writes a byte, so the
  parent can first move conmon into a cgroup.

The fds need not be 3 and 4: the variables carry their numbers, so pycrio
passes its socketpair ends with ``pass_fds`` and no ``preexec_fn``.

Without ``--sync`` conmon forks: the first process writes the conmon pid file
and exits 0, the daemon child runs the runtime and monitors the container.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrio.errors import DeadlineExceeded, Internal

#: conmon's message on the sync pipe when ``-T`` expired.
TIMED_OUT_MESSAGE = "command timed out"
#: Largest output ExecSync returns (CRI-O's maxExecSyncSize).
EXEC_SYNC_MAX_OUTPUT = 16 * 1024 * 1024
_SYNC_MAX = 1 << 16

_LEVELS = {
    "trace": "trace",
    "debug": "debug",
    "info": "info",
    "warning": "warn",
    "warn": "warn",
    "error": "error",
    "fatal": "fatal",
}


def log_level(level: str) -> str:
    """pycrio's log level as one conmon accepts (unknown: info)."""
    return _LEVELS.get(level.lower(), "info")


@dataclass(frozen=True)
class CreateArgs:
    """Everything conmon needs to create one container."""

    conmon: str
    cid: str
    bundle: Path
    runtime_path: str
    runtime_root: str
    exits_dir: Path
    persist_dir: Path
    socket_dir: Path
    log_path: str
    conmon_pidfile: Path
    container_pidfile: Path
    log_level: str = "info"
    systemd_cgroup: bool = False
    log_size_max: int = -1
    terminal: bool = False
    stdin: bool = False
    stdin_once: bool = False
    no_pivot: bool = False


def create_argv(a: CreateArgs) -> list[str]:
    """conmon's argv for creating a container (the shape CRI-O uses, minus syslog)."""
    argv = [
        a.conmon,
        "-b", str(a.bundle),
        "-c", a.cid,
        "--exit-dir", str(a.exits_dir),
        "-l", a.log_path,
        "--log-level", log_level(a.log_level),
        "-n", a.cid,
        "-P", str(a.conmon_pidfile),
        "-p", str(a.container_pidfile),
        "--persist-dir", str(a.persist_dir),
        "-r", a.runtime_path,
        "--runtime-arg", f"--root={a.runtime_root}",
        "--socket-dir-path", str(a.socket_dir),
        "-u", a.cid,
    ]
    if a.systemd_cgroup:
        argv.append("-s")
    if a.log_size_max >= 0:
        argv += ["--log-size-max", str(a.log_size_max)]
    if a.no_pivot:
        argv.append("--no-pivot")
    if a.terminal:
        argv.append("-t")
    elif a.stdin:
        if not a.stdin_once:
            argv.append("--leave-stdin-open")
        argv.append("-i")
    return argv


@dataclass(frozen=True)
class ExecArgs:
    """Everything conmon needs to run one command in a container (``--exec``)."""

    conmon: str
    cid: str
    runtime_path: str
    runtime_root: str
    socket_dir: Path
    process_spec: Path
    log_path: Path
    container_pidfile: Path
    timeout: int = 0
    log_level: str = "info"
    terminal: bool = False
    systemd_cgroup: bool = False
    log_global_size_max: int = EXEC_SYNC_MAX_OUTPUT


def exec_argv(a: ExecArgs) -> list[str]:
    """conmon's argv for ExecSync; ``--sync`` keeps conmon our direct child."""
    argv = [
        a.conmon,
        "-c", a.cid,
        "-n", a.cid,
        "-r", a.runtime_path,
        "-p", str(a.container_pidfile),
        "-e",
        "-l", str(a.log_path),
        "--socket-dir-path", str(a.socket_dir),
        "--log-level", log_level(a.log_level),
        "--sync",
    ]
    if a.log_global_size_max > 0:
        argv += ["--log-global-size-max", str(a.log_global_size_max)]
    if a.terminal:
        argv.append("-t")
    if a.timeout > 0:
        argv += ["-T", str(a.timeout)]
    if a.systemd_cgroup:
        argv.append("-s")
    argv += ["--exec-process-spec", str(a.process_spec), "--runtime-arg", f"--root={a.runtime_root}"]
    return argv


def child_env(sync_fd: int | None, start_fd: int | None) -> dict[str, str]:
    """A small, explicit environment: conmon and the runtime inherit nothing else."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")}
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        env["XDG_RUNTIME_DIR"] = xdg
    if sync_fd is not None:
        env["_OCI_SYNCPIPE"] = str(sync_fd)
    if start_fd is not None:
        env["_OCI_STARTPIPE"] = str(start_fd)
    return env


class SyncPipe:
    """The parent's end of a conmon sync or start socketpair (non-blocking)."""

    def __init__(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent.setblocking(False)
        self.parent = parent
        self.child = child

    @property
    def child_fd(self) -> int:
        return self.child.fileno()

    def close_child(self) -> None:
        self.child.close()

    def close(self) -> None:
        self.child.close()
        self.parent.close()

    async def send_byte(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.parent, b"\0")

    async def read_message(self, limit: float | None) -> dict[str, Any] | None:
        """The first JSON line conmon writes; None on EOF before any line."""
        loop = asyncio.get_running_loop()
        buf = bytearray()

        async def read() -> None:
            # Bounded by _SYNC_MAX bytes.
            while b"\n" not in buf and len(buf) < _SYNC_MAX:
                chunk = await loop.sock_recv(self.parent, 4096)
                if not chunk:
                    return
                buf.extend(chunk)

        try:
            await asyncio.wait_for(read(), limit)
        except TimeoutError:
            raise DeadlineExceeded(f"conmon did not report within {limit}s")
        line = bytes(buf).split(b"\n", 1)[0].strip()
        if not line:
            return None
        try:
            msg = json.loads(line)
        except ValueError:
            raise Internal(f"conmon sent an unreadable sync message: {line[:200]!r}")
        if not isinstance(msg, dict):
            raise Internal(f"conmon sent an unexpected sync message: {line[:200]!r}")
        return msg


def clean_runtime_message(message: str) -> str:
    """runc's logrus line ``time=... level=error msg="..."`` reduced to its msg."""
    text = message.strip()
    out: list[str] = []
    for line in text.splitlines():
        marker = ' msg="'
        i = line.find(marker)
        if i >= 0 and line.startswith("time="):
            body = line[i + len(marker) :]
            if body.endswith('"'):
                body = body[:-1]
            out.append(body.replace('\\"', '"'))
        elif line.strip():
            out.append(line.strip())
    return "; ".join(out) or text
