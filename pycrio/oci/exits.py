"""Container exits, as conmon records them.

When a container's first process ends, conmon writes its exit status (a
decimal number; 128+N for a signal N) to ``<persist-dir>/exit`` and then to
``<exits-dir>/<id>``; both writes are atomic renames. On an OOM kill it
creates an empty ``oom`` file in the persist dir (and in the bundle).

:class:`ExitWatcher` watches the exits directory with inotify. At start it
also reports every exit file already there, so exits that happened while no
daemon was running are seen after a restart. There is no per-container
polling: one fd on the loop serves every container.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pycrio import inotify
from pycrio.errors import DeadlineExceeded

log = logging.getLogger("pycrio.oci.exits")

EXIT_FILE = "exit"
OOM_FILE = "oom"

_WATCH_MASK = inotify.IN_MOVED_TO | inotify.IN_CLOSE_WRITE | inotify.IN_ONLYDIR


@dataclass(frozen=True)
class ExitInfo:
    """How a container ended."""

    exit_code: int
    #: When conmon wrote the exit file (its mtime), ns since the epoch.
    finished_at_ns: int
    oom_killed: bool
    #: False when pycrio had to make the status up (conmon died without one).
    from_conmon: bool = True


def read_exit_file(path: Path) -> tuple[int, int] | None:
    """``(status, mtime_ns)`` of an exit file, or None if absent or not written yet."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        raw = os.read(fd, 64).strip()
    finally:
        os.close(fd)
    try:
        return int(raw), st.st_mtime_ns
    except ValueError:
        return None


def read_exit(persist_dir: Path) -> ExitInfo | None:
    """The exit of the container whose conmon persist dir is ``persist_dir``."""
    got = read_exit_file(persist_dir / EXIT_FILE)
    if got is None:
        return None
    code, mtime = got
    return ExitInfo(code, mtime, (persist_dir / OOM_FILE).exists())


def valid_exit_name(name: str) -> bool:
    # Container ids never contain dots; glib's temporary files do (name.XXXXXX).
    return bool(name) and "." not in name and "/" not in name


class ExitWatcher:
    """Reports container ids whose exit file appears in ``exits_dir``.

    Callbacks run on the loop, synchronously, once per exit file; keep them
    short (put the id on a queue). ``forget(cid)`` lets a recreated id be
    reported again.
    """

    def __init__(self, exits_dir: Path) -> None:
        self.exits_dir = exits_dir
        self._callbacks: list[Callable[[str], None]] = []
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._reported: set[str] = set()
        self._ino: inotify.Inotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._ino is not None

    def on_exit(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(cid)`` for every exit, including those found at start."""
        self._callbacks.append(callback)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if self._ino is not None:
            return
        self.exits_dir.mkdir(parents=True, exist_ok=True)
        self._loop = loop or asyncio.get_running_loop()
        ino = inotify.Inotify()
        try:
            ino.add_watch(self.exits_dir, _WATCH_MASK)
            ino.attach(self._loop, self._on_events)
        except BaseException:
            ino.close()
            raise
        self._ino = ino
        # Watch first, then scan: an exit between the two is seen (at worst twice,
        # and _reported drops the second).
        self.rescan()

    def close(self) -> None:
        if self._ino is not None:
            self._ino.close()
            self._ino = None
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.cancel()
        self._waiters.clear()

    def rescan(self) -> None:
        """Report every exit file present that was not reported yet."""
        try:
            names = sorted(os.listdir(self.exits_dir))
        except OSError as exc:
            log.warning("cannot list exits directory %s: %s", self.exits_dir, exc)
            return
        for name in names:
            self._report(name)

    def forget(self, cid: str) -> None:
        self._reported.discard(cid)

    def exited(self, cid: str) -> bool:
        return (self.exits_dir / cid).exists()

    async def wait(self, cid: str, limit: float | None) -> None:
        """Until ``<exits_dir>/<cid>`` exists; DeadlineExceeded after ``limit`` s."""
        if self.exited(cid):
            return
        if self._ino is None:
            raise RuntimeError("exit watcher is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(cid, []).append(fut)
        try:
            # The file may have appeared between the check and the registration.
            if self.exited(cid):
                return
            await asyncio.wait_for(asyncio.shield(fut), limit)
        except TimeoutError:
            raise DeadlineExceeded(f"container {cid} did not exit within {limit}s")
        finally:
            waiters = self._waiters.get(cid)
            if waiters is not None:
                if fut in waiters:
                    waiters.remove(fut)
                if not waiters:
                    del self._waiters[cid]
            if not fut.done():
                fut.cancel()

    def _on_events(self, events: list[inotify.Event]) -> None:
        for ev in events:
            if ev.overflow:
                self.rescan()
            elif ev.name:
                self._report(ev.name)

    def _report(self, name: str) -> None:
        if not valid_exit_name(name) or not (self.exits_dir / name).is_file():
            return
        for fut in self._waiters.get(name, ()):
            if not fut.done():
                fut.set_result(None)
        if name in self._reported:
            return
        self._reported.add(name)
        for cb in list(self._callbacks):
            try:
                cb(name)
            except Exception:
                log.exception("exit callback failed for %s", name)
