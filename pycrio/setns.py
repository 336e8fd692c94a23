"""setns(2) for Python 3.11 (``os.setns`` arrived in 3.12)."""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

_libc: ctypes.CDLL | None = None


def setns(fd: int, nstype: int) -> None:
    """Move the calling thread into the namespace ``fd`` refers to."""
    native = getattr(os, "setns", None)
    if native is not None:
        native(fd, nstype)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
