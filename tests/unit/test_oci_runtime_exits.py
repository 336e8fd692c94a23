"""Exit files and the inotify exit watcher, with files written the way conmon writes them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pycrio import inotify
from pycrio.errors import DeadlineExceeded
from pycrio.oci import exits
from pycrio.oci.exits import ExitWatcher


def conmon_write(directory: Path, name: str, status: int) -> None:
    """Like g_file_set_contents: a temporary sibling, then rename."""
    tmp = directory / f"{name}.AB12CD"
    tmp.write_text(str(status))
    os.rename(tmp, directory / name)


def test_read_exit(tmp_path: Path) -> None:
    assert exits.read_exit(tmp_path) is None
    conmon_write(tmp_path, "exit", 137)
    os.utime(tmp_path / "exit", ns=(1_000_000_000, 2_000_000_123))
    info = exits.read_exit(tmp_path)
    assert info is not None
    assert (info.exit_code, info.finished_at_ns, info.oom_killed) == (137, 2_000_000_123, False)
    (tmp_path / "oom").touch()
    info = exits.read_exit(tmp_path)
    assert info is not None and info.oom_killed


def test_read_exit_garbage(tmp_path: Path) -> None:
    (tmp_path / "exit").write_text("")
    assert exits.read_exit(tmp_path) is None
    (tmp_path / "exit").write_text("x1")
    assert exits.read_exit(tmp_path) is None
    (tmp_path / "exit").write_text("-1\n")
    info = exits.read_exit(tmp_path)
    assert info is not None and info.exit_code == -1


def test_parse_inotify_events() -> None:
    import struct

    raw = struct.pack("iIII", 1, inotify.IN_MOVED_TO, 0, 8) + b"abc\0\0\0\0\0"
    raw += struct.pack("iIII", 1, inotify.IN_Q_OVERFLOW, 0, 0)
    evs = inotify.parse_events(raw)
    assert evs[0] == inotify.Event(1, inotify.IN_MOVED_TO, "abc")
    assert evs[1].overflow and evs[1].name == ""


async def test_watcher_reports_new_and_old_exits(tmp_path: Path) -> None:
    exits_dir = tmp_path / "exits"
    exits_dir.mkdir()
    conmon_write(exits_dir, "old", 0)
    (exits_dir / "junk.tmp").write_text("1")
    w = ExitWatcher(exits_dir)
    seen: list[str] = []
    got = asyncio.Event()

    def cb(cid: str) -> None:
        seen.append(cid)
        got.set()

    w.on_exit(cb)
    w.start()
    try:
        # Exits that happened while nobody watched are reported at start.
        assert seen == ["old"]
        got.clear()
        conmon_write(exits_dir, "new1", 3)
        await asyncio.wait_for(got.wait(), 5)
        assert seen == ["old", "new1"]
        # A second write of the same id is not reported twice; forget() re-arms it.
        got.clear()
        conmon_write(exits_dir, "new1", 3)
        conmon_write(exits_dir, "new2", 0)
        await asyncio.wait_for(got.wait(), 5)
        assert seen == ["old", "new1", "new2"]
        w.forget("new1")
        w.rescan()
        assert seen[-1] == "new1"
    finally:
        w.close()
    assert not w.running


async def test_watcher_survives_failing_callback(tmp_path: Path) -> None:
    w = ExitWatcher(tmp_path / "exits")
    seen: list[str] = []

    def bad(cid: str) -> None:
        raise RuntimeError("boom")

    got = asyncio.Event()

    def good(cid: str) -> None:
        seen.append(cid)
        got.set()

    w.on_exit(bad)
    w.on_exit(good)
    w.start()
    try:
        conmon_write(w.exits_dir, "c1", 1)
        await asyncio.wait_for(got.wait(), 5)
        assert seen == ["c1"]
    finally:
        w.close()


async def test_wait(tmp_path: Path) -> None:
    w = ExitWatcher(tmp_path / "exits")
    with pytest.raises(RuntimeError):
        await w.wait("x", 0.1)
    w.start()
    try:
        with pytest.raises(DeadlineExceeded):
            await w.wait("x", 0.05)
        waiter = asyncio.ensure_future(w.wait("x", 5))
        await asyncio.sleep(0)
        assert not waiter.done()
        conmon_write(w.exits_dir, "x", 0)
        await asyncio.wait_for(waiter, 5)
        # Already there: returns at once.
        await w.wait("x", 0)
    finally:
        w.close()


async def test_close_cancels_waiters(tmp_path: Path) -> None:
    w = ExitWatcher(tmp_path / "exits")
    w.start()
    waiter = asyncio.ensure_future(w.wait("never", None))
    await asyncio.sleep(0)
    w.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter


def test_inotify_errors(tmp_path: Path) -> None:
    with inotify.Inotify() as ino:
        with pytest.raises(OSError):
            ino.add_watch(tmp_path / "missing", inotify.IN_CREATE)
        assert ino.read() == []
    assert ino.fd == -1
    ino.close()


def test_oom_from_cgroup_counter_v2(tmp_path: Path) -> None:
    from pycrio.oci import monitor
    from pycrio.oci.cgroups import Layout
    from pycrio.oci.runtime_files import ContainerFiles

    cg = tmp_path / "cg2"
    (cg / "pod" / "c").mkdir(parents=True)
    (cg / "pod" / "c" / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    layout = Layout(unified=cg)
    files = ContainerFiles(tmp_path / "persist")
    files.dir.mkdir()
    rec = {"cgroups": {"": "/pod/c"}}
    assert not monitor.record_oom(files, rec, layout)
    assert not (files.dir / "oom").exists()
    (cg / "pod" / "c" / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert monitor.record_oom(files, rec, layout)
    assert (files.dir / "oom").exists()
    # Once written, the file alone answers (the cgroup may be gone by then).
    assert monitor.record_oom(files, {}, Layout())
