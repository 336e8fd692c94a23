"""The daemon's child watcher: reaps orphans, never loses an asyncio child's status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pycrio import reaper


def _run(code: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter: the subreaper flag and the watcher must not leak into pytest.
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_exit_codes_and_orphans_are_reaped() -> None:
    code = """
import asyncio, os, sys
from pycrio import reaper

async def main():
    w = reaper.install(asyncio.get_running_loop())
    p = await asyncio.create_subprocess_exec("/bin/sh", "-c", "exit 7")
    assert await p.wait() == 7, "exit code"
    p = await asyncio.create_subprocess_exec("/bin/sh", "-c", "kill -9 $$")
    assert await p.wait() == -9, "signal"
    # A daemonizing child: its grandchild is re-parented to us and reaped.
    p = await asyncio.create_subprocess_exec("/bin/sh", "-c", "(sleep 0.2; exit 3) & exit 0")
    assert await p.wait() == 0
    for _ in range(100):
        if w.reaped_orphans:
            break
        await asyncio.sleep(0.05)
    assert w.reaped_orphans >= 1, "orphan reaped"
    print("ok")

asyncio.run(main())
"""
    proc = _run(code)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_kill_after_exit_does_not_hang_wait() -> None:
    # Process.kill() polls the Popen, which may reap the child first.
    code = """
import asyncio, os
from pycrio import reaper

async def main():
    reaper.install(asyncio.get_running_loop())
    for _ in range(20):
        p = await asyncio.create_subprocess_exec("/bin/true")
        while True:
            try:
                os.kill(p.pid, 0)
                st = open(f"/proc/{p.pid}/stat").read().split()[2]
            except (ProcessLookupError, FileNotFoundError):
                break
            if st == "Z":
                break
            await asyncio.sleep(0.001)
        try:
            p.kill()
        except ProcessLookupError:
            pass
        code = await asyncio.wait_for(p.wait(), 5)
        assert code in (0, 255, -9), code
    print("ok")

asyncio.run(main())
"""
    proc = _run(code)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_signal_numbers_map_like_asyncio() -> None:
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGTERM)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert reaper._exit_code(status) == -signal.SIGTERM


def test_a_reused_pid_never_gets_an_orphans_status() -> None:
    """An orphan's exit status must not reach a later child that is given the same pid."""
    code = """
import asyncio, os
from pycrio import reaper

async def main():
    w = reaper.install(asyncio.get_running_loop())
    for attempt in range(20):
        # A grandchild exits with 3 after its parent is gone: an orphan we reap.
        p = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", "/bin/sh -c 'sleep 0.05; exit 3' & echo $!", stdout=asyncio.subprocess.PIPE)
        orphan = int((await p.stdout.read()).strip())
        await p.wait()
        before = w.reaped_orphans
        for _ in range(200):
            if w.reaped_orphans > before:
                break
            await asyncio.sleep(0.01)
        # Ask the kernel to hand the orphan's pid to the next child.
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(orphan - 1))
        q = await asyncio.create_subprocess_exec("/bin/true")
        rc = await q.wait()
        if q.pid == orphan:
            assert rc == 0, rc
            print("ok")
            return
    print("pid never reused")

asyncio.run(main())
"""
    proc = _run(code)
    out = proc.stdout.strip()
    if out == "pid never reused":
        pytest.skip("other processes took the pid every time")
    assert out == "ok", proc.stderr


def test_claimed_orphan_status_reaches_its_owner() -> None:
    """A detached process named by a pid file: its exit code goes to the claim, not the orphan count."""
    code = """
import asyncio, os, tempfile
from pathlib import Path
from pycrio import reaper

async def main():
    w = reaper.install(asyncio.get_running_loop())
    assert reaper.current() is w
    pidfile = Path(tempfile.mkdtemp()) / "pid"
    fut = w.claim(pidfile)
    # The helper writes the pid file, then exits, leaving its child to us.
    p = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", f"(sleep 0.1; exit 7) & echo $! > {pidfile}; exit 0")
    assert await p.wait() == 0
    assert await asyncio.wait_for(fut, 10) == 7
    assert w.reaped_orphans == 0
    w.release(pidfile)
    print("ok")

asyncio.run(main())
"""
    proc = _run(code)
    assert proc.stdout.strip() == "ok", proc.stderr
