"""A small inotify binding (ctypes) for the asyncio loop.

Used by the exit watcher (conmon's exits directory), by log reopening
(waiting for conmon to recreate a container's log file), by ``pycrioctl logs -f``
and by the CNI configuration watcher. The fd is
non-blocking; :meth:`Inotify.attach` registers it with ``loop.add_reader``
so events are handled on the loop without any polling thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_HEADER = struct.Struct("iIII")

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_init1.restype = ctypes.c_int
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_add_watch.restype = ctypes.c_int
        _libc = lib
    return _libc


@dataclass(frozen=True, slots=True)
class Event:
    """One inotify event: the watch, the mask and the name inside the watched dir."""

    wd: int
    mask: int
    name: str

    @property
    def overflow(self) -> bool:
        return bool(self.mask & IN_Q_OVERFLOW)


def parse_events(data: bytes) -> list[Event]:
    """Split a buffer read from an inotify fd into events."""
    events: list[Event] = []
    off = 0
    # Each record is a fixed header plus a NUL-padded name; bounded by len(data).
    while off + _HEADER.size <= len(data):
        wd, mask, _cookie, length = _HEADER.unpack_from(data, off)
        off += _HEADER.size
        raw = data[off : off + length]
        off += length
        name = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        events.append(Event(wd, mask, name))
    return events


class Inotify:
    """An inotify instance; close it when done."""

    def __init__(self) -> None:
        fd = _lib().inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd
        self._loop: asyncio.AbstractEventLoop | None = None

    def add_watch(self, path: str | os.PathLike[str], mask: int) -> int:
        wd = _lib().inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {os.fspath(path)}: {os.strerror(err)}")
        return int(wd)

    def read(self) -> list[Event]:
        """Every event queued now; an empty list when none is."""
        out: list[Event] = []
        # Bounded: the kernel queue holds at most max_queued_events.
        for _ in range(1024):
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not data:
                break
            out.extend(parse_events(data))
        return out

    def attach(self, loop: asyncio.AbstractEventLoop, callback: Callable[[list[Event]], None]) -> None:
        """Call ``callback(events)`` on the loop whenever events arrive."""

        def ready() -> None:
            events = self.read()
            if events:
                callback(events)

        loop.add_reader(self.fd, ready)
        self._loop = loop

    def close(self) -> None:
        if self.fd < 0:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.fd)
        self._loop = None
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
