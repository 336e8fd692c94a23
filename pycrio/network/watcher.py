"""Noticing changes in the CNI config directory.

inotify (:mod:`pycrio.inotify`) wakes the waiter on any change in the directory;
where inotify is unavailable, or while the directory does not exist, the
waiter falls back to a bounded poll of the directory's mtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from pycrio import inotify

log = logging.getLogger(__name__)

_MASK = (
    inotify.IN_MODIFY
    | inotify.IN_ATTRIB
    | inotify.IN_CLOSE_WRITE
    | inotify.IN_MOVED_FROM
    | inotify.IN_MOVED_TO
    | inotify.IN_CREATE
    | inotify.IN_DELETE
    | inotify.IN_DELETE_SELF
    | inotify.IN_MOVE_SELF
)
# The watched directory itself went away: the watch must be set up again.
_GONE = inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_IGNORED


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
        self._ino: inotify.Inotify | None = None
        self._event = asyncio.Event()
        self._stamp = _dir_stamp(path)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def using_inotify(self) -> bool:
        return self._ino is not None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arm()

    def _arm(self) -> None:
        if self._ino is not None or not self.use_inotify or not os.path.isdir(self.path):
            return
        try:
            ino = inotify.Inotify()
        except OSError as exc:
            log.info("inotify unavailable for %s (%s): polling instead", self.path, exc)
            return
        try:
            ino.add_watch(self.path, _MASK)
        except OSError as exc:
            ino.close()
            log.info("cannot watch %s (%s): polling instead", self.path, exc)
            return
        assert self._loop is not None
        ino.attach(self._loop, self._on_events)
        self._ino = ino

    def _on_events(self, events: list[inotify.Event]) -> None:
        if any(e.mask & _GONE for e in events):
            self._disarm()
        self._event.set()

    def _disarm(self) -> None:
        if self._ino is not None:
            self._ino.close()
            self._ino = None

    def close(self) -> None:
        self._disarm()

    async def wait(self, limit: float | None) -> bool:
        """Wait for a change; False on timeout. Polls in steps when inotify is off."""
        self._arm()
        if self._ino is not None:
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
