"""conmon argv, sync pipe, runtime error classification, process helpers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from pycrio.errors import DeadlineExceeded, FailedPrecondition, Internal, NotFound
from pycrio.oci import conmon, procs, runc
from pycrio.oci.execsync import process_spec, read_output
from pycrio.oci.runc import ContainerNotFound, ContainerNotRunning, OCIRuntimeError, RuntimeHandlerSpec
from pycrio.oci.runtime_files import ContainerFiles

H = RuntimeHandlerSpec("runc", "/usr/sbin/runc", "/run/pycrio/runc")


def create_args(**kw: object) -> conmon.CreateArgs:
    base: dict[str, object] = dict(
        conmon="/usr/bin/conmon", cid="c1", bundle=Path("/b"), runtime_path="/usr/sbin/runc",
        runtime_root="/r", exits_dir=Path("/x"), persist_dir=Path("/p"), socket_dir=Path("/s"),
        log_path="/l/c.log", conmon_pidfile=Path("/p/conmon.pid"), container_pidfile=Path("/p/pidfile"),
    )
    base.update(kw)
    return conmon.CreateArgs(**base)  # type: ignore[arg-type]


def opts(argv: list[str]) -> dict[str, str]:
    """Option -> value for the options that take one."""
    out = {}
    for i, a in enumerate(argv[:-1]):
        if a.startswith("-") and not argv[i + 1].startswith("-"):
            out[a] = argv[i + 1]
    return out


def test_create_argv() -> None:
    argv = conmon.create_argv(create_args())
    o = opts(argv)
    assert argv[0] == "/usr/bin/conmon"
    assert o["-b"] == "/b" and o["-c"] == "c1" and o["-u"] == "c1" and o["-n"] == "c1"
    assert o["--exit-dir"] == "/x" and o["--persist-dir"] == "/p" and o["--socket-dir-path"] == "/s"
    assert o["-l"] == "/l/c.log" and o["-P"] == "/p/conmon.pid" and o["-p"] == "/p/pidfile"
    assert o["-r"] == "/usr/sbin/runc" and argv[argv.index("--runtime-arg") + 1] == "--root=/r"
    assert o["--log-level"] == "info"
    for absent in ("-t", "-i", "-s", "--leave-stdin-open", "--log-size-max", "--syslog", "--sync"):
        assert absent not in argv


def test_create_argv_options() -> None:
    argv = conmon.create_argv(create_args(terminal=True, stdin=True, systemd_cgroup=True, log_size_max=1024))
    assert "-t" in argv and "-i" not in argv and "-s" in argv
    assert argv[argv.index("--log-size-max") + 1] == "1024"
    argv = conmon.create_argv(create_args(stdin=True))
    assert "-i" in argv and "--leave-stdin-open" in argv
    argv = conmon.create_argv(create_args(stdin=True, stdin_once=True, log_level="warning"))
    assert "-i" in argv and "--leave-stdin-open" not in argv
    assert argv[argv.index("--log-level") + 1] == "warn"


def test_exec_argv() -> None:
    a = conmon.ExecArgs(
        conmon="/usr/bin/conmon", cid="c1", runtime_path="/usr/sbin/runc", runtime_root="/r",
        socket_dir=Path("/s"), process_spec=Path("/w/process.json"), log_path=Path("/w/log"),
        container_pidfile=Path("/w/pid"), timeout=2,
    )
    argv = conmon.exec_argv(a)
    o = opts(argv)
    assert "-e" in argv and "--sync" in argv and "-b" not in argv and "-u" not in argv
    assert o["-T"] == "2" and o["--exec-process-spec"] == "/w/process.json"
    assert o["--log-global-size-max"] == str(16 * 1024 * 1024)
    assert argv[-2:] == ["--runtime-arg", "--root=/r"]
    argv = conmon.exec_argv(conmon.ExecArgs(**{**a.__dict__, "timeout": 0, "terminal": True}))
    assert "-T" not in argv and "-t" in argv


def test_log_level_and_env() -> None:
    assert conmon.log_level("TRACE") == "trace"
    assert conmon.log_level("fatal") == "fatal"
    assert conmon.log_level("nonsense") == "info"
    env = conmon.child_env(7, 9)
    assert env["_OCI_SYNCPIPE"] == "7" and env["_OCI_STARTPIPE"] == "9" and "PATH" in env
    assert "_OCI_SYNCPIPE" not in conmon.child_env(None, None)
    assert "HOME" not in env


async def test_sync_pipe_messages() -> None:
    p = conmon.SyncPipe()
    try:
        p.child.sendall(b'{"pid": 4')
        p.child.sendall(b'2}\n{"pid": 9}\n')
        assert await p.read_message(1) == {"pid": 42}
    finally:
        p.close()
    p = conmon.SyncPipe()
    p.child.sendall(b'{"pid": -1, "message": "a \\"quoted\\"\\nline"}\n')
    assert await p.read_message(1) == {"pid": -1, "message": 'a "quoted"\nline'}
    p.close_child()
    p.close()


async def test_sync_pipe_eof_garbage_and_timeout() -> None:
    p = conmon.SyncPipe()
    p.close_child()
    assert await p.read_message(1) is None
    p.close()
    p = conmon.SyncPipe()
    p.child.sendall(b"not json\n")
    with pytest.raises(Internal):
        await p.read_message(1)
    p.close()
    p = conmon.SyncPipe()
    p.child.sendall(b"[1]\n")
    with pytest.raises(Internal):
        await p.read_message(1)
    p.close()
    p = conmon.SyncPipe()
    with pytest.raises(DeadlineExceeded):
        await p.read_message(0.05)
    await p.send_byte()
    assert p.child.recv(1) == b"\0"
    p.close()


def test_clean_runtime_message() -> None:
    raw = (
        'time="2024-01-01T00:00:00Z" level=warning msg="cgroup warning"\n'
        'time="2024-01-01T00:00:00Z" level=error msg="runc create failed: unable to start container process: '
        'exec: \\"/nope\\": stat /nope: no such file or directory"\n'
    )
    got = conmon.clean_runtime_message(raw)
    assert got.startswith("cgroup warning; runc create failed")
    assert '"/nope"' in got
    assert conmon.clean_runtime_message("plain error\n") == "plain error"
    assert conmon.clean_runtime_message("") == ""


@pytest.mark.parametrize(
    ("stderr", "cls"),
    [
        ('time="x" level=error msg="container does not exist"', ContainerNotFound),
        ("error opening file `/run/crun/x/status`: No such file or directory", ContainerNotFound),
        ('time="x" level=error msg="container not running"', ContainerNotRunning),
        ("kill: no such process", ContainerNotRunning),
        ("cannot start a container that has stopped", ContainerNotRunning),
        ("cannot delete container x that is not stopped: running", runc.ContainerRunning),
        ("cannot start an already running container", runc.ContainerRunning),
        ("something else broke", OCIRuntimeError),
        ("", OCIRuntimeError),
    ],
)
def test_classify(stderr: str, cls: type) -> None:
    err = runc.classify(H, "kill", "c1", stderr)
    assert type(err) is cls
    assert isinstance(err, NotFound | FailedPrecondition | Internal)


async def test_runtime_command_errors(tmp_path: Path) -> None:
    fake = tmp_path / "fakerunc"
    fake.write_text(
        '#!/bin/sh\necho "$@" > "$0.args"\ncat > "$0.stdin"\necho "container does not exist" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    h = RuntimeHandlerSpec("fake", str(fake), "/root-dir")
    with pytest.raises(ContainerNotFound):
        await runc.run(h, ["state", "c1"], cid="c1", stdin=b"data", systemd=True)
    args = (tmp_path / "fakerunc.args").read_text().split()
    assert args == ["--root", "/root-dir", "--systemd-cgroup", "state", "c1"]
    assert (tmp_path / "fakerunc.stdin").read_bytes() == b"data"
    slow = tmp_path / "slowrunc"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    with pytest.raises(DeadlineExceeded):
        await runc.run(RuntimeHandlerSpec("slow", str(slow), "/r"), ["state", "c1"], cid="c1", limit=0.2)
    with pytest.raises(OCIRuntimeError):
        await runc.run(RuntimeHandlerSpec("none", str(tmp_path / "missing"), "/r"), ["state", "c"], cid="c")


def test_process_spec_and_output(tmp_path: Path) -> None:
    base = {"args": ["sleep"], "terminal": True, "consoleSize": {"height": 1, "width": 2}, "env": ["A=1"]}
    spec = process_spec(base, ["echo", "hi"], tty=False)
    assert spec["args"] == ["echo", "hi"] and spec["terminal"] is False and "consoleSize" not in spec
    assert base["args"] == ["sleep"]  # the container's own spec is untouched
    assert process_spec(base, ["x"], tty=True)["consoleSize"] == {"height": 1, "width": 2}
    log = tmp_path / "log"
    log.write_bytes(b"2024-01-01T00:00:00Z stdout P hello\n2024-01-01T00:00:00Z stderr F err\n")
    assert read_output(log) == (b"hello", b"err\n")
    assert read_output(tmp_path / "none") == (b"", b"")


def test_container_files(tmp_path: Path) -> None:
    f = ContainerFiles(tmp_path)
    assert f.load() is None and f.read_conmon_pid() is None
    f.save({"id": "x", "pid": 3})
    assert f.load() == {"id": "x", "pid": 3, "version": 1}
    f.record.write_text(json.dumps({"version": 99}))
    assert f.load() is None
    f.record.write_text("{broken")
    assert f.load() is None
    f.conmon_pidfile.write_text("123")
    f.pidfile.write_text("junk")
    assert f.read_conmon_pid() == 123 and f.read_pid() is None


async def test_procs() -> None:
    me = procs.stat(os.getpid())
    assert me is not None and me.pid == os.getpid() and not me.zombie
    assert procs.alive(os.getpid(), me.start_time)
    assert not procs.alive(os.getpid(), me.start_time + 1)
    assert procs.stat(2**22 + 7) is None and not procs.alive(0)
    assert procs.pid_namespace(os.getpid()) is not None
    proc = await asyncio.create_subprocess_exec("sleep", "30")
    st = procs.start_time(proc.pid)
    assert procs.cmdline(proc.pid) == ["sleep", "30"]
    assert not await procs.wait_exit(proc.pid, st, 0.05)
    assert not procs.kill(proc.pid, 9, (st or 0) + 1)  # wrong start time: not signalled
    assert procs.kill(proc.pid, 9, st)
    assert await procs.wait_exit(proc.pid, st, 5)
    await proc.wait()
    assert await procs.wait_gone(proc.pid, st, 1)
    assert await procs.wait_exit(proc.pid, st, 1)


def test_session_members() -> None:
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 30 & sleep 30 & echo ready; wait"], start_new_session=True, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        members = procs.session_members(proc.pid, procs.pid_namespace(proc.pid))
        assert {m.session for m in members} == {proc.pid}
        assert len(members) == 3
        assert procs.session_members(proc.pid, 1) == []
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_family() -> None:
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 30 & setsid sh -c 'echo ready; exec sleep 31' & wait"],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        kids = procs.family([proc.pid])
        assert proc.pid not in {k.pid for k in kids}
        assert len(kids) == 2 and {k.ppid for k in kids} == {proc.pid}
        # The setsid child left the session but not the tree.
        assert len({k.session for k in kids}) == 2
        ns = procs.pid_namespace(proc.pid)
        with_leader = procs.family([], session=proc.pid, pidns=ns)
        assert {k.pid for k in with_leader} == {proc.pid} | {k.pid for k in kids}
        assert procs.family([], session=proc.pid, pidns=1) == []
    finally:
        for k in procs.family([proc.pid]):
            procs.kill(k.pid, 9, k.start_time)
        os.killpg(proc.pid, 9)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
