"""The daemon's unix socket: refuse a live one, replace a stale one."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path


class SocketInUse(Exception):
    """Another process answers on the socket path."""


def prepare_socket_path(path: Path) -> None:
    """Make ``path`` free for a new listener.

    A socket nobody listens on (left by a crash) is removed; one that accepts
    a connection belongs to a running daemon and is an error. A path that is
    not a socket at all is never removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            path.unlink(missing_ok=True)
            return
        raise SocketInUse(f"{path} cannot be probed: {exc.strerror}") from exc
    finally:
        probe.close()
    raise SocketInUse(f"another process is already serving {path}; is a pycrio daemon running?")


def secure_socket(path: Path, mode: int = 0o660) -> None:
    os.chmod(path, mode)
