"""ExecSync through conmon --exec: exact output, streams, exit codes, timeouts, limits, latency."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time

import pytest

from pycrio import inotify
from pycrio.errors import DeadlineExceeded, InvalidArgument, NotFound
from pycrio.oci import procs
from pycrio.oci.runtime import ContainerNotRunning, ExecTimeout, OCIRuntimeError
from tests.integration import test_oci_runtime_fixtures as fx
from tests.integration.test_oci_runtime_fixtures import Env, needs_host, process_spec

pytestmark = [needs_host, pytest.mark.root]

# The shared fixtures, visible to pytest in this module.
env, rootfs, short_base, subreaper = fx.env, fx.rootfs, fx.short_base, fx.subreaper

SLEEPER = ["/bin/busybox", "sleep", "1000"]
BASE = process_spec(SLEEPER)


def container_processes(pid: int) -> list[tuple[int, str, list[str]]]:
    """(pid, state, argv) of every process in the pid namespace of ``pid``."""
    ns = procs.pid_namespace(pid)
    out = []
    for p in procs.all_pids():
        if procs.pid_namespace(p) == ns:
            st = procs.stat(p)
            if st is not None:
                out.append((p, st.state, procs.cmdline(p)))
    return out


async def test_exec_output_is_exact(env: Env) -> None:
    cid, _ = await env.run(SLEEPER)
    res = await env.runtime.exec_sync(cid, env.handler, ["echo", "-n", "hello"], 10, BASE)
    assert (res.exit_code, res.stdout, res.stderr) == (0, b"hello", b"")
    res = await env.runtime.exec_sync(
        cid, env.handler, ["/bin/sh", "-c", "echo out; echo err >&2; printf 'a\\nb'; exit 3"], 10, BASE
    )
    assert res.exit_code == 3
    assert res.stdout == b"out\na\nb"
    assert res.stderr == b"err\n"
    res = await env.runtime.exec_sync(cid, env.handler, ["/bin/busybox", "false"], 0, BASE)
    assert (res.exit_code, res.stdout) == (1, b"")


async def test_exec_sees_the_container(env: Env) -> None:
    cid, res = await env.run(SLEEPER)
    got = await env.runtime.exec_sync(cid, env.handler, ["/bin/busybox", "hostname"], 10, BASE)
    assert got.stdout == b"pycrio-test\n"
    got = await env.runtime.exec_sync(cid, env.handler, ["/bin/busybox", "cat", "/proc/1/cmdline"], 10, BASE)
    assert got.stdout.split(b"\0")[:2] == [b"/bin/busybox", b"sleep"]
    # Concurrent execs do not mix their output.
    outs = await asyncio.gather(
        *(env.runtime.exec_sync(cid, env.handler, ["echo", str(i)], 10, BASE) for i in range(6))
    )
    assert [o.stdout for o in outs] == [f"{i}\n".encode() for i in range(6)]
    assert env.runtime.container_pid(cid) == res.pid


async def test_exec_tty(env: Env) -> None:
    cid, _ = await env.run(SLEEPER)
    cmd = ["/bin/sh", "-c", "tty; echo hi >&2"]
    res = await env.runtime.exec_sync(cid, env.handler, cmd, 10, BASE, tty=True)
    assert res.exit_code == 0
    # One terminal: both streams arrive as stdout, with the terminal's CRLF line ends.
    assert res.stdout.startswith(b"/dev/pts/") and res.stdout.endswith(b"hi\r\n")
    assert res.stderr == b""


async def test_exec_timeout_kills_everything(env: Env) -> None:
    cid, res = await env.run(SLEEPER)
    t0 = time.monotonic()
    with pytest.raises(ExecTimeout) as ei:
        await env.runtime.exec_sync(cid, env.handler, ["sleep", "4321"], 1, BASE)
    took = time.monotonic() - t0
    assert isinstance(ei.value, DeadlineExceeded)
    assert 0.9 < took < 4, took
    left = [p for p in container_processes(res.pid) if "4321" in p[2]]
    assert left == [], left
    # No zombie anywhere (not in the container, not on this process).
    assert all(p[1] != "Z" for p in container_processes(res.pid))
    # The container itself is untouched.
    assert env.runtime.container_pid(cid) == res.pid


async def test_exec_timeout_kills_children_in_other_sessions(env: Env) -> None:
    """A child in a new session escapes conmon's kill(-pgid); pycrio kills the whole tree."""
    cid, res = await env.run(SLEEPER)
    script = "/bin/busybox setsid /bin/busybox sleep 4322 & /bin/busybox sleep 4321"
    with pytest.raises(ExecTimeout):
        await env.runtime.exec_sync(cid, env.handler, ["/bin/sh", "-c", script], 1, BASE)
    left = [p for p in container_processes(res.pid) if p[1] != "Z" and {"4321", "4322"} & set(p[2])]
    assert left == [], left
    # The orphan's zombie belongs to the container's init (here a plain sleep that never reaps).
    assert env.runtime.container_pid(cid) == res.pid


async def test_exec_cancelled_leaves_nothing(env: Env) -> None:
    cid, res = await env.run(SLEEPER)
    started = asyncio.Event()
    with inotify.Inotify() as ino:
        # The container's /tmp, seen from the host through its init's root.
        ino.add_watch(f"/proc/{res.pid}/root/tmp", inotify.IN_CREATE)
        ino.attach(asyncio.get_running_loop(), lambda evs: started.set())
        cmd = ["/bin/sh", "-c", "touch /tmp/started; exec sleep 4323"]
        task = asyncio.ensure_future(env.runtime.exec_sync(cid, env.handler, cmd, 0, BASE))
        await asyncio.wait_for(started.wait(), 10)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 3
    assert [p for p in container_processes(res.pid) if "4323" in p[2]] == []
    assert list(env.runtime.exec_root.iterdir()) == []


async def test_exec_failures(env: Env) -> None:
    cid, _ = await env.run(SLEEPER)
    with pytest.raises(OCIRuntimeError, match="no-such-binary"):
        await env.runtime.exec_sync(cid, env.handler, ["/no-such-binary"], 10, BASE)
    with pytest.raises(InvalidArgument):
        await env.runtime.exec_sync(cid, env.handler, [], 10, BASE)
    await env.runtime.kill(cid, env.handler, signal.SIGKILL)
    await env.runtime.wait_exit(cid, 10)
    with pytest.raises(ContainerNotRunning):
        await env.runtime.exec_sync(cid, env.handler, ["true"], 10, BASE)
    with pytest.raises(NotFound):
        await env.runtime.exec_sync("e" * 64, env.handler, ["true"], 10, BASE)
    assert list(env.runtime.exec_root.iterdir()) == []


async def test_exec_output_limit(env: Env) -> None:
    cid, _ = await env.run(SLEEPER)
    res = await env.runtime.exec_sync(
        cid, env.handler, ["/bin/busybox", "head", "-c", "20000000", "/dev/zero"], 30, BASE
    )
    assert res.exit_code == 0
    assert 12 * 2**20 < len(res.stdout) <= 16 * 2**20
    assert set(res.stdout) == {0}


async def test_latency(env: Env) -> None:
    """create+start and exec_sync(echo), median of 20 each (printed with -s)."""
    create_ms = []
    ids = []
    for _ in range(20):
        t0 = time.perf_counter()
        cid, _ = await env.run(SLEEPER)
        create_ms.append((time.perf_counter() - t0) * 1000)
        ids.append(cid)
    exec_ms = []
    for _ in range(20):
        t0 = time.perf_counter()
        r = await env.runtime.exec_sync(ids[0], env.handler, ["echo", "x"], 10, BASE)
        exec_ms.append((time.perf_counter() - t0) * 1000)
        assert r.stdout == b"x\n"
    for cid in ids:
        await env.runtime.delete(cid, env.handler)
    cm, em = statistics.median(create_ms), statistics.median(exec_ms)
    print(f"\nLATENCY create+start median {cm:.1f} ms (min {min(create_ms):.1f}, max {max(create_ms):.1f})")
    print(f"LATENCY exec_sync echo median {em:.1f} ms (min {min(exec_ms):.1f}, max {max(exec_ms):.1f})")
    assert cm < 2000 and em < 2000
