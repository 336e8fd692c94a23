"""Noticing changes in the CNI config directory.

inotify (through ctypes) wakes the waiter on any change in the directory;
where inotify is unavailable, or while the directory does not exist, the
waiter falls back to a bounded poll of the directory's mtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
)


def _dir_stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


class DirWatcher:
    """``await wait(limit)`` returns True when ``path`` may have changed."""

    def __init__(self, path: str, poll_interval: float = 2.0, *, use_inotify: bool = True) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.use_inotify = use_inotify
        self._fd = -1
        self._event = asyncio.Event()
        self._stamp = _dir_stamp(path)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def using_inotify(self) -> bool:
        return self._fd >= 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arm()

    def _arm(self) -> None:
        if self._fd >= 0 or not self.use_inotify or not os.path.isdir(self.path):
            return
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            if libc.inotify_add_watch(fd, os.fsencode(self.path), _MASK) < 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, "inotify_add_watch")
        except (OSError, AttributeError) as exc:
            log.info("inotify unavailable for %s (%s): polling instead", self.path, exc)
            return
        self._fd = fd
        assert self._loop is not None
        self._loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        gone = False
        try:
            while True:
                data = os.read(self._fd, 65536)
                if not data:
                    break
                # an event's mask sits at offset 4; DELETE_SELF / MOVE_SELF / IGNORED mean re-arm
                off = 0
                while off + 16 <= len(data):
                    mask = int.from_bytes(data[off + 4 : off + 8], "little")
                    if mask & (_IN_DELETE_SELF | _IN_MOVE_SELF | 0x8000):
                        gone = True
                    off += 16 + int.from_bytes(data[off + 12 : off + 16], "little")
        except BlockingIOError:
            pass
        except OSError:
            gone = True
        if gone:
            self._disarm()
        self._event.set()

    def _disarm(self) -> None:
        if self._fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self._disarm()

    async def wait(self, limit: float | None) -> bool:
        """Wait for a change; False on timeout. Polls in steps when inotify is off."""
        self._arm()
        if self._fd >= 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit):
                    await self._event.wait()
            changed = self._event.is_set()
            self._event.clear()
            return changed
        step = self.poll_interval if limit is None else min(self.poll_interval, limit)
        await asyncio.sleep(step)
        stamp = _dir_stamp(self.path)
        changed = stamp != self._stamp
        self._stamp = stamp
        return changed
