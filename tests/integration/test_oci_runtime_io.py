"""Container I/O through conmon: tty, attach socket, stdin, resize, log reopening, OOM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from pycrio import inotify
from pycrio.oci import cgroups, crilog
from pycrio.oci.runtime import ContainerNotRunning
from tests.integration import test_oci_runtime_fixtures as fx
from tests.integration.test_oci_runtime_fixtures import Env, needs_host

pytestmark = [needs_host, pytest.mark.root]

# The shared fixtures, visible to pytest in this module.
env, rootfs, short_base, subreaper = fx.env, fx.rootfs, fx.short_base, fx.subreaper

TICKER = ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo tick$i; /bin/busybox sleep 0.05; done"]


async def wait_for_file(path: Path, pred: Callable[[bytes], bool], limit: float = 10) -> bytes:
    """Wait (inotify on the directory) until ``pred(content)`` holds."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    with inotify.Inotify() as ino:
        ino.add_watch(path.parent, inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_MOVED_TO)
        ino.attach(loop, lambda evs: changed.set())
        async with asyncio.timeout(limit):
            # Bounded by the timeout above.
            while True:
                changed.clear()
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    data = b""
                if pred(data):
                    return data
                await changed.wait()


def stdout_of(data: bytes) -> bytes:
    return crilog.split_streams(data)[0]


async def recv_packet(sock: socket.socket, limit: float = 10) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 65536), limit)


async def test_tty_container_logs(env: Env) -> None:
    cid, _ = await env.run(["/bin/sh", "-c", "tty; echo to-stderr >&2; printf done"], tty=True)
    info = await env.runtime.wait_exit(cid, 10)
    assert info.exit_code == 0
    records = list(crilog.iter_records(env.log_path(cid).read_bytes(), strict=True))
    # conmon holds the pty: everything arrives on stdout.
    assert {r.stream for r in records} == {"stdout"}
    out = stdout_of(env.log_path(cid).read_bytes())
    # The terminal turned each newline into CRLF; the log keeps the bytes as they came.
    assert out == b"/dev/pts/0\r\nto-stderr\r\ndone"


async def test_attach_socket_receives_output(env: Env) -> None:
    cid, _ = await env.run(TICKER)
    path = env.runtime.attach_socket_path(cid)
    assert path.is_socket() and (os.stat(path).st_mode & 0o777) == 0o700
    sock = env.runtime.connect_attach(cid)
    try:
        pkt = await recv_packet(sock)
        # One byte of pipe id (2 = stdout), then the data.
        assert pkt[0] == 2 and pkt[1:].startswith(b"tick") and pkt.endswith(b"\n")
    finally:
        sock.close()


async def test_attach_stdin_once(env: Env) -> None:
    cid, _ = await env.run(
        ["/bin/sh", "-c", "read line; echo got:$line; read x; echo bye"], stdin=True, stdin_once=True
    )
    sock = env.runtime.connect_attach(cid)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, b"hello\n")
        assert await recv_packet(sock) == b"\x02got:hello\n"
        # The client's EOF (SHUT_WR) closes the container's stdin: the second read ends.
        sock.shutdown(socket.SHUT_WR)
        info = await env.runtime.wait_exit(cid, 10)
        assert info.exit_code == 0
    finally:
        sock.close()
    assert stdout_of(env.log_path(cid).read_bytes()) == b"got:hello\nbye\n"


async def test_attach_stdin_stays_open(env: Env) -> None:
    cid, _ = await env.run(["/bin/sh", "-c", "while read line; do echo got:$line; done"], stdin=True)
    loop = asyncio.get_running_loop()
    for word in (b"one", b"two"):
        sock = env.runtime.connect_attach(cid)
        try:
            await loop.sock_sendall(sock, word + b"\n")
            assert await recv_packet(sock) == b"\x02got:" + word + b"\n"
            sock.shutdown(socket.SHUT_WR)
        finally:
            sock.close()
    # Both clients are gone and stdin is still open: the container keeps running.
    assert env.runtime.container_pid(cid) is not None


async def test_resize_tty(env: Env) -> None:
    cid, _ = await env.run(
        ["/bin/sh", "-c", "while true; do /bin/busybox stty size; /bin/busybox sleep 0.05; done"], tty=True
    )
    await env.runtime.resize(cid, 37, 101)
    await wait_for_file(env.log_path(cid), lambda d: b"37 101" in stdout_of(d))
    await env.runtime.resize(cid, 12, 34)
    await wait_for_file(env.log_path(cid), lambda d: b"12 34" in stdout_of(d))
    with pytest.raises(Exception, match="terminal size"):
        await env.runtime.resize(cid, -1, 10)


async def test_reopen_log(env: Env) -> None:
    cid, _ = await env.run(TICKER)
    log = env.log_path(cid)
    await wait_for_file(log, lambda d: b"tick3\n" in stdout_of(d))
    rotated = log.with_name(log.name + ".1")
    os.rename(log, rotated)
    await env.runtime.reopen_log(cid)
    assert log.exists() and os.stat(log).st_ino != os.stat(rotated).st_ino
    data = await wait_for_file(log, lambda d: stdout_of(d).count(b"\n") >= 3)
    first_new = int(stdout_of(data).split(b"\n")[0][4:])
    last_old = int(stdout_of(rotated.read_bytes()).rstrip(b"\n").split(b"\n")[-1][4:])
    # The new file continues where the rotated one stopped: nothing lost, nothing repeated.
    assert first_new == last_old + 1
    # Reopening again (no rename) also works.
    await env.runtime.reopen_log(cid)
    await env.runtime.kill(cid, env.handler, signal.SIGKILL)
    await env.runtime.wait_exit(cid, 10)
    with pytest.raises(ContainerNotRunning):
        await env.runtime.reopen_log(cid)
    with pytest.raises(ContainerNotRunning):
        await env.runtime.resize(cid, 10, 10)


async def test_oom_killed(env: Env) -> None:
    hog = ["/bin/busybox", "awk", 'BEGIN { s = "xxxxxxxxxxxxxxxx"; while (1) s = s s }']
    cid, _ = await env.run(hog, memory_limit=8 * 1024 * 1024)
    info = await env.runtime.wait_exit(cid, 30)
    assert info.exit_code == 137
    assert info.oom_killed
    files = env.runtime.files(cid)
    assert (files.dir / "oom").exists()
    count = cgroups.read_oom_kill_count(cgroups.detect(), env.cgroup_rel(cid))
    assert count is not None and count >= 1
    assert env.runtime.read_exit(cid) == info
    # Should conmon miss the event (a v1 race), the cgroup's oom_kill counter still tells.
    (files.dir / "oom").unlink()
    assert env.runtime.read_exit(cid) == info
    assert (files.dir / "oom").exists()


async def test_oom_verdict_outlives_the_cgroup(env: Env) -> None:
    hog = ["/bin/busybox", "awk", 'BEGIN { s = "xxxxxxxxxxxxxxxx"; while (1) s = s s }']
    cid, _ = await env.run(hog, memory_limit=8 * 1024 * 1024)
    await env.runtime.exit_watcher.wait(cid, 30)
    files = env.runtime.files(cid)
    (files.dir / "oom").unlink(missing_ok=True)
    # runc delete removes the cgroup; delete records the OOM from it first.
    layout = cgroups.detect()
    rec = files.load()
    assert rec is not None
    snapshot = {}
    orig = env.runtime._remove_files

    def keep_exit(cid_: str, files_: object, rec_: dict[str, object]) -> None:
        snapshot["oom"] = (files.dir / "oom").exists()
        snapshot["cgroup_gone"] = not cgroups.exists(layout, env.cgroup_rel(cid))
        orig(cid_, files_, rec_)  # type: ignore[arg-type]

    env.runtime._remove_files = keep_exit  # type: ignore[method-assign,assignment]
    await env.runtime.delete(cid, env.handler)
    assert snapshot == {"oom": True, "cgroup_gone": True}


async def test_not_oom_when_killed_by_signal(env: Env) -> None:
    cid, _ = await env.run(["/bin/busybox", "sleep", "1000"], memory_limit=64 * 1024 * 1024)
    await env.runtime.kill(cid, env.handler, signal.SIGKILL)
    info = await env.runtime.wait_exit(cid, 10)
    assert info.exit_code == 137 and not info.oom_killed


async def test_log_size_max(env: Env) -> None:
    cid = env.new_id()
    bundle = env.bundle(cid, ["/bin/sh", "-c", "i=0; while [ $i -lt 200 ]; do echo line$i; i=$((i+1)); done"])
    await env.runtime.create(cid, env.handler, bundle, str(env.log_path(cid)), log_size_max=2048)
    await env.runtime.start(cid, env.handler)
    await env.runtime.wait_exit(cid, 10)
    data = env.log_path(cid).read_bytes()
    assert 0 < len(data) <= 2048
    assert stdout_of(data).endswith(b"line199\n")
