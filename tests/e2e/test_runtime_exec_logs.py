"""ExecSync and container logs through the real daemon."""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, grpc_code, needs_host, wait_for

pytestmark = [needs_host, pytest.mark.root]

CRI_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)) (stdout|stderr) ([FP]) (.*)$"
)


def parse_log(path: Path) -> list[tuple[str, str, str]]:
    """(stream, tag, text) per line; every line must match the CRI format."""
    out = []
    for line in path.read_text().splitlines():
        m = CRI_LINE.match(line)
        assert m, f"not a CRI log line: {line!r}"
        out.append((m.group(2), m.group(3), m.group(4)))
    return out


@pytest.fixture(scope="module")
def sleeper(e2e: E2E) -> tuple[str, str]:
    """(pod id, container id) of a long-running busybox shared by the exec tests."""
    pod_cfg = e2e.pod_config()
    pod_id, _, cid = e2e.pod_with(e2e.container_config("sleeper", ["sleep", "3600"]), pod_cfg)
    return pod_id, cid


def test_exec_sync_output_is_exact(e2e: E2E, sleeper: tuple[str, str]) -> None:
    cid = sleeper[1]
    r = e2e.exec(cid, ["echo", "-n", "hello"])
    assert (bytes(r.stdout), bytes(r.stderr), r.exit_code) == (b"hello", b"", 0)
    r = e2e.exec(cid, ["/bin/sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (bytes(r.stdout), bytes(r.stderr), r.exit_code) == (b"out\n", b"err\n", 7)
    # binary-safe and larger than a pipe buffer
    r = e2e.exec(cid, ["/bin/sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x"])
    assert bytes(r.stdout) == b"x" * 300000
    # a command that does not exist: a non-zero exit code or an error naming it
    try:
        r = e2e.exec(cid, ["/no/such/cmd"])
    except grpc.RpcError as exc:
        assert "/no/such/cmd" in (exc.details() or "")
    else:
        assert r.exit_code != 0


def test_exec_sync_output_keeps_carriage_returns(e2e: E2E, sleeper: tuple[str, str]) -> None:
    r = e2e.exec(sleeper[1], ["/bin/sh", "-c", "printf 'dos\\r\\nbar 10%%\\rbar 99%%\\n'"])
    assert bytes(r.stdout) == b"dos\r\nbar 10%\rbar 99%\n"


def _stat(pid: str) -> tuple[str, str, int]:
    """(comm, state, ppid) of a process."""
    text = Path(f"/proc/{pid}/stat").read_text()
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return comm, fields[0], int(fields[1])


def _exec_leftovers(e2e: E2E) -> list[str]:
    """``sleep 4321`` processes of this daemon on the host: live ones in our cgroups, or
    zombies (whose command line is gone) waiting for one of our processes to reap them."""
    ours = {pid for pid, _ in e2e.processes()}
    if e2e.daemon.proc is not None:
        ours.add(e2e.daemon.proc.pid)
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            comm, state, ppid = _stat(p.name)
            cmdline = (p / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if comm != "sleep":
            continue
        if cmdline == b"sleep\x004321\x00" and int(p.name) in ours:
            found.append(f"{p.name} running")
        elif state == "Z" and ppid in ours:
            found.append(f"{p.name} zombie of {ppid}")
    return found


def test_exec_sync_timeout_kills_the_command(e2e: E2E, sleeper: tuple[str, str]) -> None:
    cid = sleeper[1]
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as exc:
        e2e.exec(cid, ["sleep", "4321"], timeout=1)
    elapsed = time.monotonic() - t0
    assert grpc_code(exc) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 6, elapsed
    assert _exec_leftovers(e2e) == []
    ps = e2e.sh(cid, "ps -o pid,args")
    assert "4321" not in ps, ps
    # the container itself is unharmed
    assert e2e.status(cid).status.state == pb.CONTAINER_RUNNING


def test_exec_sync_timeout_leftover_check_can_fail(e2e: E2E) -> None:
    """Negative control for the check above: a ``sleep 4321`` left running is found."""
    pod_cfg = e2e.pod_config()
    pod_id, _, cid = e2e.pod_with(e2e.container_config("control", ["sleep", "3600"]), pod_cfg)
    e2e.sh(cid, "sleep 4321 </dev/null >/dev/null 2>&1 &")
    assert len(wait_for(lambda: _exec_leftovers(e2e), what="the background sleep")) == 1
    assert "4321" in e2e.sh(cid, "ps -o pid,args")
    e2e.remove_pod(pod_id)
    assert _exec_leftovers(e2e) == []


def test_exec_sync_on_exited_and_unknown_containers(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    pod_id, _, cid = e2e.pod_with(e2e.container_config("quick", ["true"]), pod_cfg)
    e2e.wait_exited(cid)
    with pytest.raises(grpc.RpcError) as exc:
        e2e.exec(cid, ["echo", "x"])
    assert grpc_code(exc) == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as exc:
        e2e.exec("0" * 64, ["echo", "x"])
    assert grpc_code(exc) == grpc.StatusCode.NOT_FOUND
    e2e.remove_pod(pod_id)


def test_log_format_partial_lines_and_stderr(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    script = (
        "echo first; echo to-stderr >&2; printf 'no-newline'; sleep 0.2; printf ' more'; sleep 0.2; "
        "echo; head -c 20000 /dev/zero | tr '\\0' L; echo; printf tail"
    )
    cfg = e2e.container_config("logger", ["/bin/sh", "-c", script])
    pod_id, _, cid = e2e.pod_with(cfg, pod_cfg)
    st = e2e.wait_exited(cid)
    path = e2e.log_path(pod_cfg, cfg)
    assert st.log_path == str(path) and path.is_file()
    lines = parse_log(path)
    assert lines[0] == ("stdout", "F", "first")
    assert ("stderr", "F", "to-stderr") in lines
    out = [(tag, text) for stream, tag, text in lines if stream == "stdout"]
    # a printf without newline is written as a partial line, completed later by an F line
    assert out[1] == ("P", "no-newline")
    # reassembling stdout gives back exactly what was printed
    text = "".join(t + ("\n" if tag == "F" else "") for tag, t in out)
    assert text == "first\nno-newline more\n" + "L" * 20000 + "\ntail"
    assert out[-1] == ("P", "tail")
    # the long line was split into several records, all partial but the one ending it
    long_records = [tag for tag, t in out if t and set(t) == {"L"}]
    assert len(long_records) >= 2 and set(long_records[:-1]) == {"P"}
    e2e.remove_pod(pod_id)


def test_reopen_container_log(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    cfg = e2e.container_config(
        "rotating", ["/bin/sh", "-c", "i=0; while :; do echo line$i; i=$((i+1)); sleep 0.05; done"]
    )
    pod_id, _, cid = e2e.pod_with(cfg, pod_cfg)
    path = e2e.log_path(pod_cfg, cfg)
    wait_for(lambda: path.exists() and "line3" in path.read_text(), what="first lines")
    rotated = path.with_name(path.name + ".1")
    path.rename(rotated)
    e2e.rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    assert path.exists()
    wait_for(lambda: len(parse_log(path)) >= 3, what="lines in the new log")
    old, new = parse_log(rotated), parse_log(path)
    # the numbering continues across the two files, nothing lost or duplicated in between
    last_old = int(old[-1][2].removeprefix("line"))
    first_new = int(new[0][2].removeprefix("line"))
    assert first_new == last_old + 1
    size = rotated.stat().st_size
    time.sleep(0.3)
    assert rotated.stat().st_size == size, "conmon still writes to the renamed file"

    e2e.stop_ctr(cid)
    with pytest.raises(grpc.RpcError) as exc:
        e2e.rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    assert grpc_code(exc) == grpc.StatusCode.FAILED_PRECONDITION
    e2e.remove_pod(pod_id)


def test_tty_container_logs(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    cfg = e2e.container_config("tty", ["/bin/sh", "-c", "tty; echo via-tty"], tty=True)
    pod_id, _, cid = e2e.pod_with(cfg, pod_cfg)
    e2e.wait_exited(cid)
    lines = parse_log(e2e.log_path(pod_cfg, cfg))
    texts = [t.rstrip("\r") for s, _, t in lines if s == "stdout"]
    assert "via-tty" in texts
    assert any(t.startswith("/dev/pts/") for t in texts), texts
    e2e.remove_pod(pod_id)
